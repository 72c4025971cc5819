"""Typed configs: dataclasses loaded from YAML and overridden from the command line.

Every component declares one dataclass (fields with defaults, a docstring line under each field,
``__post_init__`` raising ``ValueError`` for invalid values). This module turns a YAML file plus
``key=value`` overrides (dotted keys for nested dataclasses) into an instance of it, and fails
with a :class:`ConfigError` that names the offending key for unknown keys and for values of the
wrong type.

Override values are read according to the type the field declares, so nothing typed on the
command line is silently reinterpreted:

* ``str`` / ``Path`` fields take the text literally (``prompt=#1 garden path``,
  ``prompt=A photo: grass``, ``input=olrd-{000000..000999}.tar``);
* list / tuple fields of scalars take a flow list or a comma-separated list (``tags=[grass,sky]``,
  ``tags=grass,sky``, ``urls=["a.tar","b.tar"]``); items are split at top-level commas only, so a
  brace pattern ``olrd-{a,b}.tar`` or ``olrd-{000000..000999}.tar`` stays one item;
* ``bool`` / ``int`` / ``float`` / ``Literal`` / ``Optional`` values and everything else (nested
  mappings, lists of mappings) are parsed as YAML, as before (``steps=10``, ``lr=1e-4``,
  ``resume=true``, ``name=null``, ``methods=[{name: a, kind: telea}]``).

The same key given twice with different values is refused: the shell expands an unquoted
``{000000..000999}`` into 1000 arguments, and keeping only the last one would silently train on
one shard.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from magiceraser.errors import UserError

T = TypeVar("T")

__all__ = [
    "ConfigError", "load_config", "parse_overrides", "parse_value", "config_to_dict", "build_config",
    "save_config", "field_docs", "config_help",
]

# YAML's spellings of null that an Optional field accepts on the command line (not the empty string:
# ``name=`` sets an empty string, which is what the user typed).
_NULLS = frozenset({"null", "Null", "NULL", "~"})
_QUOTES = "'\""
_OPEN, _CLOSE = "([{", ")]}"


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the key and what to do.

    A :class:`~magiceraser.errors.UserError` (the CLI prints it as one line, exit code 2) and a
    ``ValueError`` (what callers caught before that class existed).
    """


# ---------------------------------------------------------------------------------------------
# Command-line overrides


def parse_overrides(overrides: Sequence[str], cls: type | None = None) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into the nested dict ``{"a": {"b": 1}, "c": "x"}``.

    With ``cls`` (the config dataclass) each value is read by its field's declared type (see the
    module docstring); without it, as YAML.
    """
    pairs = [_split_override(item) for item in overrides]
    _refuse_repeated_keys(pairs)
    out: dict[str, Any] = {}
    for item, key, raw in pairs:
        tp = field_type(cls, key) if cls is not None else Any
        _set_nested(out, key, parse_value(raw, tp, key), item)
    return out


def _split_override(item: str) -> tuple[str, str, str]:
    """``"a.b=1"`` -> ``(item, "a.b", "1")``; the value is kept verbatim (it may contain ``=``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. steps=100, wandb.mode=offline)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    return item, key, raw


def _refuse_repeated_keys(pairs: Sequence[tuple[str, str, str]]) -> None:
    """A key given twice with different values is ambiguous; keeping the last would lose the others.

    The usual cause is an unquoted brace pattern that the shell expanded into one argument per shard.
    """
    values: dict[str, list[str]] = {}
    for _, key, raw in pairs:
        values.setdefault(key, []).append(raw)
    for key, raws in values.items():
        if len(set(raws)) > 1:
            shown = ", ".join(repr(f"{key}={r}") for r in raws[:2]) + (", ..." if len(raws) > 2 else "")
            raise ConfigError(
                f"{key} is given {len(raws)} times with different values ({shown}); give it once. If the "
                f"shell expanded a brace pattern such as {{000000..000999}}, quote the whole override: "
                f"'{key}=...'"
            )


def _set_nested(out: dict[str, Any], key: str, value: Any, item: str) -> None:
    """Store ``value`` at the dotted ``key``, refusing to let a plain value and nested keys collide."""
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r} sets a field inside {part!r}, which was given a plain value")
        node = child
    last = parts[-1]
    if last in node and isinstance(node[last], dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"override {item!r} gives a plain value to {key!r}, whose fields were set separately")
        value = _deep_merge(node[last], value)
    node[last] = value


def field_type(cls: type | None, key: str) -> Any:
    """Declared type of the dotted ``key`` inside the dataclass ``cls``; ``Any`` when unknown.

    An unknown key is not an error here: :func:`build_config` reports it with the valid keys.
    """
    tp: Any = cls
    for part in key.split("."):
        tp = _strip_optional(tp)
        if dataclasses.is_dataclass(tp):
            hints = _init_hints(tp)
            if part not in hints:
                return Any
            tp = hints[part]
        elif get_origin(tp) in (dict, Mapping):
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            return Any
    return tp


