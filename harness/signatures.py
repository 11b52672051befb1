"""The keyword parameters of the methods and backbones, read from their source without importing it.

Checking an experiment's ``method.*`` and ``backbone.*`` keys needs only the parameters' names
and defaults, but importing ``methods`` and ``harness.backbones`` imports torch, torchvision
and pytorchvideo (seconds, and 800 MB). This module reads the same signatures from the source
files with ``ast``, the way the registries compute them (``methods.params_of``,
``harness.backbones.params_of``): the registry's table of built-in names (``_BUILTIN``), for a
backbone where its builder's ``**kwargs`` go (``_FORWARDED``), then the parameters of each
function or class ``__init__``, following imports to the file that defines it.

A default written as a literal is read as its value; any other expression (``nn.BatchNorm3d``)
is an ``Unevaluated``, which the caller resolves by importing when it needs the value (a key
given for such a parameter). Whatever the reader cannot follow (an entry point's object, which
has to be loaded to be checked; a decorated function; a name bound under an ``if``) gives None:
import the registry and ask it. ``tests/harness/test_signatures.py`` holds the two to the same
answer for every built-in name.

Help texts come from the docstrings' ``Args:`` sections (the class's and its ``__init__``'s,
or the function's): ``name: text``, ``name (type): text`` or ``a, b: text``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import plugins

#: kind -> (registry module, entry-point group, parameters the registry does not list)
REGISTRIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "method": ("methods", "rho.methods", ("backbone", "feature_dim")),
    "backbone": ("harness.backbones", "rho.backbones", ()),
}
MAX_DEPTH = 8  # imports followed from one name (re-exports, star imports)


@dataclass(frozen=True)
class Unevaluated:
    """A default that is not a literal, as written in the source (``nn.BatchNorm3d``)."""

    source: str

    def __repr__(self) -> str:
        return self.source


@dataclass(frozen=True)
class Param:
    """One keyword parameter: its default (None: none, or required), annotation and help text."""

    name: str
    default: Any
    required: bool = False
    annotation: str = ""
    help: str = ""
    owner: str = ""  # module:qualname of the function or class that declares it


# --- finding and reading source files -------------------------------------------------------


def module_file(module: str) -> Path | None:
    """The ``.py`` file of ``module``, found without importing it (nor its packages); None if none."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        path = getattr(loaded, "__file__", None)
        return Path(path) if path and path.endswith(".py") else None
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finds, imports nothing
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    folders = [Path(folder) for folder in spec.submodule_search_locations or ()]
    for index, part in enumerate(rest):
        last = index == len(rest) - 1
        for folder in folders:
            if (folder / part / "__init__.py").is_file():
                if last:
                    return folder / part / "__init__.py"
                folders = [folder / part]
                break
            if last and (folder / f"{part}.py").is_file():
                return folder / f"{part}.py"
        else:
            return None
    return None


@functools.cache
def _parse(path: str, stamp: int) -> ast.Module | None:
    try:
        return ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


def _tree(module: str) -> ast.Module | None:
    path = module_file(module)
    if path is None:
        return None
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return None
    return _parse(str(path), stamp)


def _package(module: str) -> str:
    """The package that relative imports in ``module`` start from."""
    path = module_file(module)
    return module if path is not None and path.name == "__init__.py" else module.rpartition(".")[0]


# --- names and what they are bound to --------------------------------------------------------


@dataclass(frozen=True)
class _Def:
    module: str
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


@dataclass(frozen=True)
class _Module:
    name: str


@dataclass(frozen=True)
class _Value:
    module: str
    expr: ast.expr


_Binding = _Def | _Module | _Value


