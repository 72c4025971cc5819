"""Full-resolution geometry of the eraser: regions, crops, resizing and feathered pasting.

The diffusion model works at a fixed size (512 px for SD 1.5). An input of any size is handled
by cropping around each masked region with context, resizing the crop so that its long side is
the model size (both sides multiples of 64, so every UNet level divides evenly), erasing there,
resizing back and pasting with a feathered edge that lies entirely inside the dilated mask: every
pixel outside the dilated mask is returned bit-identical.

Several masked regions: the dilated mask's connected components are grouped so that components
whose crops overlap share one crop; each group is erased in its own crop, one after the other on
the evolving image (a far-apart region keeps the detail of its own crop instead of being shrunk
into one crop covering everything). Components smaller than ``min_region_area`` px can be dropped
first (:func:`drop_small_regions`) and the number of crops capped at ``max_regions``
(:func:`plan_regions`): each crop costs a full diffusion run, so a speckled mask must not cost hundreds.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Box", "region_boxes", "plan_regions", "RegionPlan", "drop_small_regions", "SmallRegions", "crop_box", "model_shape", "resize_image", "resize_mask", "feather_alpha", "paste"]

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


@dataclass(frozen=True)
class SmallRegions:
    """What :func:`drop_small_regions` removed: how many components and how many pixels."""

    count: int
    pixels: int


def drop_small_regions(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, SmallRegions]:
    """``mask`` without its 8-connected components of fewer than ``min_area`` px, and what was dropped.

    Specks (mask noise, JPEG ringing of a thresholded mask) would otherwise each cost a full
    diffusion run in a crop of their own; they are counted so that the drop is never silent.
    """
    mask = mask.astype(bool)
    if min_area <= 1 or not mask.any():
        return mask, SmallRegions(0, 0)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(areas < min_area) + 1
    if small.size == 0:
        return mask, SmallRegions(0, 0)
    keep = mask & ~np.isin(comp, small)
    return keep, SmallRegions(int(small.size), int(areas[small - 1].sum()))


@dataclass
class RegionPlan:
    """The crops one image is erased in, with how the grouping came about (for reports and warnings)."""

    crops: list[tuple[Box, np.ndarray]]  # (crop box, the part of the mask it erases), top-left first
    components: int  # connected components of the mask
    merged_for_cap: int  # groups folded into a neighbour to stay within max_regions


@dataclass
class _Group:
    box: Box  # bounding box of the group's pixels
    labels: list[int]  # component labels (a full-size mask per group would cost H×W bytes each)
    area: int


def _merge_overlapping(groups: list[_Group], shape: tuple[int, int], margin: float, min_size: int) -> list[_Group]:
    """Merge groups whose crops overlap until no two do (each masked pixel then lies in one crop only)."""
    changed = True
    while changed:
        changed = False
        i = 0
        while i < len(groups):
            crop_i = crop_box(groups[i].box, shape, margin, min_size)
            j = i + 1
            while j < len(groups):
                if crop_i.overlaps(crop_box(groups[j].box, shape, margin, min_size)):
                    groups[i] = _union(groups[i], groups.pop(j))
                    crop_i = crop_box(groups[i].box, shape, margin, min_size)
                    changed = True
                    j = i + 1  # the crop grew: earlier non-overlapping groups may overlap now
                else:
                    j += 1
            i += 1
    return groups


def _union(a: _Group, b: _Group) -> _Group:
    return _Group(a.box.union(b.box), a.labels + b.labels, a.area + b.area)


def _box_area(box: Box) -> int:
    return box.width * box.height


def _fold_smallest(groups: list[_Group]) -> list[_Group]:
    """Merge the group with the fewest pixels into the neighbour whose joint box grows least."""
    small = min(range(len(groups)), key=lambda k: groups[k].area)
    g = groups.pop(small)
    best = min(range(len(groups)), key=lambda k: _box_area(groups[k].box.union(g.box)) - _box_area(groups[k].box))
    groups[best] = _union(groups[best], g)
    return groups


def plan_regions(mask: np.ndarray, margin: float, min_size: int = 0, max_regions: int | None = None) -> RegionPlan:
    """Crops (with the part of ``mask`` each one erases) for the mask's separate regions.

    Connected components whose crops overlap are merged into one group until no two crops overlap,
    so each masked pixel belongs to exactly one crop. With ``max_regions``, while there are more
    groups than that the smallest one is merged into its nearest neighbour (the one whose box grows
    least), so the cost per image is bounded: every crop is a full diffusion run. Ordered top-left first.
    """
    if max_regions is not None and max_regions < 1:
        raise ValueError(f"max_regions must be >= 1 or None, got {max_regions}")
    n, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    groups = [
        _Group(Box(int(x), int(y), int(x + w), int(y + h)), [i], int(a))
        for i, (x, y, w, h, a) in enumerate(stats[1:], start=1)
    ]
    groups = _merge_overlapping(groups, mask.shape, margin, min_size)
    folded = 0
    while max_regions is not None and len(groups) > max_regions:
        groups = _merge_overlapping(_fold_smallest(groups), mask.shape, margin, min_size)
        folded += 1
    crops = [(crop_box(g.box, mask.shape, margin, min_size), np.isin(comp, g.labels)) for g in groups]
    crops.sort(key=lambda t: (t[0].y0, t[0].x0))
    return RegionPlan(crops, n - 1, folded)


def region_boxes(mask: np.ndarray, margin: float, min_size: int = 0, max_regions: int | None = None) -> list[tuple[Box, np.ndarray]]:
    """The crops of :func:`plan_regions` (kept for callers that need only the crops)."""
    return plan_regions(mask, margin, min_size, max_regions).crops


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
