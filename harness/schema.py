"""The one schema mechanism: typed dataclass sections built from YAML mappings, every key and value checked.

Experiment configs, evaluation specs and study specs declare their keys as dataclass fields
(``field_spec``: default, help text, rules) and build them with ``build_section``. Every refusal
is one ``ConfigError`` naming the key, the value and what is allowed; unknown keys and bad
choices get the same "did you mean" suggestion (``did_you_mean``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.errors import RhoError

T = TypeVar("T")

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(RhoError, ValueError):
    """A configuration value or key that is not allowed; the message says which and why.

    ``source`` names where the value was written (a file, ``command line``); ``written`` is the
    text as written there when it is not the file's (a command-line override ``data.clip=3``).
    """

    def __init__(
        self, key: str, value: Any, allowed: str, source: str | None = None, written: str | None = None
    ):
        self.key, self.value, self.allowed, self.source, self.written = key, value, allowed, source, written
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if self.written is None:
            return f"{where}{self.key} = {self.value!r} is not allowed: {self.allowed}"
        if self.written.partition("=")[0].strip() == self.key:  # data.clip=3: the key and value as typed
            return f"{where}{self.written} is not allowed: {self.allowed}"
        return f"{where}{self.written}: {self.key} = {self.value!r} is not allowed: {self.allowed}"

    def located(self, source: str, written: str | None = None) -> ConfigError:
        """The same refusal (same class), reported as coming from ``source`` (a file name, or
        ``command line`` with the override as ``written``)."""
        return type(self)(self.key, self.value, self.allowed, source, written)

    def with_hint(self, hint: str) -> ConfigError:
        """The same refusal with ``hint`` (what to do about it) added to what is allowed."""
        return type(self)(self.key, self.value, f"{self.allowed}; {hint}", self.source, self.written)


class MissingFile(ConfigError):
    """A path key naming no file (raised only when files are checked; ``rho config show`` warns instead)."""


def did_you_mean(value: Any, choices: Iterable[Any], quoted: bool = False) -> str:
    """``"did you mean X? "`` for the choice closest to ``value``, or ``""`` when none is close.

    The one suggestion of every refusal: unknown keys (``unknown_key_hint``) and bad choices
    (``choice_hint``); ``quoted`` writes the choice as a value (``'ucf101'``) rather than a key.
    """
    text = str(value)
    close = difflib.get_close_matches(text, [str(choice) for choice in choices], n=3, cutoff=0.5)
    section, _, name = text.rpartition(".")
    # keys of one section share their section's name: their own names must be close too
    close = [
        c for c in close
        if c.rpartition(".")[0] != section or difflib.SequenceMatcher(None, c.rpartition(".")[2], name).ratio() >= 0.5
    ]  # fmt: skip
    if not close:
        return ""
    return f"did you mean {close[0]!r}? " if quoted else f"did you mean {close[0]}? "


SHORT_LIST = 8  # at most this many known keys are listed in a refusal; more: the command that lists them


def unknown_key_hint(key: str, known: Sequence[str], listing: str | None = None) -> str:
    """What a refusal of the unknown ``key`` says is allowed: a suggestion and the known keys.

    With ``listing`` (the command that lists them: ``rho config keys data``), more than
    ``SHORT_LIST`` known keys are not written out: the refusal names the command instead.
    """
    known = list(dict.fromkeys(known))
    suggestion = did_you_mean(key, known)
    if listing and len(known) > SHORT_LIST:
        if suggestion:
            return f"unknown key; {suggestion}(`{listing}` lists the rest)"
        return f"unknown key; `{listing}` lists the known ones"
    return f"unknown key; {suggestion}known keys: {', '.join(known)}"


def choice_hint(value: Any, choices: Sequence[Any]) -> str:
    """What a refusal of ``value`` outside ``choices`` says is allowed: a suggestion and the choices."""
    return f"{did_you_mean(value, choices, quoted=True)}one of {', '.join(str(c) for c in choices)}"


def expand_env(key: str, text: str) -> tuple[str, list[str]]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in ``text``; returns the result and the names referenced.

    Paths in configs and benchmarks use it so that one file serves every machine
    (``train: ${RHO_DATA}/kinetics400/train.csv``).

    Raises:
        ConfigError: for ``${VAR}`` with VAR unset or empty and no default.
    """
    names: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        names.append(name)
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise ConfigError(
            key,
            text,
            f"${{{name}}} to be set: export {name}=/path/to/the/folder, or give a default: ${{{name}:-folder}}",
        )

    return ENV_REFERENCE.sub(substitute, text), names


class RepeatedKey(yaml.YAMLError):
    """A mapping that gives one key twice (``UniqueKeyLoader``): its dotted name, value and lines."""

    def __init__(self, key: str, value: Any, line: int, first_line: int, section: bool):
        self.key, self.value, self.line, self.first_line, self.section = key, value, line, first_line, section
        super().__init__(f"line {line} repeats {key} of line {first_line}")


MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice, at any depth.

    Plain YAML keeps the last value silently (and a repeated section replaces the whole first
    one, whose keys then fall back to their defaults). Keys that a merge (``<<: *base``) brings
    in may be overridden: only the keys written in one mapping are compared.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._refuse_repeated_keys(node, "", set())
        return super().construct_document(node)

    def _refuse_repeated_keys(self, node: yaml.Node, where: str, checked: set[int]) -> None:
        """Walk the composed ``node`` (``where``: its dotted name); each node once, so that
        aliases (and a node that holds itself) cost no more than the text that defines them."""
        if id(node) in checked:
            return
        checked.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._refuse_repeated_keys(item, f"{where}[{index}]", checked)
            return
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                # merged keys may be overridden (the merged mappings are checked themselves);
                # a complex key is refused by the constructor as unhashable
                self._refuse_repeated_keys(value_node, where, checked)
                continue
            key = self.construct_object(key_node, deep=True)
            dotted = f"{where}.{key}" if where else str(key)
            try:
                first = seen.get(key)
            except TypeError:
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                try:
                    value = self.construct_object(value_node, deep=True)
                except yaml.YAMLError:
                    value = None
                raise RepeatedKey(dotted, value, line, first, isinstance(value_node, yaml.MappingNode))
            seen[key] = line
            self._refuse_repeated_keys(value_node, dotted, checked)


