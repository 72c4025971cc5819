"""Compose one OLRD sample: shift a segmented thing onto background stuff and blend it in.

Pure numpy/OpenCV over arrays (docs/method.md part 1), no I/O and no Ray:

1. Eligible objects: thing segments whose area lies in ``[min_object_area, max_object_area]`` of
   the image and which are not cut by the image border (no pixel in the outer ``border_margin`` rows
   or columns).
2. Valid offsets, all at once: the object's mask M is cross-correlated with the background-stuff
   mask B and the thing mask T (``cv2.matchTemplate``, DFT-based for large masks). At a top-left
   position p the correlation is the number of mask pixels landing on B (resp. T), so every
   position with ``corr_B >= min_background_share * |M|`` and ``corr_T <= max_thing_overlap * |M|``
   is valid, and "inside the image" is the correlation's valid range. For images larger than
   ``search_max_side`` the search samples every f-th pixel (a stride-f grid of offsets, f the
   smallest factor that brings the long side under ``search_max_side``) and each chosen offset is
   re-checked exactly at full resolution before it is used.
3. A random generator seeded from the sample key and the global seed (:func:`rng_for`) picks the
   object and the offset, so the same input and seed give the same sample.
4. Blend (docs/method.md, Eq. 10): Ĩ = m̃·õ + (1 − m̃)·I with the binary shifted mask m̃; the
   original object stays where it was.
5. Tags: background stuff classes under m̃, largest area first.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from magiceraser import coco
from magiceraser.panoptic import PanopticResult, label_lut, tags_of_labels

# Skip reasons raised by compose (stable codes, recorded in skipped.jsonl).
NO_THING = "no_thing_object"
NO_ELIGIBLE = "no_eligible_object"
NO_PLACEMENT = "no_valid_placement"


class ComposeSkip(Exception):
    """No sample can be composed from this image; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


@dataclass
class ComposeConfig:
    """Object choice, placement search and blending of the compose stage."""

    min_object_area: float = 0.01
    """Smallest eligible object, as a fraction of the image area."""
    max_object_area: float = 0.2
    """Largest eligible object, as a fraction of the image area."""
    border_margin: int = 1
    """An object with a pixel within this many pixels of the border counts as cut by it."""
    min_background_share: float = 0.95
    """Share of the shifted mask's pixels that must land on background stuff."""
    max_thing_overlap: float = 0.02
    """Largest share of the shifted mask's pixels that may land on thing pixels."""
    search_max_side: int = 160
    """Search offsets on masks sampled down to at most this long side (exact re-check at full size)."""
    max_verify: int = 32
    """Candidate offsets re-checked at full resolution per object before trying another object."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_object_area <= self.max_object_area <= 1.0:
            raise ValueError(
                f"compose.min_object_area/max_object_area must satisfy 0 < min <= max <= 1, got "
                f"{self.min_object_area}, {self.max_object_area}"
            )
        if self.border_margin < 0:
            raise ValueError(f"compose.border_margin must be >= 0, got {self.border_margin}")
        if not 0.0 <= self.min_background_share <= 1.0:
            raise ValueError(f"compose.min_background_share must be in [0, 1], got {self.min_background_share}")
        if not 0.0 <= self.max_thing_overlap <= 1.0:
            raise ValueError(f"compose.max_thing_overlap must be in [0, 1], got {self.max_thing_overlap}")
        if self.search_max_side < 16:
            raise ValueError(f"compose.search_max_side must be >= 16, got {self.search_max_side}")
        if self.max_verify < 1:
            raise ValueError(f"compose.max_verify must be >= 1, got {self.max_verify}")


@dataclass
class Composed:
    blended: np.ndarray  # (H, W, 3) uint8, Ĩ
    mask: np.ndarray  # (H, W) bool, m̃
    object_label: int  # contiguous COCO panoptic label of o
    object_bbox: tuple[int, int, int, int]  # [x0, y0, x1, y1), x1/y1 exclusive
    offset: tuple[int, int]  # (dx, dy)
    target_bbox: tuple[int, int, int, int]  # object_bbox shifted by offset
    tags: list[str] = field(default_factory=list)  # background stuff under m̃, largest first

    @property
    def object_class(self) -> str:
        return coco.COCO_PANOPTIC[self.object_label].name


def rng_for(key: str, seed: int) -> np.random.Generator:
    """Generator seeded from the sample key and the global seed (independent of run order)."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


_THING_LUT = label_lut(coco.THING_LABELS)
_BACKGROUND_LUT = label_lut(coco.BACKGROUND_LABELS)


