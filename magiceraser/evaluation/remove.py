"""ReMOVE, a reference-free metric for object erasure (Chandrasekar et al., CVPR 2024 workshops).

ReMOVE asks whether the filled region looks like its surroundings to Segment Anything's image
encoder. Following the reference implementation (github.com/chandrasekaraditya/ReMOVE, ``main.py``
with ``crop.py`` and its patched ``segment_anything`` predictor):

1. **Crop.** The erase mask's bounding box, made square (side = the longer side) and grown by a
   16 px margin on every side where that fits, else by the largest margin that fits on all four
   sides (:func:`bounding_square`, the reference's ``find_smallest_bounding_square``). The erased
   image and the mask are cropped to that square.
2. **Features.** SAM's image encoder on the crop: longest side resized to the encoder's input size
   (PIL bilinear, as the reference's ``ResizeLongestSide``), normalised, padded bottom/right to a
   square; the result is a (C, g, g) grid (ViT-H: 1024 px -> 256 x 64 x 64). The input size and the
   grid are read from the checkpoint's processor and config, never assumed.
3. **Regions on the grid.** The cropped 0/255 mask resized to g x g with PIL's bicubic filter (the
   reference's ``Image.resize((64, 64))`` default for an ``L`` image); a cell is foreground only
   where the resized value is exactly 255 (``// 255``), background everywhere else.
4. **Score.** The cosine similarity between the mean feature vector of the foreground cells and
   that of the background cells. Higher means the fill resembles its context (object gone); a
   leftover or hallucinated object lowers it.

**Crop at the image border (where this implementation departs from the reference, on purpose).**
The reference slices ``[y:y+size, x:x+size]`` even when the square runs past the bottom or right
border (its margin test allows it, and a wide mask's square is taller than the mask). The slice is
then silently truncated and no longer square; SAM's processor pads it, but the reference still
stretches the mask to the whole 64 x 64 grid, so mask cells no longer sit over the pixels they
describe. Here (:func:`crop_box`): the reference's square is kept wherever it fits; a square that
runs over a border is shifted back inside the image (same size, still square) when the image is
large enough; only when the image is smaller than the square in a dimension is the crop what exists
of that dimension. A non-square crop's mask is mapped onto the grid exactly as the processor maps
the crop's pixels (:func:`grid_masks`): longest side resized to g cells, the other side in
proportion (rounded as the processor rounds), and the cells of the padding count as neither
foreground nor background. For a square crop this is exactly the reference's computation.

**Degenerate masks.** An empty erase mask is a ``ValueError``. A mask so thin that no grid cell is
exactly 255 after resizing (or one covering the whole crop, leaving no background cell) has no
foreground (background) feature to average; the reference's mean over nothing gives NaN, and so does
:func:`remove_from_features`: the report's means skip NaN.

**Known weakness.** ReMOVE rewards blur: a smooth, featureless fill is close to its context in the
encoder's feature space, so an over-smoothed erasure can score as high as a sharp, plausible one.
Read it next to a fidelity metric (LPIPS, FID, CFD), never alone.
"""

from __future__ import annotations

import numpy as np

from magiceraser.devices import default_dtype, resolve_device

__all__ = [
    "DEFAULT_SAM",
    "RemoveScorer",
    "bounding_square",
    "crop_box",
    "grid_cells",
    "grid_masks",
    "remove_from_features",
]

DEFAULT_SAM = "facebook/sam-vit-huge"
"""The reference's encoder (its ``sam_vit_h_4b8939.pth``) in transformers' SamModel format."""

MARGIN = 16
"""The reference's margin around the mask's bounding box, in pixels."""


