"""Panoptic segments for clients, as pure functions.

``POST /api/segment`` answers with :func:`segments_payload` so a page can select an object by
clicking it (masks built from class names are :mod:`magiceraser.class_masks`).

RLE format (``"rle"`` of a segment): ``{"size": [h, w], "counts": [n0, n1, n2, ...]}``, run lengths
over the mask in row-major order (x fastest), starting with a run of 0s (which may be 0 long) and
alternating. Row-major so a browser can fill an ImageData buffer in one pass; COCO's RLE is
column-major and is not what a canvas wants.
"""

from __future__ import annotations

import base64

import numpy as np

from magiceraser.panoptic import PanopticResult

__all__ = ["rle_encode", "rle_decode", "segment_bbox", "segments_payload"]

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
