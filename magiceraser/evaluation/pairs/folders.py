"""Plain evaluation folders: inputs, masks and (optionally) targets matched by file name.

This project's own layout, for any benchmark without a reader of its own::

    ROOT/input/<name>.<ext>    the image containing the object
    ROOT/mask/<name>.<ext>     its erase mask (gray >= 128 = erase), same <name>
    ROOT/target/<name>.<ext>   optional: the ground truth without the object, same <name>

``<ext>`` is any of ``magiceraser.imageio.IMAGE_SUFFIXES`` in any letter case (``a.JPG`` and
``a.Png`` are found); files are matched by the name without its extension. Where one folder holds
several files of one name (``a.png`` and ``a.jpg`` in ``mask/``), the first suffix in
``IMAGE_SUFFIXES`` order is taken. Keys are the names (``magiceraser.keys.file_name_key``), in
natural order (``2`` before ``10``).

* No ``target/`` folder: every pair has ``target=None`` and is scored by the reference-free metrics.
* ``target/`` present but a name missing from it: the pair is kept without a target and its meta
  records ``"target_missing": true``.
* A missing mask: ``PairSkip(key, "missing_file")``; two inputs of one name: ``"duplicate_key"``
  (which mask belongs to which is ambiguous); an unreadable file: the decoder's reason
  (``not_an_image``, ``truncated``, ...); a mask or target whose size differs from the input:
  ``"size_mismatch"``; a mask selecting nothing: ``"empty_mask"`` (both from ``check_pair``).

Each pair's meta holds ``"source"`` (the input's path). The helpers below (natural order, an index
of a folder by name, matching by name, reading one pair) are shared with the RORem and RemovalBench
readers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from magiceraser.evaluation.pairs import PairOrSkip, PairSkip, check_pair
from magiceraser.imageio import IMAGE_SUFFIXES, ImageDecodeError, decode_image, decode_mask
from magiceraser.keys import file_name_key

__all__ = ["image_files", "iter_folders", "iter_matched_by_name", "natural_key", "read_pair", "stem_index"]

_SUFFIX_RANK = {suffix: rank for rank, suffix in enumerate(IMAGE_SUFFIXES)}


def natural_key(name: str) -> tuple:
    """Sort key that orders runs of ASCII digits by value (``2`` before ``10``), then by the name itself."""
    parts = tuple((0, int(p), "") if p.isascii() and p.isdigit() else (1, 0, p) for p in re.split(r"([0-9]+)", name) if p)
    return parts, name


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (suffix in IMAGE_SUFFIXES, any case), in natural order of name."""
    files = (p for p in folder.iterdir() if p.suffix.lower() in _SUFFIX_RANK and p.is_file())
    return sorted(files, key=lambda p: natural_key(p.name))


def stem_index(folder: Path) -> dict[str, Path]:
    """Name without extension -> image file in ``folder``; of several files of one name, the first suffix
    in IMAGE_SUFFIXES order wins (the choice does not depend on the listing order)."""
    index: dict[str, Path] = {}
    for path in image_files(folder):
        held = index.get(path.stem)
        if held is None or (_SUFFIX_RANK[path.suffix.lower()], path.name) < (_SUFFIX_RANK[held.suffix.lower()], held.name):
            index[path.stem] = path
    return index


def read_pair(key: str, image_path: Path, mask_path: Path, target_path: Path | None, meta: dict) -> PairOrSkip:
    """Decode one pair (``target_path`` None: no ground truth); an unreadable file is a skip with the decoder's reason."""
    try:
        image = decode_image(image_path)
        mask = decode_mask(mask_path)
        target = None if target_path is None else decode_image(target_path)
    except ImageDecodeError as exc:
        return PairSkip(key, exc.reason, str(exc))
    return check_pair(key, image, mask, target, meta)


def iter_matched_by_name(
    inputs: Iterable[Path],
    mask_dir: Path,
    target_dir: Path | None,
    key_prefix: str = "",
    meta: dict | None = None,
) -> Iterator[PairOrSkip]:
    """Pairs of ``inputs`` with the file of the same name in ``mask_dir`` and ``target_dir``, in natural order.

    ``target_dir`` None: no ground truth (``target=None``). A name missing from ``target_dir``: the pair
    is kept without a target and flagged ``"target_missing"``. Keys are ``key_prefix + name``.
    """
    masks = stem_index(mask_dir)
    targets = None if target_dir is None else stem_index(target_dir)
    by_name: dict[str, list[Path]] = {}
    for path in inputs:
        by_name.setdefault(path.stem, []).append(path)
    seen: set[str] = set()
    for name in sorted(by_name, key=natural_key):
        key = file_name_key(key_prefix + name)
        group = by_name[name]
        if len(group) > 1 or key in seen:
            clash = ", ".join(p.name for p in group) if len(group) > 1 else f"{group[0].name} and an earlier input"
            yield PairSkip(key, "duplicate_key", f"{clash} in {group[0].parent} give the same key {key!r}: keep one of them")
            continue
        seen.add(key)
        image_path = group[0]
        mask_path = masks.get(name)
        if mask_path is None:
            yield PairSkip(key, "missing_file", f"no mask named {name}.* in {mask_dir} for {image_path.name}")
            continue
        pair_meta = {"source": str(image_path), **(meta or {})}
        target_path = None
        if targets is not None:
            target_path = targets.get(name)
            if target_path is None:
                pair_meta["target_missing"] = True
        yield read_pair(key, image_path, mask_path, target_path, pair_meta)


def iter_folders(root: str | Path) -> Iterator[PairOrSkip]:
    """Pairs from ``ROOT/input``, ``ROOT/mask`` and optional ``ROOT/target`` (see the module docstring)."""
    root = Path(root)
    input_dir, mask_dir, target_dir = root / "input", root / "mask", root / "target"
    if not input_dir.is_dir() or not mask_dir.is_dir():
        raise FileNotFoundError(
            f"evaluation folders at {root} need input/ and mask/ (optionally target/): ROOT/input/<name>.png, "
            "ROOT/mask/<name>.png [, ROOT/target/<name>.png], files matched by name"
        )
    inputs = image_files(input_dir)
    if not inputs:
        raise FileNotFoundError(f"no images in {input_dir} (suffixes {', '.join(IMAGE_SUFFIXES)})")
    yield from iter_matched_by_name(inputs, mask_dir, target_dir if target_dir.is_dir() else None)
