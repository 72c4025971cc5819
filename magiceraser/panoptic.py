"""Panoptic segmentation results and the pure functions the whole system derives from them.

A :class:`PanopticResult` is what every segmentation backend returns (Mask2Former, COCO panoptic
ground truth): a per-pixel segment-id map plus one :class:`Segment` per id, labelled in the
contiguous COCO panoptic label space of :mod:`magiceraser.coco`. Segment id 0 means "no segment".

Pure functions here serve the data engine (eligible objects, background stuff, tags), the eraser
(tag around the mask, refocus labels) and the evaluation (re-generation rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from magiceraser import coco

# Refocus labels (docs/method.md, "Attention refocus"): 0 = inside the erase mask, 1 = positive
# (outside the mask, background stuff), 2 = negative (everything else).
LABEL_MASK, LABEL_POS, LABEL_NEG = 0, 1, 2


@dataclass(frozen=True)
class Segment:
    id: int  # value in ``PanopticResult.segment_map``; > 0
    label: int  # contiguous COCO panoptic label, 0..132
    area: int = 0
    score: float = 1.0

    @property
    def isthing(self) -> bool:
        return self.label in coco.THING_LABELS

    @property
    def name(self) -> str:
        return coco.COCO_PANOPTIC[self.label].name


@dataclass
class PanopticResult:
    segment_map: np.ndarray  # (H, W) int32, 0 = unlabelled
    segments: list[Segment] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.segment_map.ndim != 2:
            raise ValueError(f"segment_map must be 2-D (H, W), got shape {self.segment_map.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.segment_map.shape  # type: ignore[return-value]

    def label_map(self, unlabelled: int = -1) -> np.ndarray:
        """Per-pixel COCO panoptic label (``unlabelled`` where no segment)."""
        lut_size = int(self.segment_map.max(initial=0)) + 1
        lut = np.full(lut_size, unlabelled, dtype=np.int32)
        for s in self.segments:
            if s.id < lut_size:
                lut[s.id] = s.label
        return lut[self.segment_map]

    def mask_of(self, segment_id: int) -> np.ndarray:
        return self.segment_map == segment_id


class PanopticSegmenter(Protocol):
    """Anything that labels images panoptically (Mask2Former, ground-truth annotations)."""

    model_id: str

    def segment(self, images: list[np.ndarray]) -> list[PanopticResult]:
        """Segment a batch of HxWx3 uint8 RGB images."""
        ...


def label_lut(labels: frozenset[int]) -> np.ndarray:
    """Bool lookup table over labels: ``label_lut(s)[label_map]`` marks pixels whose label is in ``s``.

    It has one slot past the last class, so the unlabelled value -1 indexes it (False).
    """
    lut = np.zeros(coco.NUM_CLASSES + 1, dtype=bool)
    lut[list(labels)] = True
    return lut


def _label_set_mask(label_map: np.ndarray, labels: frozenset[int]) -> np.ndarray:
    return label_lut(labels)[label_map]


def thing_mask(pan: PanopticResult) -> np.ndarray:
    """Pixels covered by any thing segment."""
    return _label_set_mask(pan.label_map(), coco.THING_LABELS)


def background_mask(pan: PanopticResult, background_labels: frozenset[int] = coco.BACKGROUND_LABELS) -> np.ndarray:
    """Pixels labelled as background stuff."""
    return _label_set_mask(pan.label_map(), background_labels)


def background_tags(
    pan: PanopticResult, region: np.ndarray, background_labels: frozenset[int] = coco.BACKGROUND_LABELS
) -> list[str]:
    """Background stuff class names under ``region`` (bool HxW), largest area first, ties by name."""
    return tags_of_labels(pan.label_map()[region], background_labels)


def tags_of_labels(labels: np.ndarray, background_labels: frozenset[int] = coco.BACKGROUND_LABELS) -> list[str]:
    """Background stuff class names among per-pixel ``labels`` (-1 = unlabelled), largest count first, ties by name."""
    labels = labels[labels >= 0]
    if labels.size == 0:
        return []
    counts = np.bincount(labels, minlength=coco.NUM_CLASSES)
    counts[~label_lut(background_labels)[: counts.size]] = 0
    present = [(int(counts[i]), coco.COCO_PANOPTIC[i].name) for i in np.flatnonzero(counts)]
    present.sort(key=lambda t: (-t[0], t[1]))
    return [name for _, name in present]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)-square structuring element (r = 0 returns a copy)."""
    mask = mask.astype(bool)
    if radius <= 0:
        return mask.copy()
    import cv2

    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def dominant_background_tag(
    pan: PanopticResult,
    mask: np.ndarray,
    ring: int | None = None,
    background_labels: frozenset[int] = coco.BACKGROUND_LABELS,
) -> str | None:
    """The background stuff class covering most of a ring around ``mask`` (docs/method.md, "Prompt tag").

    The ring is the dilated mask minus the mask; its width defaults to 5% of the image's long side
    (at least 3 px). Returns the category name, or None when no background stuff borders the mask.
    """
    mask = mask.astype(bool)
    if ring is None:
        ring = max(3, round(0.05 * max(mask.shape)))
    around = dilate(mask, ring) & ~mask
    tags = background_tags(pan, around, background_labels)
    return tags[0] if tags else None


def refocus_labels(
    mask: np.ndarray, pan: PanopticResult | None, background_labels: frozenset[int] = coco.BACKGROUND_LABELS
) -> np.ndarray:
    """Per-pixel refocus labels (uint8): 0 in the mask, 1 on background stuff outside it, 2 elsewhere.

    Without a segmentation every pixel outside the mask is positive (the refocus then only keeps
    the masked region from attending to itself).
    """
    mask = mask.astype(bool)
    if pan is None:
        labels = np.full(mask.shape, LABEL_POS, np.uint8)
    else:
        if pan.shape != mask.shape:
            raise ValueError(f"segmentation shape {pan.shape} differs from mask shape {mask.shape}")
        labels = np.where(background_mask(pan, background_labels), LABEL_POS, LABEL_NEG).astype(np.uint8)
    labels[mask] = LABEL_MASK
    return labels


def regrowth_fraction(mask: np.ndarray, pan_after: PanopticResult) -> float:
    """Share of ``mask`` pixels covered by a thing segment in the erased image (re-generation rate)."""
    mask = mask.astype(bool)
    n = int(mask.sum())
    if n == 0:
        raise ValueError("regrowth_fraction needs a non-empty mask")
    return float((thing_mask(pan_after) & mask).sum()) / n
