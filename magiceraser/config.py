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

One element of a list (from the YAML, or the field's default list) is set with an index:
``methods[1].trained_dir=runs/x`` sets that field of element 1 (counted from 0), read by the
field's type as above; ``methods[1]={name: b, kind: lama}`` replaces the whole element (fields it
does not give take their defaults, not the old element's). Element overrides are applied after the
YAML and after the plain overrides (so ``methods=[...]`` first, then ``methods[1].x=...``), whole
elements before their fields. The index must exist (0 .. length-1): the list is not extended, and
a negative index is refused rather than counted from the end, so a key names the same element
whatever the list's length. Errors name the full key (``methods[1].trained_dir: ...``).

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
import re
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
    "save_config", "field_docs", "config_help", "apply_overrides", "plain_text",
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
    module docstring); without it, as YAML. An element override (``methods[1].name=x``) needs the
    list it changes: :func:`apply_overrides` / :func:`load_config` take those.
    """
    pairs = [_split_override(item) for item in overrides]
    _refuse_repeated_keys(pairs)
    indexed = [key for _, key, _ in pairs if _is_indexed(key)]
    if indexed:
        raise ConfigError(
            f"{indexed[0]}: a list element can only be overridden together with the config it changes "
            f"(load_config / apply_overrides), not by parse_overrides"
        )
    return _nest_overrides(pairs, cls)


def _nest_overrides(pairs: Sequence[tuple[str, str, str]], cls: type | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item, key, raw in pairs:
        tp = field_type(cls, key) if cls is not None else Any
        _set_nested(out, key, parse_value(raw, tp, key), item)
    return out


def apply_overrides(cls: type, data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` (the YAML's mapping) with the ``key=value`` overrides applied, ready for :func:`build_config`.

    Plain keys are merged in first; then element overrides (``methods[1].trained_dir=x``,
    ``methods[1]={...}``) change the list as it now stands (given, or the field's default),
    whole elements before fields inside them. ``data`` is not modified.
    """
    pairs = [_split_override(item) for item in overrides]
    _refuse_repeated_keys(pairs)
    plain = [p for p in pairs if not _is_indexed(p[1])]
    out = _deep_merge(data, _nest_overrides(plain, cls))
    indexed = sorted((p for p in pairs if _is_indexed(p[1])), key=lambda p: len(_key_path(p[1], p[0])))
    for item, key, raw in indexed:
        value = parse_value(raw, field_type(cls, key), key)
        out = _put_path(out, _ABSENT, cls, _key_path(key, item), value, "")
    return out


def _split_override(item: str) -> tuple[str, str, str]:
    """``"a.b=1"`` -> ``(item, "a.b", "1")``; the value is kept verbatim (it may contain ``=``).

    The key comes back in canonical form (``methods[01]`` -> ``methods[1]``), so the same element
    written two ways counts as the same key.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. steps=100, wandb.mode=offline)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    if _is_indexed(key):
        key = _key_text(_key_path(key, item))
    return item, key, raw


# A key's dotted part: a name, then optionally one or more [index] (``methods[1]``, ``grid[0][2]``).
_PART = re.compile(r"(?P<name>[^\[\]]+)(?P<indices>(?:\[[^\[\]]*\])*)")
_INDEX = re.compile(r"\[([^\[\]]*)\]")


def _is_indexed(key: str) -> bool:
    return "[" in key or "]" in key


def _key_path(key: str, item: str) -> list[str | int]:
    """``"methods[1].trained_dir"`` -> ``["methods", 1, "trained_dir"]``; bad brackets are a ConfigError."""
    path: list[str | int] = []
    for part in key.split("."):
        m = _PART.fullmatch(part)
        if m is None:
            name = part.split("[", 1)[0].split("]", 1)[0].strip() or "name"
            raise ConfigError(
                f"override {item!r}: {part!r} is neither a key nor an element of a list; write element i of a "
                f"list as {name}[i], counted from 0 ({name}[0] is the first)"
            )
        path.append(m["name"].strip())
        for text in _INDEX.findall(m["indices"]):
            where = _key_text(path) + f"[{text}]"
            text = text.strip()
            if not text:
                raise ConfigError(
                    f"{where}: give the element's index (counted from 0), e.g. {_key_text(path)}[0]"
                )
            if re.fullmatch(r"-\d+", text):
                raise ConfigError(
                    f"{where}: negative indices are not accepted; count from 0 ({_key_text(path)}[0] is the first element)"
                )
            if not text.isdigit():
                raise ConfigError(f"{where}: the index must be a whole number counted from 0, e.g. {_key_text(path)}[0]")
            path.append(int(text))
    return path


def _key_text(path: Sequence[str | int]) -> str:
    """``["methods", 1, "trained_dir"]`` -> ``"methods[1].trained_dir"``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


