"""What the annotations of a config dataclass declare.

The type of a dotted key (:func:`field_type`), the fields ``cls(...)`` accepts, ``Optional`` /
list / item types, and the readable type names used in messages and ``--help``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from magiceraser.config.keypaths import is_indexed, key_path


def init_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of the fields ``cls(...)`` accepts."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def strip_optional(tp: Any) -> Any:
    """``X | None`` -> ``X``; any other type unchanged."""
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def is_optional(tp: Any) -> bool:
    """Whether ``tp`` admits ``None`` (``X | None``, ``Optional[X]``)."""
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def is_list_type(tp: Any) -> bool:
    """Whether ``tp`` is a list, tuple or sequence type."""
    return get_origin(tp) in (list, tuple, Sequence) or tp in (list, tuple)


def item_types(tp: Any) -> tuple[Any, ...]:
    """The item types of a list / tuple type (``(Any,)`` when it names none)."""
    args = tuple(a for a in get_args(tp) if a is not Ellipsis)
    return args or (Any,)


def is_scalar_type(tp: Any) -> bool:
    """Types whose values are one word on the command line (so a list of them can be split at commas)."""
    inner = strip_optional(tp)
    return inner in (str, Path, int, float, bool) or get_origin(inner) is Literal


def type_name(tp: Any) -> str:
    """Readable annotation for messages and ``--help``: ``list[str]``, ``int | None``, ``{a,b}``."""
    if tp is type(None):
        return "None"
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is Literal:
        return "{" + ",".join(str(c) for c in get_args(tp)) + "}"
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else type_name(a) for a in get_args(tp))
        name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        return f"{name}[{args}]" if args else name
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def field_type(cls: type | None, key: str) -> Any:
    """Declared type of the dotted ``key`` inside the dataclass ``cls``; ``Any`` when unknown.

    ``[i]`` in the key steps into a list's item type (``methods[1].trained_dir`` -> ``str``). An
    unknown key is not an error here: :func:`build_config` reports it with the valid keys.
    """
    tp: Any = cls
    path = key_path(key, key) if is_indexed(key) else key.split(".")
    for part in path:
        tp = strip_optional(tp)
        if isinstance(part, int):
            if not is_list_type(tp):
                return Any
            args = get_args(tp)
            if get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
                tp = args[part] if part < len(args) else Any
            else:
                tp = item_types(tp)[0]
        elif dataclasses.is_dataclass(tp):
            hints = init_hints(tp)
            if part not in hints:
                return Any
            tp = hints[part]
        elif get_origin(tp) in (dict, Mapping):
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            return Any
    return tp