def _init_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of the fields ``cls(...)`` accepts."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; any other type unchanged."""
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def parse_value(raw: str, tp: Any, key: str) -> Any:
    """Read the text of one override for a field annotated ``tp``; :func:`_coerce` checks it later."""
    if _is_optional(tp) and raw.strip() in _NULLS:
        return None
    inner = _strip_optional(tp)
    if inner in (str, Path):
        return raw  # literal: "#1 ...", "A photo: grass" and "x-{1..9}" are not YAML here
    if get_origin(inner) is Literal:
        return raw if raw in get_args(inner) else _parse_yaml(raw, key, strict=False)
    if _is_list_type(inner) and all(_is_scalar_type(t) for t in _item_types(inner)):
        return _parse_scalar_list(raw, inner, key)
    if inner is int:
        try:
            return int(raw.strip())  # decimal, even with a leading zero (YAML 1.1 would read 010 as 8)
        except ValueError:
            pass
    structured = dataclasses.is_dataclass(inner) or _is_list_type(inner) or get_origin(inner) in (dict, Mapping)
    return _parse_yaml(raw, key, strict=structured)


def _parse_yaml(raw: str, key: str, strict: bool) -> Any:
    """YAML value of ``raw`` (empty -> ``""``); text that is not YAML stays text unless ``strict``."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if strict:
            raise ConfigError(f"{key}: {raw!r} is not valid YAML: {_yaml_problem(exc)}") from exc
        return raw


def _is_list_type(tp: Any) -> bool:
    return get_origin(tp) in (list, tuple, Sequence) or tp in (list, tuple)


def _item_types(tp: Any) -> tuple[Any, ...]:
    args = tuple(a for a in get_args(tp) if a is not Ellipsis)
    return args or (Any,)


def _is_scalar_type(tp: Any) -> bool:
    """Types whose values are one word on the command line (so a list of them can be split at commas)."""
    inner = _strip_optional(tp)
    return inner in (str, Path, int, float, bool) or get_origin(inner) is Literal


def _parse_scalar_list(raw: str, tp: Any, key: str) -> list[Any]:
    """``[a, b]``, ``["a", "b"]`` or ``a,b`` -> items parsed by the item type; ``""``/``[]`` -> ``[]``."""
    text = raw.strip()
    if text.startswith("["):
        if not text.endswith("]"):
            raise ConfigError(f"{key}: {raw!r} opens a list with [ but does not end with ]")
        text = text[1:-1]
    if not text.strip():
        return []
    items = _split_top_level(text, key, raw)
    args = get_args(tp)
    fixed = get_origin(tp) is tuple and args and args[-1] is not Ellipsis
    out = []
    for i, item in enumerate(items):
        item_tp = (args[i] if i < len(args) else Any) if fixed else _item_types(tp)[0]
        out.append(_parse_item(item, item_tp, f"{key}[{i}]", raw))
    return out


def _parse_item(item: str, tp: Any, key: str, raw: str) -> Any:
    """One list item: quoted text is unquoted (YAML/JSON rules), anything else read by its type."""
    text = item.strip()
    if not text:
        raise ConfigError(f"{key}: empty item in the list {raw!r} (two commas in a row, or a trailing comma?)")
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == text[0]:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: bad quoting in {text!r}: {_yaml_problem(exc)}") from exc
    return parse_value(text, tp, key)


def _split_top_level(text: str, key: str, raw: str) -> list[str]:
    """Split at commas outside quotes and brackets, so ``x-{a,b}.tar`` and ``"a,b"`` stay whole."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in _QUOTES:
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                raise ConfigError(f"{key}: unbalanced {ch!r} in {raw!r}")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if quote or depth:
        raise ConfigError(f"{key}: unclosed {'quote' if quote else 'bracket'} in {raw!r}")
    items.append(text[start:])
    return items


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line from a (multi-line) YAML error: the problem and where it is."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})" if exc.problem_mark else ""
        return f"{exc.problem}{where}"
    return " ".join(str(exc).split())


# ---------------------------------------------------------------------------------------------
# Building the dataclass


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, recursively for nested mappings (neither is modified)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _type_name(tp: Any) -> str:
    """Readable annotation for messages and ``--help``: ``list[str]``, ``int | None``, ``{a,b}``."""
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is Literal:
        return "{" + ",".join(str(c) for c in get_args(tp)) + "}"
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in get_args(tp))
        name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        return f"{name}[{args}]" if args else name
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting where lossless) or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: null is not allowed, expected {_type_name(tp)}")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build_config(tp, value, prefix=key + ".")
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        args = get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-4" as a string
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    return value


