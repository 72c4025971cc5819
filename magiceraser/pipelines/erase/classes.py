"""``magiceraser erase --classes person,car``: the mask of an image built from its panoptic segmentation.

The same rule as the service's ``classes=`` (:func:`magiceraser.class_masks.class_mask`): every
thing segment of the named classes, grown by ``dilation`` px; the full-image segmentation is then
handed to the pipeline (``pan=``), so each crop's tag and refocus labels come from the same
segmentation that chose the objects. What was erased (segment id, class, area, score) is returned
for the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from magiceraser.class_masks import class_mask
from magiceraser.panoptic import PanopticResult

__all__ = ["ClassSelection", "NoClassFound", "select_classes"]


class NoClassFound(ValueError):
    """None of the requested classes was found in the image."""


@dataclass
class ClassSelection:
    mask: np.ndarray  # bool HxW, dilated
    pan: PanopticResult  # the full-image segmentation it came from
    segments: list[dict[str, Any]]  # the erased segments, for the report


def select_classes(segmenter, image: np.ndarray, classes: tuple[str, ...], dilation: int) -> ClassSelection:
    """Segment ``image`` and build the mask of ``classes``; NoClassFound (naming what was found) when none is there."""
    pan = segmenter.segment([image])[0]
    cm = class_mask(pan, classes, dilation)
    if not cm.segments:
        found = sorted({s.name for s in pan.segments if s.isthing})
        raise NoClassFound(
            f"no {' or '.join(classes)} found in the image"
            + (f" (objects found: {', '.join(found)})" if found else " (the segmenter found no objects)")
        )
    segments = [{"id": s.id, "class": s.name, "area": s.area, "score": round(float(s.score), 4)} for s in cm.segments]
    return ClassSelection(cm.mask, pan, segments)