_ABSENT: Any = object()


def _field_defaults(cls: type | None) -> Any:
    """What each field of ``cls`` is when not given: a dataclass instance when ``cls()`` builds, else a
    ``{field: default}`` mapping (fields without one left out)."""
    if cls is None or not dataclasses.is_dataclass(cls):
        return _ABSENT
    instance = _default_instance(cls)
    if instance is not None:
        return instance
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.init and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING):  # type: ignore[misc]
            try:
                defaults[f.name] = _field_default(f)
            except Exception:
                continue
    return defaults


def _default_of(default: Any, name: str) -> Any:
    """The default of field ``name`` inside the default value ``default`` of its section."""
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return getattr(default, name, _ABSENT)
    if isinstance(default, Mapping):
        return default.get(name, _ABSENT)
    return _ABSENT


def _put_path(node: Any, default: Any, tp: Any, path: Sequence[str | int], value: Any, done: str) -> Any:
    """A copy of ``node`` (the value given so far at key ``done``, ``_ABSENT`` if none) with ``value``
    stored at ``path`` inside it. ``default`` is what the key holds when not given (as
    :func:`build_config` fills it in: a section's defaults come from its parent's default), ``tp``
    its declared type."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    inner = _strip_optional(tp)
    if isinstance(head, int):
        current = node if node is not _ABSENT else (config_to_dict(default) if default is not _ABSENT else _ABSENT)
        where = f"{done}[{head}]"
        if current is _ABSENT or current is None:
            raise ConfigError(f"{where}: {done} has no list to index (it is not set); give the list in the YAML")
        if isinstance(current, (str, bytes)) or not isinstance(current, Sequence):
            what = f"{current!r}" if _is_list_type(inner) or inner is Any else _type_name(tp)
            raise ConfigError(f"{where}: {done} is {what}, not a list; only the elements of a list have an index")
        if head >= len(current):
            n = len(current)
            held = "the list is empty" if n == 0 else f"the list has {n} element{'s' if n != 1 else ''} (0..{n - 1})"
            raise ConfigError(f"{where}: {held}; add an element in the YAML (or set the whole list: {done}=[...])")
        args = get_args(inner)
        fixed = get_origin(inner) is tuple and args and args[-1] is not Ellipsis
        item_tp = (args[head] if head < len(args) else Any) if fixed else (_item_types(inner)[0] if _is_list_type(inner) else Any)
        items = list(current)
        items[head] = _put_path(items[head], _ABSENT, item_tp, rest, value, where)
        return items
    key = f"{done}.{head}" if done else head
    if dataclasses.is_dataclass(inner):
        if default is _ABSENT:  # not inside a default: the section is built from its class's defaults
            default = _field_defaults(inner)
        hints = _init_hints(inner)
        if head not in hints:
            raise _unknown_keys(inner, [head], done + "." if done else "")
        child_tp = hints[head]
    elif get_origin(inner) in (dict, Mapping):
        args = get_args(inner)
        child_tp = args[1] if len(args) == 2 else Any
    else:
        child_tp = Any
    mapping = node if node is not _ABSENT else {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{key}: {done} is {mapping!r}, not a mapping of fields; cannot set {head} inside it")
    out = dict(mapping)
    out[head] = _put_path(mapping.get(head, _ABSENT), _default_of(default, head), child_tp, rest, value, key)
    return out


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

    ``[i]`` in the key steps into a list's item type (``methods[1].trained_dir`` -> ``str``). An
    unknown key is not an error here: :func:`build_config` reports it with the valid keys.
    """
    tp: Any = cls
    path = _key_path(key, key) if _is_indexed(key) else key.split(".")
    for part in path:
        tp = _strip_optional(tp)
        if isinstance(part, int):
            if not _is_list_type(tp):
                return Any
            args = get_args(tp)
            if get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
                tp = args[part] if part < len(args) else Any
            else:
                tp = _item_types(tp)[0]
        elif dataclasses.is_dataclass(tp):
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
        raise _unknown_keys(cls, unknown, prefix)
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


