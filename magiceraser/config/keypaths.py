"""The key of a ``key=value`` override.

Splits an override into key and value, reads a dotted key with list indices
(``methods[1].trained_dir``) into a path and writes a path back as text, and refuses a key given
twice with different values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from magiceraser.config.errors import ConfigError


def split_override(item: str) -> tuple[str, str, str]:
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
    if is_indexed(key):
        key = key_text(key_path(key, item))
    return item, key, raw


# A key's dotted part: a name, then optionally one or more [index] (``methods[1]``, ``grid[0][2]``).
_PART = re.compile(r"(?P<name>[^\[\]]+)(?P<indices>(?:\[[^\[\]]*\])*)")
_INDEX = re.compile(r"\[([^\[\]]*)\]")


def is_indexed(key: str) -> bool:
    """Whether the key names an element of a list (``methods[1].trained_dir``)."""
    return "[" in key or "]" in key


def key_path(key: str, item: str) -> list[str | int]:
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
            where = key_text(path) + f"[{text}]"
            text = text.strip()
            if not text:
                raise ConfigError(
                    f"{where}: give the element's index (counted from 0), e.g. {key_text(path)}[0]"
                )
            if re.fullmatch(r"-\d+", text):
                raise ConfigError(
                    f"{where}: negative indices are not accepted; count from 0 ({key_text(path)}[0] is the first element)"
                )
            if not text.isdigit():
                raise ConfigError(f"{where}: the index must be a whole number counted from 0, e.g. {key_text(path)}[0]")
            path.append(int(text))
    return path


def key_text(path: Sequence[str | int]) -> str:
    """``["methods", 1, "trained_dir"]`` -> ``"methods[1].trained_dir"``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def refuse_repeated_keys(pairs: Sequence[tuple[str, str, str]]) -> None:
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
