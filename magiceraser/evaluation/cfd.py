"""CFD (Context-Aware Feature Deviation), OmniPaint's reference-free metric of context coherence and
hallucination for object removal (lower is better).

Yu et al. 2025, "OmniPaint"; reference implementation ``yeates/OmniPaint``, ``cfd_score/main.py``.
For one erased image and its mask, every connected component of the mask (8-connectivity, as
``cv2.connectedComponents``; a mask file is binarised at > 127) is scored and the image's CFD is
the mean over components of ``term1 + term2``:

* **Term 1, context coherence.** The component's bounding box is widened by a third of its width
  left and right and a third of its height up and down (clamped to the image); the *ring* is that
  box minus the component. ``term1 = dino(image, component, image, ring)``: how far the DINOv2
  features of the fill are from those of the surroundings.
* **Term 2, hallucination.** Segments of the erased image (filtered as below) that lie wholly inside
  the component are *center* segments (possibly invented objects); those crossing its edge are
  *bound* segments and are cut to the component. For each center segment, the cut bound segments
  adjacent to it (one dilated by a 5x5 square three times, i.e. within Chebyshev distance 6 of the
  other) are merged; both regions are cropped to their bounding rectangles with everything outside
  them painted white, and ``term2 += area(center) / Σ area(all center segments) · dino(bound crop,
  center crop)``. A fill that continues the surrounding segments leaves no center segments, or
  center segments that look like their neighbours: term 2 ≈ 0.
* ``dino(img1, m1, img2, m2)`` (:meth:`CfdScorer.distance`, the reference's ``calc_dinov2_score``):
  each image is resized to 224x224 (PIL's default resampling, bicubic) and goes through the
  checkpoint's own image processor (for facebook/dinov2-giant: short side to 256, center crop 224)
  and DINOv2; every token of ``last_hidden_state`` is L2-normalised; each mask is resized to
  224x224 and then to the patch grid (both nearest); the CLS token and the patch tokens under the
  mask are averaged and the mean L2-normalised; the distance is ``1 - cos(f1, f2)``. As in the
  reference, the processor's resize-and-crop of the already 224x224 image means the patch grid sees
  the central 224/256 of it while the mask grid spans all of it. The grid size is read from the
  model's output (number of patch tokens), not assumed.

Deviations from the reference, all deliberate:

* **Segments** come from the caller (our panoptic segmenter, :func:`panoptic_segments`), not from
  SAM's automatic mask generator. The reference's filter is applied anyway (:func:`filter_segments`:
  by area, largest first; a segment is dropped when its IoU with a kept one is > 0.8 or > 0.9 of
  it lies inside a kept one). It changes nothing for non-overlapping panoptic segments and keeps the
  metric right for any other source.
* **Token alignment.** The reference appends the CLS flag *after* the 256 patch flags while
  ``last_hidden_state`` has the CLS token *first*, so its patch flags select the token one position
  before the intended one. Here the flags are CLS first, then the patch grid in row-major order
  (:func:`pooled_feature`).
* **Term-2 masks.** The reference turns the term-2 crop masks into 8-bit images (0/255): its second
  mask is then resized bicubically, and numpy indexes the tokens *by* the values 0/255 instead of
  selecting with them (the pooled feature becomes a mix of the CLS token and patch token 255). Here
  both masks are resized with nearest neighbour and select tokens as in term 1.
* An empty mask raises ``ValueError`` (the reference divides by zero).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_DINOV2 = "facebook/dinov2-giant"
_PIL_PROCESSOR = "transformers.models.bit.image_processing_pil_bit:BitImageProcessorPil"  # DINOv2 ships a Bit processor
RESIZE = 224  # the reference resizes every image (and mask) to 224x224 before the processor
MASK_THRESHOLD = 127  # a mask file's pixels > 127 are "masked" (cv2.threshold(mask, 127, 255, BINARY))
IOU_THRESHOLD, CONTAIN_THRESHOLD = 0.8, 0.9
DILATE_KERNEL, DILATE_ITERATIONS = 5, 3

Distance = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]

__all__ = [
    "DEFAULT_DINOV2",
    "CfdScorer",
    "adjacent",
    "binarise_mask",
    "cfd_terms",
    "classify_segments",
    "context_ring",
    "crop_masked_region",
    "filter_segments",
    "grid_mask",
    "mask_components",
    "panoptic_segments",
    "pooled_feature",
]


# --- masks and segments -------------------------------------------------------------------------


def binarise_mask(mask: np.ndarray) -> np.ndarray:
    """A bool HxW mask: bool masks as they are, others (a mask file's 0..255) thresholded at > 127."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    return mask if mask.dtype == bool else mask > MASK_THRESHOLD


def mask_components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of ``mask`` as bool masks, in ``cv2.connectedComponents``' label order."""
    import cv2

    mask = binarise_mask(mask)
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == i for i in range(1, count)]


