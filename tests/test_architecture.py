"""The import architecture of harness/, methods/ and benchmarks/speed/, read from the source with ``ast``.

Checks: no import cycle between modules (imports run at import time) nor between packages
(counting function-local lazy imports too); no private name imported across packages; the
design's layering rules (methods uses only small shared pieces of harness, nothing but
``harness/__main__.py`` imports ``harness.cli``, ...); and every import allowed by ``MAY_IMPORT``,
the package map that docs/architecture.md shows, which must agree with it.

A *package* here is a subpackage of harness (``harness.train``), a top-level module of harness
(``harness.config``), ``methods``, or ``benchmarks.speed`` (the speed-benchmark scripts).
"""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("harness", "methods", "benchmarks/speed")
OURS = ("harness", "methods", "benchmarks")

#: package -> the packages it may import (directly, lazily or not). docs/architecture.md shows the same map.
MAY_IMPORT: dict[str, set[str]] = {
    "harness": set(),
    "harness.__main__": {"harness.cli"},
    "harness.errors": set(),
    "harness.redact": set(),
    "harness.resources": set(),
    "harness.atomic": set(),
    "harness.compat": set(),
    "harness.progress": set(),
    "harness.distributed": set(),
    "harness.plugins": set(),
    "harness.vit": set(),
    "harness.signatures": {"harness.plugins"},
    "harness.dashboard": set(),
    "harness.schema": {"harness.errors"},
    "harness.preflight": {"harness.errors"},
    "harness.checkpoint": {"harness.atomic", "harness.errors"},
    "harness.retry": {"harness.errors", "harness.redact", "harness.schema"},
    "harness.tracking": {"harness.redact", "harness.retry"},
    "methods": {"harness.distributed", "harness.errors", "harness.plugins", "harness.schema", "harness.vit"},
    "harness.backbones": {
        "harness.compat",
        "harness.errors",
        "harness.plugins",
        "harness.schema",
        "harness.vit",
    },
    "harness.config": {
        "harness.backbones",
        "harness.errors",
        "harness.plugins",
        "harness.resources",
        "harness.schema",
        "harness.signatures",
        "methods",
    },
    "harness.optim": {"harness.config"},
    "harness.runtime": {"harness.config"},
    "harness.data": {"harness.atomic", "harness.config", "harness.errors", "harness.plugins"},
    "harness.eval": {
        "harness.atomic",
        "harness.config",
        "harness.data",
        "harness.errors",
        "harness.optim",
        "harness.plugins",
        "harness.progress",
        "harness.resources",
        "harness.runtime",
        "harness.schema",
        "harness.vit",
        "methods",
    },
    "harness.report": {"harness.errors", "harness.redact", "harness.tracking"},
    "harness.train": {
        "harness.atomic",
        "harness.backbones",
        "harness.checkpoint",
        "harness.config",
        "harness.data",
        "harness.distributed",
        "harness.errors",
        "harness.eval",
        "harness.optim",
        "harness.preflight",
        "harness.progress",
        "harness.redact",
        "harness.report",
        "harness.runtime",
        "harness.tracking",
        "methods",
    },
    "harness.study": {
        "harness.config",
        "harness.errors",
        "harness.preflight",
        "harness.redact",
        "harness.report",
        "harness.resources",
        "harness.retry",
        "harness.runtime",
        "harness.schema",
        "harness.tracking",
        "harness.train",
    },
    "harness.speed": {"harness.data", "harness.errors", "harness.resources"},
    "harness.slowfast_import": {"harness.checkpoint", "harness.config", "harness.train"},
    "harness.demo": {
        "harness.data",
        "harness.report",
        "harness.resources",
        "harness.study",
        "harness.tracking",
    },
    "harness.cli": {
        "harness",
        "harness.config",
        "harness.dashboard",
        "harness.data",
        "harness.demo",
        "harness.errors",
        "harness.eval",
        "harness.progress",
        "harness.redact",
        "harness.report",
        "harness.resources",
        "harness.runtime",
        "harness.schema",
        "harness.slowfast_import",
        "harness.speed",
        "harness.study",
        "harness.tracking",
        "harness.train",
    },
    "benchmarks.speed": {
        "harness.backbones",
        "harness.compat",
        "harness.config",
        "harness.data",
        "harness.eval",
        "harness.optim",
        "harness.progress",
        "harness.runtime",
        "harness.speed",
        "harness.study",
        "harness.tracking",
        "harness.train",
        "methods",
    },
}

#: The design's one-direction rules, checked against the imports themselves: (importer, imported, why).
FORBIDDEN: list[tuple[str, str, str]] = [
    ("harness.report", "harness.study", "report reads MLflow runs; it does not drive studies"),
    ("harness.report", "harness.train", "report reads MLflow runs; it does not train"),
    ("harness.report", "harness.eval", "report reads MLflow runs; it does not evaluate"),
    *(
        ("harness.data", upper, "data is below training, evaluation, studies and reports")
        for upper in ("harness.train", "harness.eval", "harness.study", "harness.report")
    ),
    ("harness.eval", "harness.train", "train drives eval, not the other way"),
    ("harness.eval", "harness.study", "study drives eval, not the other way"),
]