def build_config(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Instantiate the dataclass ``cls`` from a (nested) mapping, checking keys and types."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r} for {cls.__name__}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
            + f"; valid keys: {known}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            # Merge partial nested mappings onto the field's default instance.
            default = _field_default(fields[name])
            base = config_to_dict(default) if default is not None else {}
            kwargs[name] = build_config(tp, _deep_merge(base, value), prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(_post_init_message(cls, prefix, str(exc))) from exc


def _post_init_message(cls: type, prefix: str, message: str) -> str:
    """Name the key in a ``__post_init__`` message exactly once, as its full dotted path.

    Messages start with a field name (``resolution must be ...``), or already with the section's
    own name (``compose.min_object_area ...``), or with neither; only the first two get the
    prefix, and a section name is not repeated (``compose.compose.min_object_area`` was).
    """
    section = prefix.rstrip(".").rsplit(".", 1)[-1]
    if section and message.startswith(section + "."):
        return prefix[: -len(section) - 1] + message
    head = message.split(maxsplit=1)[0].rstrip(":,") if message.strip() else ""
    if head.split("/")[0].split(".")[0] in {f.name for f in dataclasses.fields(cls)}:
        return prefix + message
    return f"{prefix.rstrip('.') or cls.__name__}: {message}"


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from an optional YAML file, then apply ``key=value`` overrides."""
    data = _read_config_file(Path(path)) if path is not None else {}
    data = _deep_merge(data, parse_overrides(overrides, cls))
    return build_config(cls, data)


def _read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; every way the file can be wrong is a ConfigError naming it."""
    name = repr(str(path))
    if not path.exists():
        raise ConfigError(f"config file {name} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {name} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {name} is not a YAML text file (not UTF-8 at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {name}: {exc.strerror or exc}") from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {name} is not valid YAML: {_yaml_problem(exc)}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config file {name} must hold a mapping of keys to values, not {type(loaded).__name__}")
    return dict(loaded)


def config_to_dict(cfg: Any) -> Any:
    """Plain (YAML/JSON-serialisable) form of a config dataclass."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the config as YAML (atomically) so that ``load_config`` reads it back unchanged."""
    from magiceraser.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# ---------------------------------------------------------------------------------------------
# Help text generated from the config classes (so ``--help`` cannot go stale)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: one-line docstring}`` from the string literal under each field in the class source.

    Python keeps no attribute docstrings at run time, so they are read from the source with ``ast``
    (base classes first, so a subclass's docstring wins). A class without source gives ``{}``.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_class_attribute_docs(klass))
    return docs


def _class_attribute_docs(klass: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef)), [])
    docs = {}
    for stmt, after in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = _one_line(after.value.value)
    return docs


def _one_line(doc: str) -> str:
    """First paragraph of a docstring on one line, rST ``literals`` shown as `literals`."""
    paragraph = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(paragraph.split()).replace("``", "`")


_MISSING_DEFAULT = "(required)"


def config_keys(cls: type, prefix: str = "", instance: Any = None) -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, doc)`` for every settable key of ``cls``, nested ones dotted.

    Defaults come from ``instance`` (the parent's default for this section) when there is one, so a
    parent that builds its section with non-default values shows those. Items of a list of
    dataclasses are listed as ``key[].field``.
    """
    if instance is None:
        instance = _default_instance(cls)
    docs = field_docs(cls)
    hints = _init_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.name not in hints:
            continue
        tp, key = hints[f.name], prefix + f.name
        value = getattr(instance, f.name) if instance is not None else _field_default_or_missing(f)
        if dataclasses.is_dataclass(tp):
            rows += config_keys(tp, key + ".", value if dataclasses.is_dataclass(value) else None)
            continue
        rows.append((key, _type_name(tp), _show_default(value), docs.get(f.name, "")))
        item = _item_types(tp)[0] if _is_list_type(tp) else None
        if item is not None and dataclasses.is_dataclass(item):
            rows += config_keys(item, key + "[].")
    return rows


def _default_instance(cls: type) -> Any:
    """``cls()`` when every field has a valid default, else ``None`` (field defaults are used)."""
    try:
        return cls()
    except Exception:  # a required field or a default that __post_init__ rejects on its own
        return None


def _field_default_or_missing(f: dataclasses.Field) -> Any:
    """The field's own default; ``(required)`` without one, or when its factory fails (help must print)."""
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return _MISSING_DEFAULT
    try:
        return _field_default(f)
    except Exception:
        return _MISSING_DEFAULT


def _show_default(value: Any) -> str:
    """A default as the user would type it (JSON: ``""``, ``[]``, ``true``, ``null``)."""
    if value is _MISSING_DEFAULT:
        return value
    return json.dumps(config_to_dict(value), ensure_ascii=False, default=str)


def config_help(cls: type) -> str:
    """The ``config keys`` block appended to a subcommand's ``--help``: key, type = default, doc."""
    rows = config_keys(cls)
    width = max((len(key) for key, *_ in rows), default=0)
    lines = [
        f"config keys of {cls.__name__}: set them in --config FILE.yaml or as key=value (lists as [a,b]",
        "or a,b; quote a value holding spaces, # or {...} for the shell):",
    ]
    for key, tp, default, doc in rows:
        lines.append(f"  {key:<{width}}  {tp} = {default}" + (f"  {doc}" if doc else ""))
    return "\n".join(lines) + "\n"
