"""Input listing, sample keys and shard assignment: pure, deterministic functions of the input list.

Inputs are a directory tree of images (Places365-Standard's ``places365_standard/{train,val}/<category>/*.jpg``
included) or a list file with one path per line (Places365's ``places365_train_standard.txt``:
``/a/airfield/00000001.jpg 0``; anything after the first whitespace is ignored), on a local disk or
any fsspec filesystem (``s3://``, ``gs://``, ...).

Shard ``i`` holds the inputs at positions ``[i*n, (i+1)*n)`` of the listing (``n`` =
``samples_per_shard``), so any shard can be rebuilt on its own and rebuilding it gives the same
bytes: that is what makes resume idempotent.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
LIST_EXTENSIONS = (".txt", ".lst", ".list", ".csv")


@dataclass(frozen=True)
class InputItem:
    source: str  # path or URL the image is read from
    rel: str  # path relative to the input root (what the key is derived from)
    key: str  # WebDataset sample key: no dots, unique, deterministic
    index: int  # position in the listing
    shard: int  # index of the shard this input belongs to


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


def shard_of(index: int, samples_per_shard: int) -> int:
    return index // samples_per_shard


def num_shards(num_inputs: int, samples_per_shard: int) -> int:
    return -(-num_inputs // samples_per_shard)


def shard_name(shard: int) -> str:
    return f"olrd-{shard:06d}"


def make_items(sources: list[tuple[str, str]], samples_per_shard: int) -> list[InputItem]:
    """``(source, rel)`` pairs in listing order -> items with keys and shard indices.

    A path listed twice keeps its first position (the duplicate is dropped: it would be the same
    sample under the same key).
    """
    items: list[InputItem] = []
    seen: set[str] = set()
    for source, rel in sources:
        key = sample_key(rel)
        if key in seen:
            continue
        seen.add(key)
        i = len(items)
        items.append(InputItem(source, rel, key, i, shard_of(i, samples_per_shard)))
    return items


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def list_sources(input_path: str, input_root: str = "") -> list[tuple[str, str]]:
    """``(source, rel)`` for every image of a directory tree (sorted) or a list file (file order)."""
    import fsspec

    if not input_path:
        raise ValueError("input is empty: give a directory of images or a list file (input=...)")
    fs, root = fsspec.core.url_to_fs(input_path)
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    if fs.isdir(root):
        root = root.rstrip("/")
        files = sorted(p for p in fs.find(root) if _is_image(p))
        return [(prefix + p, p[len(root) + 1 :]) for p in files]
    if not fs.exists(root):
        raise FileNotFoundError(f"input {input_path!r} does not exist: give a directory of images or a list file")
    if not root.lower().endswith(LIST_EXTENSIONS):
        raise ValueError(f"input {input_path!r} is a file but not a list file ({', '.join(LIST_EXTENSIONS)})")
    base = root.rsplit("/", 1)[0] if "/" in root else "."
    if input_root:
        base_fs, base = fsspec.core.url_to_fs(input_root)
        bp = base_fs.protocol[0] if isinstance(base_fs.protocol, (tuple, list)) else base_fs.protocol
        prefix = "" if bp in ("file", "local") else f"{bp}://"
        base = base.rstrip("/")
    out = []
    with fs.open(root, "rt") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            entry = line.split()[0]
            # Places365 lists paths like "/a/airfield/00000001.jpg" relative to the data folder.
            rel = entry.lstrip("/")
            out.append((f"{prefix}{base}/{rel}", rel))
    return out


def list_inputs(input_path: str, samples_per_shard: int, input_root: str = "", limit: int = 0) -> list[InputItem]:
    """The job's inputs with keys and shard indices (first ``limit`` only when > 0)."""
    sources = list_sources(input_path, input_root)
    items = make_items(sources, samples_per_shard)
    return items[:limit] if limit else items


def listing_fingerprint(items: list[InputItem]) -> str:
    """Hash of the keys in order: a resumed job must see the same listing to reuse shards."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.key.encode() + b"\n")
    return h.hexdigest()