def _foreground(mask: np.ndarray) -> np.ndarray:
    """The erase mask as bool: a bool mask as it is, any other 2-D mask where it equals 255 (the reference's test)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a 2-D (H, W) mask, got shape {mask.shape}")
    return mask if mask.dtype == bool else mask == 255


def bounding_square(mask: np.ndarray, margin: int = MARGIN) -> tuple[int, int, int]:
    """The reference's square around the mask, ``(x, y, size)``: top-left column and row, and side.

    ``mask`` is bool, or 0/255 (foreground where it equals 255). The mask's bounding box is made
    square (side = its longer side) and grown by ``margin`` on every side when the box is at least
    ``margin`` from the top/left borders and ``max_row + margin <= H``, ``max_col + margin <= W``;
    otherwise by ``min(min_col, min_row, H - max_row, W - max_col)``. As in the reference, the
    square may still run past the bottom or right border; :func:`crop_box` places it inside.
    """
    fg = _foreground(mask)
    rows = np.flatnonzero(fg.any(axis=1))
    cols = np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty: ReMOVE needs at least one masked (erased) pixel")
    height, width = fg.shape
    min_row, max_row = int(rows[0]), int(rows[-1])
    min_col, max_col = int(cols[0]), int(cols[-1])
    size = max(max_col - min_col + 1, max_row - min_row + 1)
    fits = min_col - margin >= 0 and min_row - margin >= 0 and max_row + margin <= height and max_col + margin <= width
    sub = margin if fits else max(min(min_col, min_row, height - max_row, width - max_col), 0)
    return min_col - sub, min_row - sub, size + 2 * sub


def crop_box(mask_shape: tuple[int, int], x: int, y: int, size: int) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of the crop for the square ``(x, y, size)`` in an image of ``mask_shape``.

    Per dimension: the square's span where it fits; shifted back inside the image (same size) where
    it runs over a border; the whole dimension where the image is smaller than ``size``.
    """
    height, width = int(mask_shape[0]), int(mask_shape[1])
    if size <= 0:
        raise ValueError(f"size: must be positive, got {size}")

    def place(start: int, extent: int) -> tuple[int, int]:
        if size >= extent:
            return 0, extent
        start = min(max(int(start), 0), extent - size)
        return start, start + size

    top, bottom = place(y, height)
    left, right = place(x, width)
    return top, left, bottom, right


