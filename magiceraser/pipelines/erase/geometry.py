"""Full-resolution geometry of the eraser: regions, crops, resizing and feathered pasting.

The diffusion model works at a fixed size (512 px for SD 1.5). An input of any size is handled
by cropping around each masked region with context, resizing the crop so that its long side is
the model size (both sides multiples of 64, so every UNet level divides evenly), erasing there,
resizing back and pasting with a feathered edge that lies entirely inside the dilated mask: every
pixel outside the dilated mask is returned bit-identical.

Several masked regions: the dilated mask's connected components are grouped so that components
whose crops overlap share one crop; each group is erased in its own crop, one after the other on
the evolving image (a far-apart region keeps the detail of its own crop instead of being shrunk
into one crop covering everything).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Box", "region_boxes", "crop_box", "model_shape", "resize_image", "resize_mask", "feather_alpha", "paste"]

SIZE_MULTIPLE = 64  # 8x VAE downsampling times 8x UNet downsampling (SD 1.5)


@dataclass(frozen=True)
class Box:
    """Half-open pixel box [x0, x1) × [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def overlaps(self, other: Box) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def union(self, other: Box) -> Box:
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def bbox_of(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def crop_box(bbox: Box, image_shape: tuple[int, int], margin: float, min_size: int = 0) -> Box:
    """A square-as-possible crop around ``bbox`` with ``margin`` (fraction of its long side) of context.

    The crop is centred on the box, at least ``min_size`` px on a side where the image allows, and
    shifted (not shrunk) to stay inside the image; a side longer than the image is clamped to it.
    """
    h, w = image_shape
    side = max(bbox.width, bbox.height)
    side = max(int(np.ceil(side * (1.0 + 2.0 * margin))), min_size)
    cw, ch = min(max(side, bbox.width), w), min(max(side, bbox.height), h)
    cx, cy = (bbox.x0 + bbox.x1) / 2.0, (bbox.y0 + bbox.y1) / 2.0
    x0 = int(np.clip(round(cx - cw / 2.0), 0, w - cw))
    y0 = int(np.clip(round(cy - ch / 2.0), 0, h - ch))
    return Box(x0, y0, x0 + cw, y0 + ch)


def region_boxes(mask: np.ndarray, margin: float, min_size: int = 0) -> list[tuple[Box, np.ndarray]]:
    """Crops (with the part of ``mask`` each one erases) for the mask's separate regions.

    Connected components whose crops overlap are merged into one group until no two crops overlap,
    so each masked pixel belongs to exactly one crop. Ordered top-left first.
    """
    n, comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    groups: list[tuple[Box, np.ndarray]] = []
    for i in range(1, n):
        part = comp == i
        groups.append((bbox_of(part), part))
    merged = True
    while merged:
        merged = False
        crops = [crop_box(b, mask.shape, margin, min_size) for b, _ in groups]
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if crops[a].overlaps(crops[b]):
                    (ba, ma), (bb, mb) = groups[a], groups[b]
                    groups[a] = (ba.union(bb), ma | mb)
                    del groups[b]
                    merged = True
                    break
            if merged:
                break
    out = [(crop_box(b, mask.shape, margin, min_size), m) for b, m in groups]
    out.sort(key=lambda t: (t[0].y0, t[0].x0))
    return out


def model_shape(crop_h: int, crop_w: int, model_size: int) -> tuple[int, int]:
    """(h, w) the crop is resized to: long side ``model_size``, aspect kept, multiples of 64."""
    if model_size % SIZE_MULTIPLE:
        raise ValueError(f"model_size must be a multiple of {SIZE_MULTIPLE}, got {model_size}")
    scale = model_size / max(crop_h, crop_w)

    def snap(x: int) -> int:
        return int(min(model_size, max(SIZE_MULTIPLE, round(x * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE)))

    return snap(crop_h), snap(crop_w)


def resize_image(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize HxWx3 uint8 to ``shape`` = (h, w): area averaging to shrink, bicubic to enlarge."""
    h, w = shape
    if img.shape[:2] == (h, w):
        return img.copy()
    shrink = h * w < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask conservatively: a target pixel is masked if any of its area is."""
    h, w = shape
    if mask.shape == (h, w):
        return mask.copy()
    cover = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    near = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return (cover > 0) | near


def feather_alpha(erase: np.ndarray, core: np.ndarray, feather: int) -> np.ndarray:
    """Blend weight in [0, 1]: 1 on ``core`` (the user's mask), 0 outside ``erase`` (the dilated mask).

    In between it ramps with the distance to the outside of ``erase`` over ``feather`` px, so the
    seam is soft yet every pixel outside ``erase`` keeps weight exactly 0.
    """
    erase = erase.astype(bool)
    if feather <= 0:
        return erase.astype(np.float32)
    dist = cv2.distanceTransform(erase.astype(np.uint8), cv2.DIST_L2, 5)
    alpha = np.clip(dist / float(feather), 0.0, 1.0).astype(np.float32)
    alpha[core.astype(bool)] = 1.0
    alpha[~erase] = 0.0
    return alpha


def paste(base: np.ndarray, patch: np.ndarray, box: Box, alpha: np.ndarray) -> np.ndarray:
    """``base`` with ``patch`` blended into ``box`` by ``alpha``; pixels with alpha 0 are copied exactly."""
    out = base.copy()
    sl = box.slices()
    region = out[sl]
    a = alpha[..., None]
    blended = np.clip(np.rint(a * patch.astype(np.float32) + (1.0 - a) * region.astype(np.float32)), 0, 255).astype(np.uint8)
    keep = alpha > 0
    region[keep] = blended[keep]
    return out