def _imported(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package(module)
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


_BOUND_INSIDE: dict[int, frozenset[str]] = {}  # id of a compound statement (of a cached tree) -> names


def _binds(statement: ast.stmt, name: str) -> bool:
    """Whether a compound statement (if, try, with, for, ...) binds ``name`` anywhere inside."""
    names = _BOUND_INSIDE.get(id(statement))
    if names is None:
        found = set()
        for node in ast.walk(statement):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                found.add(node.id)
        names = _BOUND_INSIDE[id(statement)] = frozenset(found)
    return name in names or "*" in names


def _binding(module: str, name: str, depth: int = 0) -> _Binding | None:
    """What the top-level ``name`` of ``module`` is bound to: the last binding, as at run time."""
    tree = _tree(module)
    if tree is None or depth > MAX_DEPTH:
        return None
    found: _Binding | None = None
    unknown = False
    stars: list[str] = []
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if statement.name == name:
                found, unknown = _Def(module, statement), False
        elif isinstance(statement, ast.ImportFrom):
            source = _imported(module, statement)
            for alias in statement.names:
                if alias.name == "*":
                    stars.append(source)
                elif (alias.asname or alias.name) == name:
                    found = _binding(source, alias.name, depth + 1) or _submodule(f"{source}.{alias.name}")
                    unknown = found is None  # an import not followed: not some earlier binding
        elif isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.asname == name:
                    found, unknown = _Module(alias.name), False
                elif alias.asname is None and alias.name.split(".")[0] == name:
                    found, unknown = _Module(name), False
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets) and statement.value is not None:
                found, unknown = _Value(module, statement.value), False
            elif _binds(statement, name):
                return None  # a, b = ...: not followed
        elif _binds(statement, name):
            return None  # bound under a condition, a loop, a try: not followed
    if unknown:
        return None
    if found is None:
        for source in reversed(stars):  # the last star import that defines it wins
            found = _binding(source, name, depth + 1)
            if found is not None:
                break
    return found


def _submodule(module: str) -> _Module | None:
    return _Module(module) if module_file(module) is not None else None


def _resolve(module: str, expr: ast.expr, depth: int = 0) -> _Binding | None:
    """What the expression ``expr`` in ``module`` names: a def, a module, or another expression."""
    if depth > MAX_DEPTH:
        return None
    if isinstance(expr, ast.Name):
        found = _binding(module, expr.id)
    elif isinstance(expr, ast.Attribute):
        owner = _resolve(module, expr.value, depth + 1)
        if not isinstance(owner, _Module):
            return None
        found = _binding(owner.name, expr.attr) or _submodule(f"{owner.name}.{expr.attr}")
    else:
        return _Value(module, expr)
    if isinstance(found, _Value) and isinstance(found.expr, (ast.Name, ast.Attribute)):
        return _resolve(found.module, found.expr, depth + 1)
    return found


def _definition(module: str, expr: ast.expr) -> _Def | None:
    found = _resolve(module, expr)
    return found if isinstance(found, _Def) else None


# --- parameters of a definition ---------------------------------------------------------------


def _literal(module: str, expr: ast.expr) -> Any:
    """The value of a default: a literal, a name bound to one, else an ``Unevaluated``."""
    try:
        return ast.literal_eval(expr)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(expr, ast.Name):
        bound = _binding(module, expr.id)
        if isinstance(bound, _Value):
            try:
                return ast.literal_eval(bound.expr)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
    return Unevaluated(ast.unparse(expr))


def _init(found: _Def, depth: int = 0) -> tuple[_Def, list[str]] | None:
    """The ``__init__`` a class's instances run (its own, or one base's), and the docstrings on the way."""
    node = found.node
    if not isinstance(node, ast.ClassDef):
        return found, [ast.get_docstring(node) or ""]
    docs = [ast.get_docstring(node) or ""]
    for statement in node.body:
        if isinstance(statement, ast.FunctionDef) and statement.name == "__init__":
            return _Def(found.module, statement), [*docs, ast.get_docstring(statement) or ""]
    if node.keywords or len(node.bases) != 1 or depth > MAX_DEPTH:
        return None  # a metaclass, several bases: the MRO is not followed
    base = _definition(found.module, node.bases[0])
    if base is None or not isinstance(base.node, ast.ClassDef):
        return None
    inherited = _init(base, depth + 1)
    return None if inherited is None else (inherited[0], [*docs, *inherited[1]])