#: What ``methods`` may take from harness: small shared pieces that import nothing heavy.
METHODS_MAY_USE = {
    "harness.distributed",
    "harness.errors",
    "harness.plugins",
    "harness.schema",
    "harness.vit",
}


@dataclass(frozen=True)
class Import:
    """One imported module (or name from it) of one of our source files."""

    path: Path
    line: int
    importer: str  # the importing module, dotted
    module: str  # the imported module, dotted (a submodule when ``from pkg import submodule``)
    name: str | None  # the name imported from ``module``; None for ``import module`` and submodules
    lazy: bool  # inside a function: runs when called, not when the importer is imported
    runtime: bool  # runs at all (False under ``if TYPE_CHECKING:``)

    def __str__(self) -> str:
        what = self.module if self.name is None else f"{self.module}.{self.name}"
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.importer} imports {what}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def source_files() -> tuple[Path, ...]:
    return tuple(sorted(path for folder in SOURCE_DIRS for path in (ROOT / folder).rglob("*.py")))


@functools.cache
def modules() -> frozenset[str]:
    return frozenset(module_name(path) for path in source_files())


def package_of(module: str) -> str:
    """The package a module belongs to: ``harness.train.loop`` -> ``harness.train``."""
    parts = module.split(".")
    if parts[0] == "methods":
        return "methods"
    if parts[0] == "benchmarks":
        return "benchmarks.speed"
    return ".".join(parts[:2])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_of(path: Path) -> list[Import]:
    importer = module_name(path)
    package_parts = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    found: list[Import] = []

    def add(node: ast.stmt, module: str, name: str | None, lazy: bool, runtime: bool) -> None:
        if module.split(".")[0] not in OURS:
            return
        if name is not None and f"{module}.{name}" in modules():
            module, name = f"{module}.{name}", None
        found.append(Import(path, node.lineno, importer, module, name, lazy, runtime))

    def visit(node: ast.AST, lazy: bool, runtime: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(child, alias.name, None, lazy, runtime)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package_parts[: len(package_parts) - (child.level - 1)]
                    module = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    module = child.module or ""
                for alias in child.names:
                    add(child, module, alias.name, lazy, runtime)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), lazy, False)
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), lazy, runtime)
            else:
                inner = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                visit(child, lazy or inner, runtime)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False, True)
    return found


@functools.cache
def all_imports() -> tuple[Import, ...]:
    return tuple(found for path in source_files() for found in _imports_of(path))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def describe_cycles(imports: list[Import], key: Callable[[Import], tuple[str, str]]) -> list[str]:
    """Each cycle of the graph ``key(import) -> (from, to)``: its members, and one import line per edge in it."""
    first: dict[tuple[str, str], Import] = {}
    for found in imports:
        edge = key(found)
        if edge[0] != edge[1]:
            first.setdefault(edge, found)
    edges: dict[str, set[str]] = defaultdict(set)
    for source, target in first:
        edges[source].add(target)
    report = []
    for component in cycles(edges):
        members = set(component)
        lines = [
            f"  {source} -> {target}: {found}"
            for (source, target), found in sorted(first.items())
            if source in members and target in members
        ]
        report.append(" <-> ".join(component) + "\n" + "\n".join(lines))
    return report


def test_the_checker_sees_the_code():
    """Guards the other checks against passing vacuously: the files and their imports are found."""
    assert "harness.train.loop" in modules() and "methods.moco" in modules()
    assert any(found.lazy for found in all_imports())
    assert any(
        found.importer == "methods.moco" and found.module == "harness.distributed" for found in all_imports()
    )
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_of_ours_names_an_existing_module():
    missing = [str(found) for found in all_imports() if found.module not in modules()]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_no_import_cycle_between_modules():
    """Imports that run when a module is imported (module level, not under TYPE_CHECKING)."""
    eager = [found for found in all_imports() if found.runtime and not found.lazy]
    found_cycles = describe_cycles(eager, lambda found: (found.importer, found.module))
    assert not found_cycles, "import cycles between modules:\n" + "\n".join(found_cycles)


