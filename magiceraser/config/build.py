"""Config dataclasses built from nested mappings, and their plain form.

:func:`build_config` checks every value against its field's annotation (converting where
lossless), refuses unknown keys naming the valid ones, merges a partly given section onto its
field's default, and names the full key in a ``__post_init__`` error; :func:`config_to_dict`
gives the plain (YAML/JSON) form of a config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from magiceraser.config.errors import ConfigError
from magiceraser.config.typeinfo import type_name

T = TypeVar("T")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, recursively for nested mappings (neither is modified)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting where lossless) or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: null is not allowed, expected {type_name(tp)}")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} does not match {type_name(tp)}")
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
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        args = get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
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
        raise unknown_keys_error(cls, unknown, prefix)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            # Merge partial nested mappings onto the field's default instance.
            default = field_default(fields[name])
            base = config_to_dict(default) if default is not None else {}
            kwargs[name] = build_config(tp, deep_merge(base, value), prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(value, tp, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(_post_init_message(cls, prefix, str(exc))) from exc


def unknown_keys_error(cls: type, unknown: Sequence[str], prefix: str) -> ConfigError:
    import difflib

    names = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    close = difflib.get_close_matches(unknown[0], names, n=1)
    return ConfigError(
        f"unknown config key {prefix + unknown[0]!r} for {cls.__name__}" + (f" (and {list(unknown[1:])})" if unknown[1:] else "")
        + (f" (did you mean {prefix + close[0]!r}?)" if close else "") + f"; valid keys: {', '.join(names)}"
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


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def default_instance(cls: type) -> Any:
    """``cls()`` when every field has a valid default, else ``None`` (field defaults are used)."""
    try:
        return cls()
    except Exception:  # a required field or a default that __post_init__ rejects on its own
        return None


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
