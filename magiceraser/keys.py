"""Keys made from paths and labels: the one place that says which characters a key may hold.

Two rules, on purpose, because their keys name files that already exist on disk:

* :func:`sample_key`: the data engine's WebDataset sample key of an input image. WebDataset
  splits a tar member name at its first dot, so the key holds no dot; one folded character stands
  for a whole run of others, the readable part is cut to its last 96 characters, and 8 hex digits
  of the path's SHA-1 keep two paths that fold to the same text apart (a shard holds thousands of
  inputs, and the job refuses duplicates). A resumed ``magiceraser olrd`` job matches its shards
  by these keys, so they must stay byte-identical.
* :func:`file_name_key`: an evaluation pair key or a table label as a file or folder name
  (``pairs/<dataset>/<key>/``, ``methods/<dataset>/<method>/``, ``grids/...``). It must stay
  readable and map one character to one character (``i. Baseline + OLRD`` ->
  ``i__Baseline___OLRD``); uniqueness is the caller's (the run numbers repeated pair keys, the
  config refuses two labels on one folder). A rerun of ``magiceraser evaluate`` finds its cached
  pairs, images and scores under these names, so they must stay byte-identical too.

Merging the two would rename either every sample of existing shards or every folder of existing
evaluations; each rule is therefore kept as it is, and named for what it is for.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sample_key(rel: str) -> str:
    """Deterministic sample key without dots from a source path relative to the input root.

    Readable part: the path without extension, separators and other characters folded to ``_``
    (``train/airfield/00000001.jpg`` -> ``train_airfield_00000001``), then 8 hex digits of the
    path's SHA-1 so that paths folding to the same text stay distinct.
    """
    rel = rel.replace("\\", "/").lstrip("/")
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    readable = _UNSAFE.sub("_", stem).strip("_")[-96:] or "image"
    return f"{readable}_{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def file_name_key(text: str) -> str:
    """A readable file-name-safe key: each character other than a letter or digit (any script,
    ``str.isalnum``), ``-`` or ``_`` becomes ``_``; leading/trailing ``_`` dropped; ``item`` if empty."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_") or "item"
