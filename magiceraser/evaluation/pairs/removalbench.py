"""RemovalBench (Wei et al. 2025, "OmniEraser: Remove Objects and Their Effects in Images with Paired
Video-Frame Data", arXiv:2501.07397) as evaluation pairs, in the layout it is distributed in.

Source: the OmniEraser repository (github.com/PRIS-CV/Omnieraser, README.md, news of Apr 18 2025,
commit 5570fab) releases the benchmark as the Hugging Face dataset ``BaiLing/RemovalBench``
(https://huggingface.co/datasets/BaiLing/RemovalBench/tree/main). A download of that dataset
(``huggingface_hub.snapshot_download(repo_id="BaiLing/RemovalBench", repo_type="dataset")``) is::

    ROOT/images/<name>.png   the photo with the object (input)
    ROOT/masks/<name>.png    the object mask (white = object to remove)
    ROOT/gt/<name>.png       the real photo of the scene without the object (ground truth)
    ROOT/results_*/...       the authors' own outputs (e.g. results_omnieraser_base/), ignored here

The three folders hold one file per example under the same file name. The folder names and the
pairing by identical file name are those of the independent loaders of this dataset indexed by the
search tools (which download ``images/*.png``, ``masks/*.png``, ``gt/*.png`` and pair the files by
name); about 70 pairs, whose ground truth also removes the object's shadow and reflection (the
paper), so the mask covers the object only.

Files are matched by name without extension (any of IMAGE_SUFFIXES, any letter case); keys are the
names in natural order (``2`` before ``10``). The benchmark names no object classes, so the meta
holds ``"source"`` only. A name missing from ``gt/`` keeps the pair without a target, flagged
``"target_missing"``; a missing mask, an unreadable file, a size mismatch and an empty mask are
skips, as in :mod:`magiceraser.evaluation.pairs.folders`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from magiceraser.evaluation.pairs import PairOrSkip
from magiceraser.evaluation.pairs.folders import image_files, iter_matched_by_name
from magiceraser.imageio import IMAGE_SUFFIXES

_LAYOUT = "ROOT/images/<name>.png, ROOT/masks/<name>.png, ROOT/gt/<name>.png (BaiLing/RemovalBench as downloaded)"


def iter_removalbench(root: str | Path) -> Iterator[PairOrSkip]:
    """RemovalBench pairs in natural order of name (see the module docstring for the layout)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"RemovalBench root {root} does not exist: point dataset.path at the download, {_LAYOUT}")
    images, masks, gt = root / "images", root / "masks", root / "gt"
    missing = [f"{d.name}/" for d in (images, masks, gt) if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"RemovalBench at {root} lacks {', '.join(missing)}: expected {_LAYOUT}")
    inputs = image_files(images)
    if not inputs:
        raise FileNotFoundError(f"no images in {images} (suffixes {', '.join(IMAGE_SUFFIXES)}): expected {_LAYOUT}")
    yield from iter_matched_by_name(inputs, masks, gt)
