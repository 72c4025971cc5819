"""RealHM (Jiang et al., SSH, ICCV 2021) as evaluation pairs, in one of two layouts (``layout``).

* ``folders``: ``ROOT/composite/<id>.<ext>``, ``ROOT/mask/<id>.<ext>``, ``ROOT/gt/<id>.<ext>``
  (same stem in the three folders; any of .jpg/.jpeg/.png). Use this for re-packed copies.
* ``ssh``: the archive as distributed (``RealHM/vendor_testing_{1,2,3}/.../``). Per example ``X``:
  ``X.jpg`` (photo the object comes from), ``X_mask.jpg`` (object mask), ``X_fore.jpg`` (the
  background photo the object is placed onto; the SSH reference code names it ``bg_path``),
  ``X_gt.jpg`` (harmonised composite), ``X_small.jpg`` (thumbnail). Following the SSH reference
  code, the composite is ``X·m + X_fore·(1 − m)``; the erasing ground truth is the background
  photo ``X_fore.jpg`` (the paper: "recover I from Ĩ and m").
* ``auto``: ``folders`` when ``ROOT/composite`` exists, else ``ssh``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from magiceraser.evaluation.pairs import PairOrSkip, PairSkip, check_pair
from magiceraser.imageio import IMAGE_SUFFIXES, ImageDecodeError, decode_image, decode_mask
from magiceraser.keys import file_name_key


def _find_with_stem(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_SUFFIXES:
        for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def iter_realhm(root: str | Path, layout: str = "auto") -> Iterator[PairOrSkip]:
    """RealHM examples in sorted order (see the module docstring for the layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"RealHM root {root} does not exist: point dataset.path at the extracted RealHM folder")
    if layout == "auto":
        layout = "folders" if (root / "composite").is_dir() else "ssh"
    if layout == "folders":
        yield from _iter_realhm_folders(root)
    elif layout == "ssh":
        yield from _iter_realhm_ssh(root)
    else:
        raise ValueError(f"unknown RealHM layout {layout!r}: use 'folders', 'ssh' or 'auto'")


def _iter_realhm_folders(root: Path) -> Iterator[PairOrSkip]:
    comp_dir, mask_dir, gt_dir = root / "composite", root / "mask", root / "gt"
    for d in (comp_dir, mask_dir, gt_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"RealHM folder layout needs {d} (composite/, mask/, gt/ with matching file stems)")
    for comp in sorted(p for p in comp_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        key = file_name_key(comp.stem)
        mask_p, gt_p = _find_with_stem(mask_dir, comp.stem), _find_with_stem(gt_dir, comp.stem)
        if mask_p is None or gt_p is None:
            yield PairSkip(key, "missing_file", f"no {'mask' if mask_p is None else 'gt'} file for {comp.name}")
            continue
        try:
            yield check_pair(key, decode_image(comp), decode_mask(mask_p), decode_image(gt_p), {"source": str(comp)})
        except ImageDecodeError as exc:
            yield PairSkip(key, exc.reason, str(exc))


def _iter_realhm_ssh(root: Path) -> Iterator[PairOrSkip]:
    masks = sorted(p for p in root.rglob("*_mask.*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not masks:
        raise FileNotFoundError(
            f"no RealHM examples under {root}: expected <name>_mask.jpg next to <name>.jpg and <name>_fore.jpg "
            "(RealHM as distributed), or composite/ mask/ gt/ folders"
        )
    for mask_p in masks:
        stem = mask_p.name[: -len("_mask" + mask_p.suffix)]
        folder = mask_p.parent
        key = file_name_key(str((folder / stem).relative_to(root)))
        fore_p, bg_p = _find_with_stem(folder, stem), _find_with_stem(folder, stem + "_fore")
        if fore_p is None or bg_p is None:
            yield PairSkip(key, "missing_file", f"{stem}: needs {stem}.jpg and {stem}_fore.jpg next to the mask")
            continue
        try:
            fore, bg, mask = decode_image(fore_p), decode_image(bg_p), decode_mask(mask_p)
        except ImageDecodeError as exc:
            yield PairSkip(key, exc.reason, str(exc))
            continue
        if fore.shape != bg.shape or mask.shape != bg.shape[:2]:
            yield PairSkip(key, "size_mismatch", f"object photo {fore.shape[:2]}, background {bg.shape[:2]}, mask {mask.shape}")
            continue
        composite = np.where(mask[..., None], fore, bg)
        yield check_pair(key, composite, mask, bg, {"source": str(folder / stem)})