def grid_cells(shape: tuple[int, int], grid: int) -> tuple[int, int]:
    """Rows and columns of the ``grid`` x ``grid`` feature grid that an image of ``shape`` covers.

    The SAM processor resizes the longest side to the encoder's input and the other in proportion
    (``int(side * scale + 0.5)``), then pads bottom/right; the same rule at the grid's resolution.
    """
    height, width = int(shape[0]), int(shape[1])
    scale = grid / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def grid_masks(crop_mask: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fg, bg)``: bool ``(grid, grid)`` masks of the feature cells inside and outside the erased region.

    ``crop_mask`` (bool, or 0/255) is the mask on the crop. As 0/255 it is resized with PIL's bicubic
    filter to the cells the crop covers (:func:`grid_cells`; the whole grid for a square crop, as
    in the reference); foreground is where the result is exactly 255, background the rest of those
    cells. Padding cells (a non-square crop) are in neither.
    """
    from PIL import Image

    fg_pixels = _foreground(crop_mask)
    if fg_pixels.size == 0:
        raise ValueError("crop_mask: empty crop")
    rows, cols = grid_cells(fg_pixels.shape, grid)
    mask255 = np.where(fg_pixels, 255, 0).astype(np.uint8)
    small = np.asarray(Image.fromarray(mask255, mode="L").resize((cols, rows), Image.Resampling.BICUBIC))
    fg = np.zeros((grid, grid), dtype=bool)
    bg = np.zeros((grid, grid), dtype=bool)
    fg[:rows, :cols] = small == 255
    bg[:rows, :cols] = small != 255
    return fg, bg


def remove_from_features(features: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> float:
    """ReMOVE from a (C, h, w) feature grid: cosine similarity of the mean fg and mean bg feature vectors.

    Computed in float64 (torch's ``cosine_similarity`` formula, eps 1e-8). NaN when ``fg`` or ``bg``
    selects no cell (the reference's mean over nothing).
    """
    feats = np.asarray(features, dtype=np.float64)
    fg, bg = np.asarray(fg, dtype=bool), np.asarray(bg, dtype=bool)
    if feats.ndim != 3:
        raise ValueError(f"features: expected (C, h, w), got shape {feats.shape}")
    if fg.shape != feats.shape[1:] or bg.shape != feats.shape[1:]:
        raise ValueError(f"fg/bg masks {fg.shape}/{bg.shape} do not match the feature grid {feats.shape[1:]}")
    if not fg.any() or not bg.any():
        return float("nan")
    emb_fg = feats[:, fg].mean(axis=1)
    emb_bg = feats[:, bg].mean(axis=1)
    eps = 1e-8
    denom = max(float(np.linalg.norm(emb_fg)), eps) * max(float(np.linalg.norm(emb_bg)), eps)
    return float(emb_fg @ emb_bg) / denom


def _image_processor(model: str):
    """The checkpoint's SAM image processor, PIL flavour.

    The PIL processor resizes with PIL's bilinear filter on the uint8 image, which is what the
    reference's ``ResizeLongestSide`` does (torchvision's ``resize`` of a PIL image); the
    torchvision-backed one would resize tensors instead. It needs no torchvision either.
    """
    try:
        from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil as Processor
    except ImportError:  # transformers before the PIL/torchvision split: SamImageProcessor is the PIL one
        from transformers import SamImageProcessor as Processor
    return Processor.from_pretrained(model)


class RemoveScorer:
    """ReMOVE of erased images with one SAM image encoder (loaded once).

    ``model`` is a Hub id (read from the local cache) or a directory in transformers' ``SamModel``
    format with its ``preprocessor_config.json``. Loading errors (``OSError``/``ValueError``)
    propagate. float16 on CUDA, float32 elsewhere unless ``dtype`` says otherwise.
    """

    def __init__(self, model: str = DEFAULT_SAM, device: str = "cpu", dtype: str | None = None):
        import torch
        from transformers import SamModel

        self.model_id = model
        self.device = resolve_device(device)
        self.dtype = default_dtype(self.device, dtype)
        self.processor = _image_processor(model)
        self.model = SamModel.from_pretrained(model, dtype=self.dtype)
        self.model.to(self.device).eval()
        vision = self.model.config.vision_config
        self.input_size = int(vision.image_size)
        """The encoder's square input, in pixels (ViT-H: 1024)."""
        self.grid = self.input_size // int(vision.patch_size)
        """Side of the feature grid (ViT-H: 64)."""
        longest = self.processor.size["longest_edge"] if self.processor.do_resize else None
        pad = self.processor.pad_size if self.processor.do_pad else None
        pad_hw = (pad["height"], pad["width"]) if pad else None
        if longest != self.input_size or pad_hw != (self.input_size, self.input_size):
            raise ValueError(
                f"{model}: ReMOVE needs the SAM processor to resize the longest side to the encoder's input "
                f"({self.input_size}) and pad to {self.input_size}x{self.input_size}; its processor has "
                f"longest_edge={longest}, pad_size={pad_hw}"
            )
        self._torch = torch

    def features(self, image: np.ndarray) -> np.ndarray:
        """The image encoder's (C, h, w) float32 embedding of an HxWx3 uint8 RGB image."""
        torch = self._torch
        image = np.ascontiguousarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: expected an HxWx3 RGB image, got shape {image.shape}")
        inputs = self.processor(images=[image], return_tensors="pt", input_data_format="channels_last")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixels)
        return embeddings[0].float().cpu().numpy()

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> float:
        """ReMOVE of one erased image (HxWx3 uint8) with its erase mask (bool HxW, or 0/255)."""
        image = np.asarray(image)
        fg_pixels = _foreground(mask)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != fg_pixels.shape:
            raise ValueError(f"image {image.shape} and mask {fg_pixels.shape}: expected HxWx3 and HxW of the same size")
        x, y, size = bounding_square(fg_pixels)
        top, left, bottom, right = crop_box(fg_pixels.shape, x, y, size)
        features = self.features(image[top:bottom, left:right])
        if features.shape[1:] != (self.grid, self.grid):
            raise ValueError(f"{self.model_id}: feature grid {features.shape[1:]}, expected {(self.grid, self.grid)}")
        fg, bg = grid_masks(fg_pixels[top:bottom, left:right], self.grid)
        return remove_from_features(features, fg, bg)
