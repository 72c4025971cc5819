"""``key=value`` overrides applied to a config's mapping, each value read by its field's type.

Override values are read according to the type the field declares, so nothing typed on the
command line is silently reinterpreted:

* ``str`` / ``Path`` fields take the text literally (``prompt=#1 garden path``,
  ``prompt=A photo: grass``, ``input=olrd-{000000..000999}.tar``);
* list / tuple fields of scalars take a flow list or a comma-separated list (``tags=[grass,sky]``,
  ``tags=grass,sky``, ``urls=["a.tar","b.tar"]``); items are split at top-level commas only, so a
  brace pattern ``olrd-{a,b}.tar`` or ``olrd-{000000..000999}.tar`` stays one item;
* ``bool`` / ``int`` / ``float`` / ``Literal`` / ``Optional`` values and everything else (nested
  mappings, lists of mappings) are parsed as YAML (``steps=10``, ``lr=1e-4``, ``resume=true``,
  ``name=null``, ``methods=[{name: a, kind: telea}]``).

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

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, get_args, get_origin

from magiceraser.config.build import (
    config_to_dict,
    deep_merge,
    default_instance,
    field_default,
    unknown_keys_error,
)
from magiceraser.config.errors import ConfigError
from magiceraser.config.keypaths import is_indexed, key_path, refuse_repeated_keys, split_override
from magiceraser.config.typeinfo import (
    field_type,
    init_hints,
    is_list_type,
    item_types,
    strip_optional,
    type_name,
)
from magiceraser.config.values import parse_value


def parse_overrides(overrides: Sequence[str], cls: type | None = None) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into the nested dict ``{"a": {"b": 1}, "c": "x"}``.

    With ``cls`` (the config dataclass) each value is read by its field's declared type (see the
    module docstring); without it, as YAML. An element override (``methods[1].name=x``) needs the
    list it changes: :func:`apply_overrides` / :func:`load_config` take those.
    """
    pairs = [split_override(item) for item in overrides]
    refuse_repeated_keys(pairs)
    indexed = [key for _, key, _ in pairs if is_indexed(key)]
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
    pairs = [split_override(item) for item in overrides]
    refuse_repeated_keys(pairs)
    plain = [p for p in pairs if not is_indexed(p[1])]
    out = deep_merge(data, _nest_overrides(plain, cls))
    indexed = sorted((p for p in pairs if is_indexed(p[1])), key=lambda p: len(key_path(p[1], p[0])))
    for item, key, raw in indexed:
        value = parse_value(raw, field_type(cls, key), key)
        out = _put_path(out, _ABSENT, cls, key_path(key, item), value, "")
    return out


_ABSENT: Any = object()


def _field_defaults(cls: type | None) -> Any:
    """What each field of ``cls`` is when not given: a dataclass instance when ``cls()`` builds, else a
    ``{field: default}`` mapping (fields without one left out)."""
    if cls is None or not dataclasses.is_dataclass(cls):
        return _ABSENT
    instance = default_instance(cls)
    if instance is not None:
        return instance
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.init and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING):  # type: ignore[misc]
            try:
                defaults[f.name] = field_default(f)
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
    inner = strip_optional(tp)
    if isinstance(head, int):
        current = node if node is not _ABSENT else (config_to_dict(default) if default is not _ABSENT else _ABSENT)
        where = f"{done}[{head}]"
        if current is _ABSENT or current is None:
            raise ConfigError(f"{where}: {done} has no list to index (it is not set); give the list in the YAML")
        if isinstance(current, (str, bytes)) or not isinstance(current, Sequence):
            what = f"{current!r}" if is_list_type(inner) or inner is Any else type_name(tp)
            raise ConfigError(f"{where}: {done} is {what}, not a list; only the elements of a list have an index")
        if head >= len(current):
            n = len(current)
            held = "the list is empty" if n == 0 else f"the list has {n} element{'s' if n != 1 else ''} (0..{n - 1})"
            raise ConfigError(f"{where}: {held}; add an element in the YAML (or set the whole list: {done}=[...])")
        args = get_args(inner)
        fixed = get_origin(inner) is tuple and args and args[-1] is not Ellipsis
        item_tp = (args[head] if head < len(args) else Any) if fixed else (item_types(inner)[0] if is_list_type(inner) else Any)
        items = list(current)
        items[head] = _put_path(items[head], _ABSENT, item_tp, rest, value, where)
        return items
    key = f"{done}.{head}" if done else head
    if dataclasses.is_dataclass(inner):
        if default is _ABSENT:  # not inside a default: the section is built from its class's defaults
            default = _field_defaults(inner)
        hints = init_hints(inner)
        if head not in hints:
            raise unknown_keys_error(inner, [head], done + "." if done else "")
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
        value = deep_merge(node[last], value)
    node[last] = value