def _shortlist(pan: PanopticResult, cfg: ComposeConfig, sampled: np.ndarray | None = None) -> list[int]:
    """Thing ids not cut by the border whose area, estimated on the pixels the offset search
    samples, is within 2x of the eligible range (sorted): cheap at any size, and a superset of
    the eligible ids, whose exact areas :func:`_eligible_mask` counts. ``sampled``: the map
    sampled on the search grid, if the caller has it.
    """
    seg = pan.segment_map
    h, w = seg.shape
    things = [s for s in pan.segments if s.isthing]
    if not things:
        raise ComposeSkip(NO_THING, "the segmentation has no thing (object) segment")
    f = search_scale((h, w), cfg)
    top = max(s.id for s in things) + 1
    seg_s = seg[::f, ::f] if sampled is None else sampled
    approx = np.bincount(seg_s.ravel(), minlength=top)[:top] * float(f * f)
    b = cfg.border_margin
    on_border = np.zeros(top, dtype=bool)
    if b > 0:
        ring = np.concatenate([seg[:b].ravel(), seg[-b:].ravel(), seg[:, :b].ravel(), seg[:, -b:].ravel()])
        on_border = np.bincount(ring, minlength=top)[:top] > 0
    lo, hi = cfg.min_object_area * h * w, cfg.max_object_area * h * w
    return sorted(s.id for s in things if not on_border[s.id] and lo / 2 <= approx[s.id] <= 2 * hi)


def _eligible_mask(seg: np.ndarray, seg_id: int, cfg: ComposeConfig) -> np.ndarray | None:
    """The segment's full-resolution mask if its exact area is eligible, else None."""
    m = seg == seg_id
    area = np.count_nonzero(m)
    return m if cfg.min_object_area * seg.size <= area <= cfg.max_object_area * seg.size else None