def _unknown_keys(cls: type, unknown: Sequence[str], prefix: str) -> ConfigError:
    known = ", ".join(sorted(f.name for f in dataclasses.fields(cls) if f.init))
    return ConfigError(
        f"unknown config key {prefix + unknown[0]!r} for {cls.__name__}" + (f" (and {list(unknown[1:])})" if unknown[1:] else "")
        + f"; valid keys: {known}"
    )


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
    return build_config(cls, apply_overrides(cls, data, overrides))


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
    """First paragraph of a docstring on one line, as plain text (:func:`plain_text`)."""
    paragraph = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return plain_text(" ".join(paragraph.split()))


# reStructuredText inline markup, as docstrings write it.
_RST_ROLE = re.compile(r":(?:[A-Za-z][\w.+-]*:)+`(?P<body>[^`]+)`")  # :func:`x`, :py:class:`~a.B`
_RST_LINK = re.compile(r"(?<!`)`(?P<text>[^`<]+?)\s*<(?P<url>[^`>]+)>`__?")  # `text <url>`_
_RST_LITERAL = re.compile(r"``(?P<body>[^`]+?)``")  # ``x``
_RST_INTERPRETED = re.compile(r"(?<![`\w])`(?P<body>[^`\s][^`]*?)`(?:__?)?(?![`\w])")  # `x`, `x`_


def plain_text(text: str) -> str:
    """Docstring text with its reStructuredText inline markup rendered for a terminal.

    ``:role:`target``` -> the target as a reader names it (``:class:`~a.b.C``` -> ``C``,
    ``:func:`title <a.b>``` -> ``title``); ````literal```` and ```interpreted``` -> ``'literal'``
    (quoted, as a shell word would be; text already in quotes keeps its own); ```text <url>`_`` ->
    ``text (url)``. Everything else, line breaks included, is kept. The one renderer of ``--help``:
    config key docs here, and descriptions and option help through
    :class:`magiceraser.cli_args.PlainTextHelpFormatter`.
    """
    text = _RST_ROLE.sub(_role_target, text)
    text = _RST_LINK.sub(lambda m: f"{m['text']} ({m['url']})", text)
    text = _RST_LITERAL.sub(lambda m: _quoted(m["body"]), text)
    return _RST_INTERPRETED.sub(lambda m: _quoted(m["body"]), text)


def _role_target(m: re.Match[str]) -> str:
    body = m["body"].strip()
    if body.endswith(">") and "<" in body:  # :ref:`title <target>`
        return body[: body.rindex("<")].strip()
    body = body.lstrip("!")
    if body.startswith("~"):  # :class:`~magiceraser.errors.UserError` -> UserError
        return body[1:].rsplit(".", 1)[-1]
    return body


def _quoted(body: str) -> str:
    if len(body) >= 2 and body[0] in _QUOTES and body[-1] == body[0]:
        return body
    return f"'{body}'"


_MISSING_DEFAULT = "(required)"


def config_keys(cls: type, prefix: str = "", instance: Any = None) -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, doc)`` for every settable key of ``cls``, nested ones dotted.

    Defaults come from ``instance`` (the parent's default for this section) when there is one, so a
    parent that builds its section with non-default values shows those. Items of a list of
    dataclasses are listed as ``key[i].field``, the syntax of an element override.
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
            rows += config_keys(item, key + "[i].")
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
    element = next((key for key, *_ in rows if "[i]." in key), None)
    if element is not None:
        example = element.replace("[i].", "[1].", 1)
        lines += [
            "one element of a list as key[i].field=value (i from 0; the element must exist), or replace it",
            f"with key[i]={{...}}; quote it for the shell: '{example}=...'",
        ]
    for key, tp, default, doc in rows:
        lines.append(f"  {key:<{width}}  {tp} = {default}" + (f"  {doc}" if doc else ""))
    return "\n".join(lines) + "\n"
