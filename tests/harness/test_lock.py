"""The tested environment and the package a user installs.

The lock (requirements.lock) agrees with pyproject.toml, and the suite runs on the lock's versions;
the wheel (``pip install .``, not editable) carries what ``rho`` needs to run from an empty folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lock_module():
    spec = importlib.util.spec_from_file_location("rho_lock", ROOT / ".ci" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _lock_module()


def test_the_lock_agrees_with_pyproject():
    problems = lock.problems(lock.LOCK.read_text(), lock.requirements())
    assert problems == [], "\n".join(problems) + "\nrun `make lock`"


def test_a_pyproject_edited_after_the_lock_is_found(tmp_path):
    text = lock.LOCK.read_text()
    reqs = lock.requirements()
    _, pins = lock.parse(text)
    assert pins["torch"] and pins["av"] and "rho-harness" not in pins

    added = [*reqs, "polars>=1"]  # a new dependency the lock has never resolved
    found = lock.problems(text, added)
    assert any("requirements changed" in p for p in found)
    assert any(p.startswith("polars is required") for p in found)

    narrowed = [r for r in reqs if not r.startswith("av")] + [f"av>{pins['av']}"]  # excludes the pin
    assert any(f"the lock pins av=={pins['av']}" in p for p in lock.problems(text, narrowed))

    # The header's digest alone catches a change that the pins still satisfy.
    widened = [r if not r.startswith("pandas") else "pandas>=2.0" for r in reqs]
    assert widened != reqs
    assert [p for p in lock.problems(text, widened) if "requirements changed" in p]


def test_every_lock_line_carries_a_sha256():
    lines = [line for line in lock.LOCK.read_text().splitlines() if line and not line.startswith("#")]
    pins = [line for line in lines if "==" in line]
    hashes = [line for line in lines if line.strip().startswith("--hash=sha256:")]
    assert len(pins) == len(hashes) > 100
    assert all(len(h.strip().removeprefix("--hash=sha256:")) == 64 for h in hashes)


def test_the_suite_runs_on_the_locked_versions():
    """make installs the lock: every package of this venv is at the lock's version (when the lock was
    resolved for this interpreter and platform; elsewhere make installs the ranges and says so)."""
    header, pins = lock.parse(lock.LOCK.read_text())
    if header["target"] != lock.target():
        pytest.skip(f"the lock is for {header['target']}, this is {lock.target()}")
    from importlib import metadata

    installed = {lock.normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n) != v}
    assert differ == {}, f"(lock, installed) differ: {differ}; `make install` installs the lock"


@pytest.mark.slow
def test_the_wheel_runs_from_an_empty_folder(tmp_path):
    """``pip install .`` (a built wheel, not the checkout) into a clean venv: ``rho --version``,
    ``rho init``, ``rho bench --list`` and a shipped spec and benchmark resolve from an empty folder."""
    # Built from a copy of the files git would commit: setuptools' build/ folder in a checkout can
    # hold files of older builds that a wheel would pick up.
    source, dist = tmp_path / "source", tmp_path / "dist"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(dist), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    wheel = next(dist.glob("rho_harness-*.whl"))
    names = set(subprocess.run(
        [sys.executable, "-m", "zipfile", "-l", str(wheel)], check=True, capture_output=True, text=True
    ).stdout.split())  # fmt: skip
    for shipped in ("harness/_shipped/studies/demo.yaml", "harness/_shipped/benchmarks/synth_linear.yaml",
                    "harness/_shipped/benchmarks/speed/decode.py", "harness/_shipped/studies/slurm/study_array.sbatch"):  # fmt: skip
        assert shipped in names, f"{shipped} missing from {wheel.name}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    # A clean venv whose only view of the dependencies is this venv's site-packages directory (a
    # .pth line adds the folder without running its .pth files, so the checkout's editable finder
    # stays out); the project itself comes from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
         "--no-deps", str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def rho(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / "rho"), *args],
            cwd=empty,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import harness; print(harness.__file__)"],
        cwd=empty, env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert str(venv) in where and str(ROOT) not in where

    from harness import __version__

    version = rho("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"rho-harness {__version__}"

    listing = rho("bench", "--list")
    assert listing.returncode == 0 and "decode" in listing.stdout, listing.stderr

    # A shipped spec from an empty folder: its experiment and benchmarks resolve to the shipped copies.
    shown = rho("config", "show", "studies/experiments/demo.yaml", "--no-check-files")
    assert shown.returncode == 0, shown.stderr
    assert "benchmarks/synth_linear.yaml" in shown.stdout

    # The shipped benchmark is found; the data it names is not (nothing was synthesised here).
    missing = rho("study", "run", "studies/cpu/smoke.yaml")
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "data/synth/train.csv" in missing.stderr and "Traceback" not in missing.stderr

    copied = rho("init", "mine")
    assert copied.returncode == 0, copied.stderr
    assert (empty / "mine" / "studies" / "cpu" / "clips.yaml").is_file()
    assert (empty / "mine" / "benchmarks" / "speed" / "decode.py").is_file()
    assert not list((empty / "mine").rglob("RESULTS*"))
