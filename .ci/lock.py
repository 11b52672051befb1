"""The lock of the tested environment: ``requirements.lock``.

    python .ci/lock.py write     # make lock: resolve pyproject.toml in a clean venv, write the lock
    python .ci/lock.py check     # exit 1 when the lock and pyproject.toml disagree
    python .ci/lock.py usable    # exit 0 when this interpreter and machine are the lock's
    python .ci/lock.py diff      # the installed packages whose versions differ from the lock's

The lock holds every package that ``pip install '.[dev]'`` puts into an empty venv, at exact
versions with the sha256 of the file pip chose (``pip install --dry-run --report`` in a clean
venv: no extra tool, and it resolves against the same indexes a ``make`` install uses). Its
header records what it was resolved for (CPython version, platform) and a digest of
pyproject.toml's requirements, so that ``check`` finds a pyproject.toml edited after the lock.
``pip install rho-harness`` for library users keeps pyproject.toml's ranges; exact pins live here.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PROJECT = "rho-harness"
EXTRAS = "dev"


def requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The requirements the lock must satisfy: the dependencies and every optional extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return list(project.get("dependencies", [])) + [r for name in sorted(extras) for r in extras[name]]


def digest(reqs: list[str]) -> str:
    """A short digest of the requirement strings (order-insensitive)."""
    return hashlib.sha256("\n".join(sorted(reqs)).encode()).hexdigest()[:16]


def target() -> str:
    """What a lock is valid for: the interpreter's implementation, minor version and platform."""
    return f"{platform.python_implementation()}-{sys.version_info[0]}.{sys.version_info[1]}-{sysconfig.get_platform()}"


def parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """The lock's header fields (``# key: value``) and its pins (normalised name -> version)."""
    header: dict[str, str] = {}
    pins: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# ") and ": " in line:
            key, _, value = line[2:].partition(": ")
            header.setdefault(key.strip(), value.strip())
        elif "==" in line and not line.startswith((" ", "#")):
            name, _, version = line.split()[0].partition("==")
            pins[normalise(name)] = version
    return header, pins


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def resolve(python: str = sys.executable) -> list[dict]:
    """What ``pip install '.[dev]'`` installs into an empty venv (pip's installation report)."""
    with tempfile.TemporaryDirectory(prefix="rho-lock-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        report = Path(tmp) / "report.json"
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--dry-run",
             "--ignore-installed", "--report", str(report), f".[{EXTRAS}]"],
            cwd=ROOT, check=True,
        )  # fmt: skip
        return json.loads(report.read_text())["install"]


def render(installs: list[dict]) -> str:
    lines = [
        "# The tested environment of rho-harness: every package `make test` passes with, exact versions",
        "# and the sha256 of each file. Written by `make lock` (.ci/lock.py) from pyproject.toml in a clean",
        "# venv; `make install` (and so `make demo`, `make test`, .ci/run) installs from it with",
        "# `pip install --require-hashes`. Do not edit by hand.",
        f"# target: {target()}",
        f"# requirements-digest: {digest(requirements())}",
        "",
    ]
    for item in sorted(installs, key=lambda i: normalise(i["metadata"]["name"])):
        meta = item["metadata"]
        if normalise(meta["name"]) == PROJECT:
            continue
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise SystemExit(f"lock: pip reported no sha256 for {meta['name']} {meta['version']}")
        lines.append(f"{normalise(meta['name'])}=={meta['version']} \\")
        lines.append(f"    --hash=sha256:{hashes['sha256']}")
    return "\n".join(lines) + "\n"


def problems(lock_text: str, reqs: list[str]) -> list[str]:
    """How the lock and pyproject.toml's requirements disagree; empty when they agree."""
    from packaging.requirements import Requirement

    header, pins = parse(lock_text)
    found = []
    if header.get("requirements-digest") != digest(reqs):
        found.append(
            "pyproject.toml's requirements changed since the lock was written (its requirements-digest "
            f"is {header.get('requirements-digest')}, pyproject.toml's {digest(reqs)})"
        )
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": EXTRAS}):
            continue
        version = pins.get(normalise(req.name))
        if version is None:
            found.append(f"{req.name} is required by pyproject.toml ({text}) but not in the lock")
        elif not req.specifier.contains(version, prereleases=True):
            found.append(f"the lock pins {req.name}=={version}, outside pyproject.toml's {text}")
    return found


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "write":
        LOCK.write_text(render(resolve()))
        print(f"wrote {LOCK.relative_to(ROOT)} for {target()}")
        return 0
    if command == "usable":
        header, _ = parse(LOCK.read_text())
        return 0 if header.get("target") == target() else 1
    if command == "diff":
        from importlib import metadata

        _, pins = parse(LOCK.read_text())
        installed = {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
        changed = [
            f"{name}: lock {pins.get(name, '-')}, here {installed.get(name, '-')}"
            for name in sorted(set(pins) | set(installed) - {PROJECT, "pip"})
            if pins.get(name) != installed.get(name)
        ]
        print("versions that differ from requirements.lock:" if changed else "every version is the lock's")
        for line in changed:
            print(f"  {line}")
        return 0
    if command == "check":
        found = problems(LOCK.read_text(), requirements())
        for line in found:
            print(f"requirements.lock: {line}; run `make lock`", file=sys.stderr)
        return 1 if found else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