def _correlate(image_mask: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Valid-mode cross-correlation: out[y, x] = sum(template * image_mask[y:y+h, x:x+w])."""
    return cv2.matchTemplate(image_mask.astype(np.float32, copy=False), template.astype(np.float32), cv2.TM_CCORR)


def _valid_grid(
    obj_s: np.ndarray, bg_s: np.ndarray, th_s: np.ndarray, scale: int, full_shape: tuple[int, int],
    obj_shape: tuple[int, int], cfg: ComposeConfig,
) -> np.ndarray:
    """Bool grid over positions on the stride-``scale`` grid: True where the placement passes.

    ``obj_s``/``bg_s``/``th_s`` are the object crop and the image masks sampled every ``scale``
    pixels (``[::scale, ::scale]``): template pixel (i, j) placed at grid position (u, v) is image
    pixel ((v+i)·scale, (u+j)·scale), so the correlation counts sampled pixels exactly, and with
    scale 1 it counts every pixel (the exact set of valid offsets). Entry [v, u] is the top-left
    position (u·scale, v·scale); the grid is cut to positions where the whole full-resolution
    crop fits in the image.
    """
    h, w = obj_shape
    H, W = full_shape
    if h > H or w > W or obj_s.shape[0] > bg_s.shape[0] or obj_s.shape[1] > bg_s.shape[1]:
        return np.zeros((0, 0), bool)
    area = float(np.count_nonzero(obj_s))
    # Correlations of 0/1 masks are integer counts up to the DFT's float error (far below 0.5):
    # count >= t  <=>  corr >= ceil(t) - 0.5, and count <= t  <=>  corr <= floor(t) + 0.5.
    on_bg = _correlate(bg_s, obj_s)[: (H - h) // scale + 1, : (W - w) // scale + 1]
    on_th = _correlate(th_s, obj_s)[: on_bg.shape[0], : on_bg.shape[1]]
    return (on_bg >= math.ceil(cfg.min_background_share * area) - 0.5) & (
        on_th <= math.floor(cfg.max_thing_overlap * area) + 0.5
    )


def valid_offsets(
    obj: np.ndarray, background: np.ndarray, things: np.ndarray, cfg: ComposeConfig, scale: int = 1
) -> np.ndarray:
    """Top-left positions (x, y) where the object's mask ``obj`` (its bbox crop) may be pasted.

    The positions :func:`compose` searches (it calls :func:`_valid_grid` on the same sampled
    masks), as a list: ``background``/``things`` are full-image bool masks. With ``scale`` 1 this
    is every valid position, exactly; with f > 1 the masks are sampled every f pixels and the
    positions lie on the stride-f grid (candidates, which compose confirms at full resolution).
    Returns an (N, 2) int array of (x, y), in row-major order.
    """
    f = scale
    grid = _valid_grid(obj[::f, ::f], background[::f, ::f], things[::f, ::f], f, background.shape, obj.shape, cfg)
    ys, xs = np.nonzero(grid)
    return np.stack([xs * f, ys * f], axis=1).astype(np.int64)


def _placement_ok(under: np.ndarray, area: int, cfg: ComposeConfig) -> bool:
    n_bg = int(np.count_nonzero(_BACKGROUND_LUT[under]))
    n_th = int(np.count_nonzero(_THING_LUT[under]))
    return n_bg >= cfg.min_background_share * area and n_th <= cfg.max_thing_overlap * area


def search_scale(shape: tuple[int, int], cfg: ComposeConfig) -> int:
    """Block size of the offset search: 1 (exact, every offset) up to ``search_max_side``."""
    return max(1, -(-max(shape) // cfg.search_max_side))


def blend(image: np.ndarray, obj: np.ndarray, x0: int, y0: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """Ĩ = m̃·õ + (1 − m̃)·I for a binary mask: copy the object's pixels from (x0, y0) to (x, y)."""
    h, w = obj.shape
    blended = image.copy()
    # In place into the view (OpenCV writes through the slice's strides); many times faster than
    # numpy's masked copy.
    cv2.copyTo(image[y0 : y0 + h, x0 : x0 + w], obj.view(np.uint8), blended[y : y + h, x : x + w])
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[y : y + h, x : x + w] = obj
    return blended, mask


def _segment_label_lut(pan: PanopticResult) -> np.ndarray:
    """Segment id -> label table for ``np.take(lut, ids, mode="clip")``: -1 for unlabelled.

    Sized by the segment list, not by a pass over the map: ids past the last segment clip to the
    final slot and ids below 1 (0 = unlabelled) to slot 0, both -1.
    """
    lut = np.full(max((s.id for s in pan.segments), default=0) + 2, -1, np.int64)
    for s in pan.segments:
        if s.id < 1:
            raise ValueError(f"segment ids must be >= 1 (0 marks unlabelled pixels), got {s.id}")
        lut[s.id] = s.label
    return lut


def compose(image: np.ndarray, pan: PanopticResult, rng: np.random.Generator, cfg: ComposeConfig) -> Composed:
    """Build (Ĩ, m̃, tags, ...) from image I and its panoptic segmentation; raise ComposeSkip."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"compose needs an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    if pan.shape != image.shape[:2]:
        raise ValueError(f"segmentation shape {pan.shape} differs from image shape {image.shape[:2]}")
    seg = pan.segment_map
    H, W = seg.shape
    scale = search_scale((H, W), cfg)
    # The search only ever looks at every scale-th pixel: label just those (cheap at any image size).
    seg_s = np.ascontiguousarray(seg[::scale, ::scale])
    shortlist = _shortlist(pan, cfg, seg_s)
    if not shortlist:
        raise ComposeSkip(NO_ELIGIBLE, "no thing segment has an eligible size away from the image border")
    lut = _segment_label_lut(pan)
    labels_s = np.take(lut, seg_s, mode="clip")
    # As float32 once: the correlation's input type (every object tried reuses them).
    bg_s, th_s = _BACKGROUND_LUT[labels_s].astype(np.float32), _THING_LUT[labels_s].astype(np.float32)
    # Objects are tried in a seeded random order of the shortlist; the exact area check happens
    # as each comes up, so only tried objects pay a full-resolution pass. The first eligible one
    # of a uniform permutation is uniform over the eligible objects.
    n_eligible = 0
    for seg_id in rng.permutation(np.asarray(shortlist, dtype=np.int64)):
        seg_id = int(seg_id)
        m = _eligible_mask(seg, seg_id, cfg)
        if m is None:
            continue
        n_eligible += 1
        x0, y0, w, h = cv2.boundingRect(m.view(np.uint8))
        x1, y1 = x0 + w, y0 + h
        obj = m[y0:y1, x0:x1]
        area = int(np.count_nonzero(obj))
        ok = _valid_grid(obj[::scale, ::scale], bg_s, th_s, scale, (H, W), (h, w), cfg)
        offsets = np.flatnonzero(ok)  # row-major, as valid_offsets lists them
        if len(offsets) == 0:
            continue
        # Up to max_verify distinct candidates in random order (O(max_verify), not O(len(offsets))).
        for i in rng.choice(len(offsets), size=min(cfg.max_verify, len(offsets)), replace=False):
            v, u = divmod(int(offsets[i]), ok.shape[1])
            x, y = u * scale, v * scale
            under = np.take(lut, seg[y : y + h, x : x + w], mode="clip")[obj]  # labels under m̃
            if not _placement_ok(under, area, cfg):  # exact, full resolution
                continue
            blended, mask = blend(image, obj, x0, y0, x, y)
            return Composed(
                blended=blended,
                mask=mask,
                object_label=int(lut[seg_id]),
                object_bbox=(x0, y0, x1, y1),
                offset=(x - x0, y - y0),
                target_bbox=(x, y, x + w, y + h),
                tags=tags_of_labels(under),
            )
    if n_eligible == 0:
        raise ComposeSkip(NO_ELIGIBLE, "no thing segment has an eligible size away from the image border")
    raise ComposeSkip(
        NO_PLACEMENT,
        f"no offset puts any of {n_eligible} eligible object(s) on >= {cfg.min_background_share:.0%} "
        f"background stuff with <= {cfg.max_thing_overlap:.0%} overlap with objects",
    )
