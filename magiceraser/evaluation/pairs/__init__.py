"""Evaluation pair readers: (input with the object, erase mask, ground truth without it), one module per source.

Every reader yields :class:`EvalPair` at the source's own resolution (the run letterboxes them)
and reports items it cannot use as :class:`PairSkip` records (key + reason) instead of stopping:

    realhm.py         RealHM (SSH, ICCV 2021), re-packed folders or the archive as distributed
    olrd_shards.py    any OLRD WebDataset shard set, read through ``magiceraser.olrd_samples``
    coco_panoptic.py  OLRD pairs composed from COCO panoptic ground truth
    openimages.py     OLRD pairs composed from OpenImages instance masks (and the panoptic input
                      ``compose`` needs, built from them)
    composed.py       what the two composed sources share: the seeded image order, one compose call
    rorem.py          RORem's test set (source/ mask/ [GT/], meta.json; no ground truth as released)
    removalbench.py   OmniEraser's RemovalBench (images/ masks/ gt/)
    folders.py        plain input/ mask/ [target/] folders (no target: reference-free metrics only);
                      its matching-by-name helpers are shared with the two readers above

This package is the evaluation's reader of datasets; ``magiceraser.datasets`` is the data engine
that *builds* OLRD shards. The types live here so that every reader and the run share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EvalPair", "PairOrSkip", "PairSkip", "check_pair"]


@dataclass
class EvalPair:
    key: str  # unique within the dataset; a file name (magiceraser.keys.file_name_key)
    image: np.ndarray  # HxWx3 uint8 input containing the object
    mask: np.ndarray  # bool HxW, True = erase
    target: np.ndarray | None  # HxWx3 uint8 ground truth without the object; None: the benchmark has none
                               # (the pair is then scored by the reference-free metrics only)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PairSkip:
    key: str
    reason: str
    detail: str = ""


PairOrSkip = EvalPair | PairSkip


def check_pair(key: str, image: np.ndarray, mask: np.ndarray, target: np.ndarray | None, meta: dict | None = None) -> PairOrSkip:
    """An EvalPair, or a skip record when shapes disagree or the mask is empty (``target`` None: no ground truth)."""
    if target is not None and image.shape != target.shape:
        return PairSkip(key, "size_mismatch", f"input {image.shape[:2]} vs ground truth {target.shape[:2]}")
    if mask.shape != image.shape[:2]:
        return PairSkip(key, "size_mismatch", f"mask {mask.shape} vs image {image.shape[:2]}")
    if not mask.any():
        return PairSkip(key, "empty_mask", "the mask selects no pixel")
    return EvalPair(key, image, mask, target, dict(meta or {}))