def definition_params(found: _Def, skip: Iterable[str] = ()) -> dict[str, Param] | None:
    """The keyword parameters of a function, or of a class's ``__init__``, less ``skip``; None when
    the source does not say them for sure (a decorator may change a signature)."""
    init = _init(found)
    if init is None:
        return None
    function, docs = init
    node = function.node
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.decorator_list:
        return None
    owner = f"{found.module}:{found.node.name}"
    helps: dict[str, str] = {}
    for doc in docs:
        helps = {**docstring_args(doc), **helps}
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    named = list(zip(positional, defaults, strict=True))[len(args.posonlyargs) :]
    named += list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    skipped = {"self", *skip}
    out = {}
    for arg, default in named:
        if arg.arg in skipped:
            continue
        out[arg.arg] = Param(
            name=arg.arg,
            default=None if default is None else _literal(function.module, default),
            required=default is None,
            annotation=ast.unparse(arg.annotation) if arg.annotation is not None else "",
            help=helps.get(arg.arg, ""),
            owner=owner,
        )
    return out


ARG_LINE = re.compile(
    r"^(?P<names>\*{0,2}[A-Za-z_]\w*(?:\s*,\s*\*{0,2}[A-Za-z_]\w*)*)\s*(?:\([^)]*\))?\s*:\s*(?P<text>.*)$"
)