def load_yaml(text: str) -> Any:
    """``text`` read with the safe loader, a key repeated in a mapping refused (``UniqueKeyLoader``)."""
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, once per class: it evaluates every annotation's string each
    call (slow: a 1,000-point study builds every section of every point's experiment). Read only."""
    return typing.get_type_hints(cls)


def read_mapping(path: str | Path, key: str, file: str, content: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file (safe loader; an empty file is an empty mapping).

    Args:
        path: the file.
        key: what errors call the file (``config``, ``benchmark``).
        file: what the path must name (``YAML file``).
        content: what the mapping holds (``sections data, backbone, ...``).

    Raises:
        ConfigError: for a missing file, invalid YAML, a key given twice in one mapping (at any
            depth; named with the file and its line) or a document that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, str(path), f"a path to an existing {file}")
    try:
        raw = load_yaml(path.read_text()) or {}
    except RepeatedKey as exc:
        replaced = "; a repeated section replaces the whole first one" if exc.section else ""
        raise ConfigError(
            exc.key,
            exc.value,
            f"each key once: line {exc.line} sets {exc.key} again, after line {exc.first_line} "
            f"(YAML would keep the last value without a word{replaced}); keep one of the two",
            f"{path}:{exc.line}",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(key, str(path), f"valid YAML; the parser says: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(key, str(path), f"a YAML mapping with {content}")
    return raw


def field_spec(
    default: Any = dataclasses.MISSING, *, factory: Any = None, help: str = "", **rules: Any
) -> Any:
    """A dataclass field with a help text and validation rules; no default (and no factory): required.

    Rules: ``min``, ``max``, ``gt`` (numbers, or every item of a list), ``choices``, ``length``,
    ``pair`` / ``pair01`` ([low, high]), ``file`` / ``files`` (paths: ``${VAR}`` expands and,
    when files are checked, they must exist; ``resolve``, a function from a path to the file it
    names, serves ``files``), ``env`` (``${VAR}`` expands), ``registry``.
    """
    metadata = {"help": help, **rules}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def keyword_params(function: Callable[..., Any], skip: Iterable[str] = ()) -> dict[str, Any]:
    """The parameters ``function`` takes by keyword (besides ``skip``) and their defaults (None: required)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    skipped = {"self", *skip}
    return {
        param.name: None if param.default is inspect.Parameter.empty else param.default
        for param in inspect.signature(function).parameters.values()
        if param.name not in skipped and param.kind in kinds
    }


def build_section(
    prefix: str,
    cls: type[T],
    values: Mapping[str, Any] | None,
    check_files: bool = False,
    *,
    source: str | None = None,
    suggest: Sequence[str] = (),
    listing: str | None = None,
) -> T:
    """``cls`` (a dataclass of ``field_spec`` fields) from ``values``, every key and value checked.

    Keys are reported as ``prefix.key`` (just ``key`` when ``prefix`` is empty). An unknown key
    is refused with a suggestion among the section's keys and ``suggest`` (more dotted keys
    worth naming; ``listing``, the command that lists a section's keys, with ``{section}`` for
    its dotted name, is named instead of many keys); a field without a default is required; a dataclass-typed field is a nested
    section, built the same way on top of its field's default (so a factory's own defaults
    stay under a partial mapping). With ``check_files`` the paths of ``file`` fields must
    exist, defaults included.

    Raises:
        ConfigError: the first bad key or value, naming ``source`` when given.
    """
    try:
        return _build(prefix, cls, values or {}, check_files, None, suggest, listing)
    except ConfigError as exc:
        if source is None:
            raise
        raise exc.located(source) from None


def _build(
    prefix: str,
    cls: type[T],
    values: Mapping[str, Any],
    check_files: bool,
    base: Any,
    suggest: Sequence[str],
    listing: str | None = None,
) -> T:
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def dotted(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    unknown = [k for k in values if k not in fields]
    if unknown:
        known = [dotted(k) for k in fields]
        command = listing.format(section=prefix).strip() if listing else None
        raise ConfigError(
            dotted(unknown[0]),
            values[unknown[0]],
            unknown_key_hint(dotted(unknown[0]), [*known, *suggest], command),
        )
    kwargs = {}
    for name, f in fields.items():
        key, hint = dotted(name), hints[name]
        default = _default(f) if base is None else getattr(base, name)
        if dataclasses.is_dataclass(hint):
            sub = values.get(name) or {}
            if not isinstance(sub, dict):
                raise ConfigError(key, sub, f"a mapping of {name} settings")
            kwargs[name] = _build(key, hint, sub, check_files, default, suggest, listing)  # type: ignore[arg-type]
        elif name in values:
            kwargs[name] = check_value(key, values[name], hint, f.metadata, check_files)
        elif default is dataclasses.MISSING:
            raise ConfigError(key, None, _with_help("a value is required", f.metadata.get("help", "")))
        elif check_files and f.metadata.get("file") and default is not None:
            kwargs[name] = check_value(key, default, hint, f.metadata, check_files)
        else:
            kwargs[name] = default
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _with_help(allowed: str, help_text: str) -> str:
    return f"{allowed} ({help_text})" if help_text else allowed


def check_value(key: str, value: Any, hint: Any, rules: Mapping[str, Any], check_files: bool) -> Any:
    """Coerce ``value`` to the annotated type and apply the field's rules.

    A ``Path``-typed file field becomes an absolute ``Path`` (``~`` expanded); a ``str`` one
    keeps the text as written, with ``${VAR}`` expanded.
    """
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
        origin = typing.get_origin(hint)
    help_text = rules.get("help", "")
    if value is None:
        if optional:
            return None
        raise ConfigError(key, value, f"a value is required ({help_text})")
    raw = value
    value = _coerce(key, value, hint, origin, help_text)
    if rules.get("file") or rules.get("env"):
        value, variables = expand_env(key, value)
        if hint is Path:
            value = Path(value).expanduser().absolute()
        if check_files and rules.get("file"):
            _check_file(key, raw, value, variables, help_text)
    if rules.get("files"):
        value = [expand_env(key, item)[0] for item in value]
    _check_rules(key, value, rules, help_text)
    if check_files and rules.get("files"):
        for item in value:
            if not rules.get("resolve", Path)(item).is_file():
                raise MissingFile(
                    key, item, f"existing files ({help_text}); no file at {Path(item).resolve()}"
                )
    return value


def _check_file(key: str, raw: Any, path: str | Path, variables: list[str], help_text: str) -> None:
    """Refuse a path with no file (``raw``: as written), naming the environment variables it came from."""
    if Path(path).is_file():
        return
    origin = ""
    if variables:
        settings = ", ".join(f"{name}={os.environ.get(name, '')!r}" for name in variables)
        origin = f"; the path comes from {settings}: set it to the folder that holds the file"
    raise MissingFile(key, raw, f"an existing file ({help_text}); no file at {Path(path).resolve()}{origin}")


def _coerce(key: str, value: Any, hint: Any, origin: Any, help_text: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, f"true or false ({help_text})")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(key, value, f"an integer ({help_text})")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(key, value, f"a finite number ({help_text})") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(key, value, f"a finite number ({help_text})")
        return float(value)
    if hint is str or hint is Path:
        if not isinstance(value, str):
            raise ConfigError(key, value, f"a string ({help_text})")
        return value
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, f"a list ({help_text})")
        return [
            _coerce(f"{key}[{i}]", v, item_type, typing.get_origin(item_type), help_text)
            for i, v in enumerate(value)
        ]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"a mapping ({help_text})")
        return dict(value)
    raise TypeError(f"unsupported config type {hint} for {key}")  # a bug in a schema, not user input


def _check_rules(key: str, value: Any, rules: Mapping[str, Any], help_text: str) -> None:
    items = value if isinstance(value, list) else [value]
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(key, value, choice_hint(value, rules["choices"]))
    if "min" in rules and any(v < rules["min"] for v in items):
        raise ConfigError(key, value, f"must be >= {rules['min']} ({help_text})")
    if "max" in rules and any(v > rules["max"] for v in items):
        raise ConfigError(key, value, f"must be <= {rules['max']} ({help_text})")
    if "gt" in rules and any(v <= rules["gt"] for v in items):
        raise ConfigError(key, value, f"must be > {rules['gt']} ({help_text})")
    if "length" in rules and len(value) != rules["length"]:
        raise ConfigError(key, value, f"a list of {rules['length']} numbers ({help_text})")
    if rules.get("pair") or rules.get("pair01"):
        if len(value) != 2 or value[0] > value[1] or value[0] <= 0:
            raise ConfigError(key, value, f"[low, high] with 0 < low <= high ({help_text})")
        if rules.get("pair01") and value[1] > 1:
            raise ConfigError(key, value, f"[low, high] with 0 < low <= high <= 1 ({help_text})")