def panoptic_segments(result) -> list[np.ndarray]:
    """The segments of a :class:`magiceraser.panoptic.PanopticResult` as bool masks (CFD's segment list)."""
    return [result.mask_of(s.id) for s in result.segments]


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) with exclusive bottom/right (PIL's ``getbbox``), None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def filter_segments(
    segments: Sequence[np.ndarray],
    iou_threshold: float = IOU_THRESHOLD,
    contain_threshold: float = CONTAIN_THRESHOLD,
) -> list[np.ndarray]:
    """The reference's ``filter_masks``: segments sorted by area (largest first, ties in input order);
    one is dropped when its IoU with an already kept segment is > ``iou_threshold`` or more than
    ``contain_threshold`` of its area lies inside a kept one. Returns the kept masks (bool), largest first.
    """
    masks = [np.asarray(s, dtype=bool) for s in segments]
    areas = [int(m.sum()) for m in masks]
    kept: list[tuple[np.ndarray, int, tuple[int, int, int, int] | None]] = []
    for i in sorted(range(len(masks)), key=lambda k: -areas[k]):
        mask, area, box = masks[i], areas[i], _bbox(masks[i])
        keep = True
        for other, other_area, other_box in kept:
            if box is None or other_box is None:
                continue  # an empty mask overlaps nothing: IoU 0, containment undefined (False)
            top, bottom = max(box[0], other_box[0]), min(box[1], other_box[1])
            left, right = max(box[2], other_box[2]), min(box[3], other_box[3])
            if top >= bottom or left >= right:
                continue  # disjoint boxes: no intersection
            inter = int(np.count_nonzero(mask[top:bottom, left:right] & other[top:bottom, left:right]))
            union = area + other_area - inter
            if inter / union > iou_threshold or inter / area > contain_threshold:
                keep = False
                break
        if keep:
            kept.append((mask, area, box))
    return [m for m, _, _ in kept]


def classify_segments(segments: Sequence[np.ndarray], ref_mask: np.ndarray) -> tuple[list[int], list[int]]:
    """(bound, contained) indices into ``segments``: contained ones lie wholly inside ``ref_mask``
    (an empty segment counts as contained, as ``np.all(seg <= ref)`` says); bound ones are the others
    that overlap it. Segments that miss ``ref_mask`` are in neither list."""
    ref = np.asarray(ref_mask, dtype=bool)
    bound, contained = [], []
    for i, seg in enumerate(segments):
        seg = np.asarray(seg, dtype=bool)
        if not np.any(seg & ~ref):
            contained.append(i)
        elif np.any(seg & ref):
            bound.append(i)
    return bound, contained


