"""The paper's test-time geometry: long side linearly scaled to 512, short side padded with 0.

docs/method.md, "Letterbox": every image is brought to 512x512 by mapping its long side to
512 with linear interpolation and padding the short side with zeros. The paper does not say where
the padding goes; we pad at the bottom/right (content anchored top-left), so that a pixel keeps
its coordinates up to the scale factor and the inverse is a plain crop. Masks go through the same
linear scaling (as a 0/1 float image, then >= 0.5) so that they stay aligned with the image, and
their padding is 0 (nothing to erase there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_SIZE = 512


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where the scaled content sits inside the square canvas."""

    src_height: int
    src_width: int
    height: int  # scaled content height (<= size)
    width: int  # scaled content width (<= size)
    size: int

    def crop(self, arr: np.ndarray) -> np.ndarray:
        """The content region of a letterboxed array (drops the padding)."""
        return arr[: self.height, : self.width]


def letterbox_geometry(height: int, width: int, size: int = DEFAULT_SIZE) -> LetterboxGeometry:
    """Scaled content size: the long side becomes exactly ``size``, the short side is rounded."""
    if height <= 0 or width <= 0:
        raise ValueError(f"cannot letterbox an empty image of shape {height}x{width}")
    scale = size / max(height, width)
    h = size if height >= width else max(1, min(size, round(height * scale)))
    w = size if width >= height else max(1, min(size, round(width * scale)))
    return LetterboxGeometry(height, width, h, w, size)


def _resize_linear(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    # PIL's bilinear filter widens its support when downscaling (antialiased), so a 4000-px
    # RealHM photo does not alias on its way to 512.
    if arr.shape[:2] == (height, width):
        return arr.copy()
    if arr.dtype == np.uint8:
        return np.asarray(Image.fromarray(arr).resize((width, height), Image.BILINEAR))
    # float planes (masks) resize per channel in PIL's 32-bit float mode
    return np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))


def letterbox_image(image: np.ndarray, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, LetterboxGeometry]:
    """HxWx3 uint8 -> size x size x 3 uint8, content top-left, zeros elsewhere."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    geo = letterbox_geometry(image.shape[0], image.shape[1], size)
    out = np.zeros((size, size, 3), np.uint8)
    out[: geo.height, : geo.width] = _resize_linear(image, geo.height, geo.width)
    return out, geo


def letterbox_mask(mask: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """bool HxW -> bool size x size, scaled like the image (linear, >= 0.5), padding False."""
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {mask.shape}")
    geo = letterbox_geometry(mask.shape[0], mask.shape[1], size)
    out = np.zeros((size, size), bool)
    out[: geo.height, : geo.width] = _resize_linear(mask.astype(np.float32), geo.height, geo.width) >= 0.5
    return out