def test_no_import_cycle_between_packages():
    """All imports, lazy ones inside functions included: a lazy import hides a cycle, it does not end it."""
    found_cycles = describe_cycles(
        list(all_imports()), lambda found: (package_of(found.importer), package_of(found.module))
    )
    assert not found_cycles, "import cycles between packages:\n" + "\n".join(found_cycles)


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def test_no_private_name_imported_across_packages():
    """``from harness.x import _y`` only inside harness.x's package; a private module only inside its own package."""
    offenders = []
    for found in all_imports():
        parts = found.module.split(".")
        private_modules = [".".join(parts[:i]) for i, part in enumerate(parts) if _private(part)]
        for owner in private_modules:  # the package that holds the private module
            if found.importer != owner and not found.importer.startswith(owner + "."):
                offenders.append(f"{found}  (private module of {owner})")
                break
        else:
            if found.name and _private(found.name) and package_of(found.importer) != package_of(found.module):
                offenders.append(f"{found}  (private name of {package_of(found.module)})")
    assert not offenders, "private names imported across packages:\n" + "\n".join(offenders)


def test_the_design_layering_rules():
    offenders = []
    for found in all_imports():
        source, target = package_of(found.importer), package_of(found.module)
        if source == target:
            continue
        if target == "harness.cli" and found.importer != "harness.__main__":
            offenders.append(f"{found}  (nothing but harness/__main__.py imports harness.cli)")
        if source == "methods" and target.startswith("harness") and target not in METHODS_MAY_USE:
            offenders.append(f"{found}  (methods uses only {sorted(METHODS_MAY_USE)} of harness)")
        if source == "harness.schema" and target != "harness.errors":
            offenders.append(f"{found}  (harness.schema imports nothing of ours but harness.errors)")
        if source == "harness.errors":
            offenders.append(f"{found}  (harness.errors imports nothing of ours)")
        for importer, imported, why in FORBIDDEN:
            if (source, target) == (importer, imported):
                offenders.append(f"{found}  ({why})")
    assert not offenders, "imports against the design's layering:\n" + "\n".join(offenders)


def test_the_package_map_keeps_the_design_rules():
    """The rules hold for the map too, so that widening ``MAY_IMPORT`` cannot get around them."""
    broken = [
        f"{source} -> harness.cli"
        for source, allowed in MAY_IMPORT.items()
        if "harness.cli" in allowed and source != "harness.__main__"
    ]
    broken += [f"{source} -> {target}" for source, target, _ in FORBIDDEN if target in MAY_IMPORT[source]]
    broken += [
        f"methods -> {target}" for target in MAY_IMPORT["methods"] - METHODS_MAY_USE if target != "methods"
    ]
    broken += [f"harness.schema -> {target}" for target in MAY_IMPORT["harness.schema"] - {"harness.errors"}]
    broken += [f"harness.errors -> {target}" for target in MAY_IMPORT["harness.errors"]]
    assert not broken, "MAY_IMPORT allows what the design forbids:\n" + "\n".join(broken)
    assert not cycles(MAY_IMPORT), f"MAY_IMPORT allows cycles: {cycles(MAY_IMPORT)}"


def test_every_package_is_on_the_map():
    packages = {package_of(module) for module in modules()}
    assert packages - MAY_IMPORT.keys() == set(), (
        "packages missing from MAY_IMPORT (and docs/architecture.md's package map): "
        f"{sorted(packages - MAY_IMPORT.keys())}"
    )
    stale = {source for source in MAY_IMPORT if source not in packages}
    stale |= {target for allowed in MAY_IMPORT.values() for target in allowed if target not in packages}
    assert not stale, f"MAY_IMPORT names packages that do not exist: {sorted(stale)}"


def test_imports_follow_the_package_map():
    offenders = []
    for found in all_imports():
        source, target = package_of(found.importer), package_of(found.module)
        if source != target and target not in MAY_IMPORT.get(source, set()):
            offenders.append(
                f"{found}  ({source} may import {sorted(MAY_IMPORT.get(source, set())) or 'nothing of ours'})"
            )
    assert not offenders, (
        "imports outside the package map (MAY_IMPORT here, docs/architecture.md's package map):\n"
        + "\n".join(offenders)
    )


def readme_map() -> dict[str, set[str]]:
    """docs/architecture.md's package map: table rows ``| `harness.x` | owns | `config`, `methods` |``."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Package map", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"`[\w./]+`", cells[0]):
            continue
        names = re.findall(r"`([\w.]+)`", cells[2])
        rows[cells[0].strip("`")] = {
            name if name in ("methods", "harness") else f"harness.{name}" for name in names
        }
    return rows


def test_readme_shows_the_package_map():
    shown = readme_map()
    differences = [
        f"{package}: docs/architecture.md says {sorted(shown.get(package, ())) or 'nothing'}, MAY_IMPORT {sorted(allowed) or 'nothing'}"
        for package, allowed in sorted(MAY_IMPORT.items())
        if package not in shown or shown[package] != allowed
    ]
    differences += [
        f"{package}: in docs/architecture.md, not in MAY_IMPORT"
        for package in sorted(shown.keys() - MAY_IMPORT.keys())
    ]
    assert not differences, "docs/architecture.md's package map and MAY_IMPORT differ:\n" + "\n".join(
        differences
    )
