"""Storage locations as users give them: an fsspec URL of an object store, or a local path.

``s3://bucket/prefix``, ``gs://...``, ``memory://...`` name object stores; plain paths and
``file://`` (or ``local://``) URLs name the local disk. Everything that writes outputs decides with
:func:`is_object_store` which way of writing a complete file applies (see :mod:`.folder`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_object_store(url: str | os.PathLike) -> bool:
    """True for an fsspec URL other than ``file://`` (``s3://b/p``, ``gs://b/p``, ``memory://p``)."""
    text = os.fspath(url)
    return bool(_URL_RE.match(text)) and not text.startswith(("file://", "local://"))


def protocol(url: str | os.PathLike) -> str:
    """The URL's scheme (``s3``, ``gs``, ...); ``file`` for a local path."""
    text = os.fspath(url)
    return text.split("://", 1)[0].lower() if is_object_store(text) else "file"


def local_path(url: str | os.PathLike) -> Path:
    """The local path a ``file://``/``local://`` URL or a plain path names (``~`` expanded)."""
    text = os.fspath(url)
    for prefix in ("file://", "local://"):
        text = text.removeprefix(prefix)
    return Path(os.path.expanduser(text))