def docstring_args(doc: str) -> dict[str, str]:
    """Parameter name -> help text, from a Google-style ``Args:`` section (one line, whitespace folded)."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    inside, indent, current = False, None, []
    for line in lines:
        if re.match(r"^(Args|Arguments|Parameters|Keyword Args|Keyword Arguments):\s*$", line.strip()) and (
            len(line) - len(line.lstrip()) == 0
        ):
            inside, indent, current = True, None, []
            continue
        if not inside:
            continue
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            inside = False
            continue
        if indent is None:
            indent = depth
        match = ARG_LINE.match(line.strip()) if depth == indent else None
        if match:
            current = [name.strip().lstrip("*") for name in match.group("names").split(",")]
            for name in current:
                out[name] = match.group("text").strip()
        elif depth > indent and current:
            for name in current:
                out[name] = f"{out[name]} {line.strip()}".strip()
    return out


def object_help(obj: Any) -> dict[str, str]:
    """Parameter help of an imported function or class (its and its ``__init__``'s docstrings)."""
    helps = docstring_args(inspect.getdoc(obj) or "")
    init = getattr(obj, "__init__", None) if inspect.isclass(obj) else None
    if init is not None:
        helps = {**docstring_args(inspect.getdoc(init) or ""), **helps}
    return helps


# --- the registries ---------------------------------------------------------------------------


def _table(module: str, variable: str) -> dict[str, ast.expr] | None:
    """A top-level ``VARIABLE = {"name": expr, ...}`` of ``module``, its keys all strings."""
    bound = _binding(module, variable)
    if not isinstance(bound, _Value) or not isinstance(bound.expr, ast.Dict):
        return None
    out = {}
    for key, value in zip(bound.expr.keys, bound.expr.values, strict=True):
        if not isinstance(key, ast.Constant) or not isinstance(key.value, str):
            return None
        out[key.value] = value
    return out


def builtin_names(kind: str) -> list[str] | None:
    """The built-in names of registry ``kind`` (``method``, ``backbone``), from its source."""
    table = _table(REGISTRIES[kind][0], "_BUILTIN")
    return None if table is None else list(table)


def available(kind: str) -> list[str] | None:
    """All names of registry ``kind``, built-in and from entry points, as the registry lists them."""
    builtin = builtin_names(kind)
    return None if builtin is None else plugins.available(dict.fromkeys(builtin), REGISTRIES[kind][1])


def _builder(module: str, expr: ast.expr) -> _Def | None:
    """The function a ``_BUILTIN`` entry is: a name, or a factory call returning a nested def."""
    if not isinstance(expr, ast.Call):
        return _definition(module, expr)
    factory = _definition(module, expr.func)
    if factory is None or not isinstance(factory.node, ast.FunctionDef) or factory.node.decorator_list:
        return None
    nested = {s.name: s for s in factory.node.body if isinstance(s, ast.FunctionDef)}
    returns = [s for s in factory.node.body if isinstance(s, ast.Return)]
    if len(returns) != 1 or not isinstance(returns[0].value, ast.Name) or returns[0].value.id not in nested:
        return None
    return _Def(factory.module, nested[returns[0].value.id])


def _forwarding(module: str, expr: ast.expr) -> tuple[_Def, tuple[str, ...], dict[str, Any]] | None:
    """A ``_FORWARDED`` entry, ``Forwarding(constructor, fixed, defaults)``: its three fields."""
    found = _resolve(module, expr)
    if not isinstance(found, _Value) or not isinstance(found.expr, ast.Call):
        return None
    call, module = found.expr, found.module
    kind = _definition(module, call.func)
    if kind is None or kind.node.name != "Forwarding":
        return None
    fields = dict(zip(("constructor", "fixed", "defaults"), call.args, strict=False))
    fields.update({k.arg: k.value for k in call.keywords if k.arg})
    if "constructor" not in fields:
        return None
    constructor = _definition(module, fields["constructor"])
    try:
        fixed = tuple(ast.literal_eval(fields["fixed"])) if "fixed" in fields else ()
        defaults = dict(ast.literal_eval(fields["defaults"])) if "defaults" in fields else {}
    except (ValueError, TypeError, SyntaxError):
        return None
    return (constructor, fixed, defaults) if constructor is not None else None


def source_params(kind: str, name: str) -> dict[str, Param] | None:
    """The keyword parameters of the built-in ``name`` of registry ``kind`` read from source, as
    its ``params_of`` lists them; None for an entry point or what the reader does not follow."""
    module, _, skip = REGISTRIES[kind]
    table = _table(module, "_BUILTIN")
    if table is None or name not in table:
        return None
    if kind == "method":
        found = _definition(module, table[name])
        return None if found is None else definition_params(found, skip)
    builder = _builder(module, table[name])
    own = None if builder is None else definition_params(builder)
    forwarded_table = _table(module, "_FORWARDED")
    if own is None or forwarded_table is None:
        return None
    if name not in forwarded_table:
        return own
    forwarding = _forwarding(module, forwarded_table[name])
    if forwarding is None:
        return None
    constructor, fixed, defaults = forwarding
    forwarded = definition_params(constructor, {*fixed, *own})
    if forwarded is None:
        return None
    for key, value in defaults.items():
        if key in forwarded:
            forwarded[key] = Param(
                key, value, False, forwarded[key].annotation, forwarded[key].help, forwarded[key].owner
            )
    return {**own, **forwarded}


def imported_params(kind: str, name: str, registry: Any) -> dict[str, Param]:
    """The parameters of ``name`` from the imported ``registry`` (``params_of`` and ``get``), as Params."""
    obj = registry.get(name)
    helps = object_help(obj)
    owner = f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', name)}"
    return {
        key: Param(key, default, False, "", helps.get(key, ""), owner)
        for key, default in registry.params_of(name).items()
    }


def params(kind: str, name: str, registry: Callable[[], Any]) -> dict[str, Param]:
    """The parameters of ``name``: from source where it says them, else from ``registry()`` imported."""
    found = source_params(kind, name)
    return found if found is not None else imported_params(kind, name, registry())
