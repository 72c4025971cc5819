"""Erasing by class name: which names an object class may have, and the mask of the objects of those classes.

Shared by ``magiceraser erase --classes`` and the service's ``classes=`` field, and below both:
the eraser and the service import it, it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magiceraser import coco
from magiceraser.panoptic import PanopticResult, Segment, dilate

__all__ = ["THING_NAMES", "parse_class_names", "ClassMask", "class_mask"]

#: Class names a ``classes`` list may name: the COCO panoptic thing classes (objects one can erase).
THING_NAMES: tuple[str, ...] = tuple(c.name for c in coco.COCO_PANOPTIC if c.isthing)
# Stuff classes by their name and by their plain words (sky-other-merged is also "sky").
_STUFF_LOWER = frozenset(n.lower() for c in coco.COCO_PANOPTIC if not c.isthing for n in (c.name, coco.tag_text(c.name)))


def parse_class_names(text: str | None) -> tuple[str, ...]:
    """``"person, car"`` -> ("person", "car"): COCO thing class names, case-insensitive, duplicates dropped.

    ValueError for an unknown name, for a stuff class (sky, grass-merged: the background an object
    is erased into) and for a list naming nothing. Empty or None text gives ().
    """
    if text is None or not text.strip():
        return ()
    by_lower = {n.lower(): n for n in THING_NAMES}
    names: list[str] = []
    for raw in text.split(","):
        word = raw.strip()
        if not word:
            continue
        name = by_lower.get(word.lower())
        if name is None:
            if word.lower() in _STUFF_LOWER:
                raise ValueError(f"{word!r} is a background (stuff) class, not an object; name thing classes such as person or car")
            raise ValueError(f"unknown class {word!r}; known classes: {', '.join(THING_NAMES)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"classes {text!r} names no class; give e.g. person,car")
    return tuple(names)



@dataclass
class ClassMask:
    """The mask built for ``classes=...``: what to erase and which segments it came from."""

    mask: np.ndarray  # bool HxW, dilated
    segments: list[Segment]  # the thing segments erased, in segment-id order
    missing: tuple[str, ...]  # requested classes with no segment in the image


def class_mask(pan: PanopticResult, classes: tuple[str, ...] | list[str], dilation: int) -> ClassMask:
    """Union of every thing segment whose class is in ``classes``, grown by ``dilation`` px.

    Stuff segments never match (they are what an object is erased into). The result may be empty
    (no such object in the image); the caller decides whether that is an error.
    """
    wanted = set(classes)
    chosen = sorted((s for s in pan.segments if s.isthing and s.name in wanted), key=lambda s: s.id)
    mask = np.isin(pan.segment_map, [s.id for s in chosen]) if chosen else np.zeros(pan.shape, bool)
    found = {s.name for s in chosen}
    return ClassMask(dilate(mask, dilation) if chosen else mask, chosen, tuple(c for c in classes if c not in found))
