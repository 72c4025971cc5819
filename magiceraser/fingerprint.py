"""Fingerprints of what a piece of state depends on, and the message that names what changed.

Every resume and cache in the project records the settings its bytes depend on (a dict of JSON
values, nested where the config is nested) and a digest of them. A later run compares its own
dict with the recorded one and either reuses the state, rebuilds it, or refuses with
:func:`describe_changes`' one-line list of the keys that differ (``seed: 0 -> 7``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["digest", "file_sha256", "stream_sha256", "config_digest", "flatten", "matches", "changed", "describe_changes"]

_MISSING = object()


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file's bytes, read in 1 MiB chunks (weights and results can be large)."""
    with open(path, "rb") as fh:
        return stream_sha256(fh)


def stream_sha256(fh: BinaryIO) -> str:
    """sha256 hex of what is left to read in a binary file object (local, or fsspec's for a URL), 1 MiB at a time."""
    h = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def config_digest(config: Mapping[str, Any]) -> str:
    """Digest of a model's config (diffusers/transformers) without its private keys.

    ``_name_or_path``, ``_diffusers_version``, ``transformers_version`` and the like say where a
    model came from and what wrote it, not what it is: a Hub id and a local copy of it agree.
    """
    return digest({k: v for k, v in dict(config).items() if not k.startswith("_") and k != "transformers_version"})


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys, so a change is named down to the field (``compose.seed``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def matches(key: str, patterns: Iterable[str]) -> bool:
    """``key`` equals a pattern or lies under it (``wandb`` covers ``wandb.mode``)."""
    return any(key == p or key.startswith(p + ".") for p in patterns)


def changed(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """The dotted keys whose values differ between ``old`` and ``new``: {key: (old, new)}.

    A key present on one side only counts as changed (its other value is ``None`` in the result).
    Keys equal to or under one of ``ignore`` are left out.
    """
    a, b = flatten(old), flatten(new)
    ignore = tuple(ignore)
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        if matches(key, ignore):
            continue
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va != vb:
            out[key] = (None if va is _MISSING else va, None if vb is _MISSING else vb)
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_changes(diff: Mapping[str, tuple[Any, Any]]) -> str:
    """``seed: 0 -> 7, data.resolution: 512 -> 256`` for a :func:`changed` result ('unknown' if empty)."""
    return ", ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in diff.items()) or "unknown"
