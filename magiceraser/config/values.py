"""The value of a ``key=value`` override, read by the type its field declares.

``str`` / ``Path`` take the text literally; a list or tuple of scalars takes a flow list or a
comma-separated list, split at top-level commas only; ``int`` is decimal; everything else is YAML.
:mod:`magiceraser.config.overrides` describes the rules with examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from magiceraser.config.errors import ConfigError, yaml_problem
from magiceraser.config.typeinfo import (
    is_list_type,
    is_optional,
    is_scalar_type,
    item_types,
    strip_optional,
)

# YAML's spellings of null that an Optional field accepts on the command line (not the empty string:
# ``name=`` sets an empty string, which is what the user typed).
_NULLS = frozenset({"null", "Null", "NULL", "~"})
_QUOTES = "'\""
_OPEN, _CLOSE = "([{", ")]}"


def parse_value(raw: str, tp: Any, key: str) -> Any:
    """Read the text of one override for a field annotated ``tp``; :func:`~magiceraser.config.build.coerce` checks it later."""
    if is_optional(tp) and raw.strip() in _NULLS:
        return None
    inner = strip_optional(tp)
    if inner in (str, Path):
        return raw  # literal: "#1 ...", "A photo: grass" and "x-{1..9}" are not YAML here
    if get_origin(inner) is Literal:
        return raw if raw in get_args(inner) else _parse_yaml(raw, key, strict=False)
    if is_list_type(inner) and all(is_scalar_type(t) for t in item_types(inner)):
        return _parse_scalar_list(raw, inner, key)
    if inner is int:
        try:
            return int(raw.strip())  # decimal, even with a leading zero (YAML 1.1 would read 010 as 8)
        except ValueError:
            pass
    structured = dataclasses.is_dataclass(inner) or is_list_type(inner) or get_origin(inner) in (dict, Mapping)
    return _parse_yaml(raw, key, strict=structured)


def _parse_yaml(raw: str, key: str, strict: bool) -> Any:
    """YAML value of ``raw`` (empty -> ``""``); text that is not YAML stays text unless ``strict``."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if strict:
            raise ConfigError(f"{key}: {raw!r} is not valid YAML: {yaml_problem(exc)}") from exc
        return raw


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
        item_tp = (args[i] if i < len(args) else Any) if fixed else item_types(tp)[0]
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
            raise ConfigError(f"{key}: bad quoting in {text!r}: {yaml_problem(exc)}") from exc
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