def context_ring(ref_mask: np.ndarray) -> np.ndarray:
    """Term 1's context: ``ref_mask``'s bounding box widened by width//3 left/right and height//3
    up/down (clamped to the image), minus ``ref_mask``.

    The reference draws the box with ``ImageDraw.rectangle([left, upper, right, lower])``, whose
    corners are inclusive, from ``getbbox``'s exclusive right/lower edges: the box therefore reaches
    one pixel further right and down than the widened bounding box (when inside the image).
    """
    ref = np.asarray(ref_mask, dtype=bool)
    box = _bbox(ref)
    if box is None:
        raise ValueError("the mask is empty: CFD needs at least one masked pixel")
    top, bottom, left, right = box
    height, width = bottom - top, right - left
    img_h, img_w = ref.shape
    left, right = max(0, left - width // 3), min(img_w, right + width // 3)
    top, bottom = max(0, top - height // 3), min(img_h, bottom + height // 3)
    ring = np.zeros_like(ref)
    ring[top : bottom + 1, left : right + 1] = True  # inclusive corners, as ImageDraw.rectangle
    return ring ^ ref


def adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    """The reference's ``is_adjacent``: ``a`` dilated by a 5x5 square three times touches ``b``, or
    the other way round (both amount to a pixel of each within Chebyshev distance 6)."""
    import cv2

    kernel = np.ones((DILATE_KERNEL, DILATE_KERNEL), np.uint8)
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    a_dilated = cv2.dilate(a.astype(np.uint8), kernel, iterations=DILATE_ITERATIONS).astype(bool)
    if np.any(a_dilated & b):
        return True
    b_dilated = cv2.dilate(b.astype(np.uint8), kernel, iterations=DILATE_ITERATIONS).astype(bool)
    return bool(np.any(b_dilated & a))


def crop_masked_region(mask: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image crop, mask crop) over ``mask``'s bounding rectangle, the image white (255) outside the mask."""
    mask = np.asarray(mask, dtype=bool)
    box = _bbox(mask)
    if box is None:
        raise ValueError("cannot crop an empty mask")
    top, bottom, left, right = box
    result = np.array(image, copy=True)
    result[~mask] = 255
    return result[top:bottom, left:right], mask[top:bottom, left:right]


# --- DINOv2 features ----------------------------------------------------------------------------


def grid_mask(mask: np.ndarray, grid: int) -> np.ndarray:
    """``mask`` resized to RESIZE x RESIZE and then to ``grid`` x ``grid``, both nearest (PIL), as bool."""
    from PIL import Image

    pil = Image.fromarray(np.asarray(mask, dtype=bool))  # mode "1", as the reference's masks
    pil = pil.resize((RESIZE, RESIZE), Image.Resampling.NEAREST).resize((grid, grid), Image.Resampling.NEAREST)
    return np.asarray(pil, dtype=bool)


def pooled_feature(tokens: np.ndarray, grid_mask: np.ndarray) -> np.ndarray:
    """Mean of the L2-normalised CLS token and the patch tokens under ``grid_mask``, L2-normalised.

    ``tokens`` is ``(1 + h*w, D)`` with the CLS token first and the patches in row-major order;
    ``grid_mask`` is ``(h, w)`` (or flat ``h*w``) bool. Computed in float64.
    """
    tokens = np.asarray(tokens, dtype=np.float64)
    flags = np.asarray(grid_mask, dtype=bool).ravel()
    if tokens.ndim != 2 or tokens.shape[0] != 1 + flags.size:
        raise ValueError(f"tokens {tokens.shape} do not fit a CLS token plus a {np.shape(grid_mask)} patch grid")
    tokens = tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)
    feature = tokens[np.concatenate([[True], flags])].mean(axis=0)
    return feature / np.linalg.norm(feature)


def _patch_grid(tokens: np.ndarray) -> int:
    """The side of the square patch grid behind ``(1 + g*g, D)`` tokens."""
    patches = tokens.shape[0] - 1
    side = math.isqrt(max(patches, 0))
    if patches <= 0 or side * side != patches:
        raise ValueError(f"expected a CLS token and a square patch grid, got {tokens.shape[0]} tokens")
    return side


# --- the metric ---------------------------------------------------------------------------------


def cfd_terms(
    image: np.ndarray,
    ref_mask: np.ndarray,
    segments: Sequence[np.ndarray],
    dino: Distance,
    *,
    filtered: bool = False,
) -> tuple[float, float]:
    """(term 1, term 2) of ONE connected mask component: the reference's ``calculate``, split in two.

    ``segments`` are the erased image's segments (bool HxW); they go through :func:`filter_segments`
    unless ``filtered``. ``dino(img1, m1, img2, m2) -> float`` is the feature distance
    (:meth:`CfdScorer.distance`), injectable so the terms can be checked with any distance.
    """
    ref = binarise_mask(ref_mask)
    if not ref.any():
        raise ValueError("the mask is empty: CFD needs at least one masked pixel")
    image = np.asarray(image)
    if image.shape[:2] != ref.shape:
        raise ValueError(f"mask shape {ref.shape} differs from image size {image.shape[:2]}")
    for seg in segments:
        if np.shape(seg) != ref.shape:
            raise ValueError(f"segment shape {np.shape(seg)} differs from mask shape {ref.shape}")
    segs = list(segments) if filtered else filter_segments(segments)
    segs = [np.asarray(s, dtype=bool) for s in segs]

    term1 = float(dino(image, ref, image, context_ring(ref)))

    bound_idx, center_idx = classify_segments(segs, ref)
    bounds = [segs[i] & ref for i in bound_idx]
    centers = [segs[i] for i in center_idx]
    total_area = sum(int(c.sum()) for c in centers)
    term2 = 0.0
    for center in centers:
        merged = np.zeros_like(ref)
        for b in bounds:
            if adjacent(b, center):
                merged |= b
        if not merged.any():
            continue  # no bound segment next to it (an adjacent one is never empty)
        bound_img, bound_mask = crop_masked_region(merged, image)
        center_img, center_mask = crop_masked_region(center, image)
        term2 += int(center.sum()) * float(dino(bound_img, bound_mask, center_img, center_mask)) / total_area
    return term1, term2


class CfdScorer:
    """CFD with a DINOv2 checkpoint (a Hub id found in the local cache, or a local directory).

    ``scorer(image, mask, segments)`` is one erased image's CFD; :meth:`terms` gives its two terms.
    """

    def __init__(self, model: str = DEFAULT_DINOV2, device: str = "cpu", dtype: str | None = None):
        import torch
        from transformers import Dinov2Model

        from magiceraser.devices import default_dtype, resolve_device
        from magiceraser.models.processors import image_processor

        self.model_id = model
        self.device = resolve_device(device)
        self.dtype = default_dtype(self.device, dtype)
        self.processor = image_processor(model, _PIL_PROCESSOR)
        self.model = Dinov2Model.from_pretrained(model, dtype=self.dtype)
        self.model.to(self.device).eval()
        self._torch = torch
        self._cache: tuple[bytes, np.ndarray] | None = None  # the last image's tokens (term 1 asks twice)

    def tokens(self, image: np.ndarray) -> np.ndarray:
        """``last_hidden_state`` ``(1 + h*w, D)`` (float32) of an HxWx3 uint8 image, resized to
        RESIZE x RESIZE (PIL's default resampling) and put through the checkpoint's processor."""
        from PIL import Image

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
        key = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16)
        key.update(repr(image.shape).encode())
        digest = key.digest()
        if self._cache is not None and self._cache[0] == digest:
            return self._cache[1].copy()
        pil = Image.fromarray(image).resize((RESIZE, RESIZE))
        inputs = self.processor(images=pil, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        with self._torch.inference_mode():
            hidden = self.model(pixel_values=pixels).last_hidden_state
        tokens = hidden[0].float().cpu().numpy()
        self._cache = (digest, tokens)
        return tokens.copy()

    def feature(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The pooled, normalised feature of ``image`` under ``mask`` (see :func:`pooled_feature`)."""
        tokens = self.tokens(image)
        return pooled_feature(tokens, grid_mask(mask, _patch_grid(tokens)))

    def distance(self, img1: np.ndarray, m1: np.ndarray, img2: np.ndarray, m2: np.ndarray) -> float:
        """``1 - cos`` of the pooled features: the reference's ``calc_dinov2_score`` (tokens aligned)."""
        return float(1.0 - self.feature(img1, m1) @ self.feature(img2, m2))

    def terms(self, image: np.ndarray, mask: np.ndarray, segments: Sequence[np.ndarray]) -> tuple[float, float]:
        """(term 1, term 2), each averaged over the connected components of ``mask``."""
        components = mask_components(mask)
        if not components:
            raise ValueError("the mask is empty: CFD needs at least one masked pixel")
        segs = filter_segments(segments)
        per = [cfd_terms(image, c, segs, self.distance, filtered=True) for c in components]
        return float(np.mean([t1 for t1, _ in per])), float(np.mean([t2 for _, t2 in per]))

    def __call__(self, image: np.ndarray, mask: np.ndarray, segments: Sequence[np.ndarray]) -> float:
        """CFD of one erased image: the mean over ``mask``'s connected components of term 1 + term 2."""
        term1, term2 = self.terms(image, mask, segments)
        return term1 + term2
