"""Panoptic segments for clients, and masks built from class names, as pure functions.

``POST /api/segment`` answers with :func:`segments_payload` so a page can select an object by
clicking it; ``classes=person,car`` (API and ``magiceraser erase --classes``) erases
:func:`class_mask`: every thing segment of those classes, dilated.

RLE format (``"rle"`` of a segment): ``{"size": [h, w], "counts": [n0, n1, n2, ...]}``, run lengths
over the mask in row-major order (x fastest), starting with a run of 0s (which may be 0 long) and
alternating. Row-major so a browser can fill an ImageData buffer in one pass; COCO's RLE is
column-major and is not what a canvas wants.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from magiceraser import coco
from magiceraser.panoptic import PanopticResult, Segment, dilate

__all__ = ["THING_NAMES", "parse_class_names", "rle_encode", "rle_decode", "segment_bbox", "segments_payload", "ClassMask", "class_mask"]

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


def rle_encode(mask: np.ndarray) -> dict[str, list[int]]:
    """Row-major run lengths of a bool mask, first run = 0s (see the module docstring)."""
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict[str, list[int]]) -> np.ndarray:
    """Inverse of :func:`rle_encode`."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, not {h}x{w} = {h * w}")
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape(h, w)


def segment_bbox(mask: np.ndarray) -> list[int]:
    """[x0, y0, x1, y1] (x1, y1 exclusive) of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _png_b64(mask: np.ndarray) -> str:
    from magiceraser.imageio import encode_image

    return base64.b64encode(encode_image(mask.astype(np.uint8) * 255, "png")).decode("ascii")


def segments_payload(pan: PanopticResult, mask_format: str = "rle") -> list[dict[str, object]]:
    """One dict per segment: id, class name, is_thing, area, bbox, score and its mask (``rle`` or ``png`` base64)."""
    if mask_format not in ("rle", "png"):
        raise ValueError(f"mask_format must be 'rle' or 'png', got {mask_format!r}")
    out: list[dict[str, object]] = []
    for s in pan.segments:
        m = pan.mask_of(s.id)
        if not m.any():
            continue
        item: dict[str, object] = {
            "id": s.id, "class": s.name, "is_thing": s.isthing, "area": int(m.sum()), "bbox": segment_bbox(m),
            "score": round(float(s.score), 4),
        }
        item["rle" if mask_format == "rle" else "mask_png"] = rle_encode(m) if mask_format == "rle" else _png_b64(m)
        out.append(item)
    return out


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
