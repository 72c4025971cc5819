"""Content initialisation (docs/method.md part 3, Eq. 3): fill the mask in pixel space before diffusion.

Each initialiser is a callable ``(image HxWx3 uint8, mask bool HxW) -> HxWx3 uint8`` that keeps
every pixel outside the mask. The pipeline encodes the filled image x̃₀ and noises it to the
starting step (strength s): z_T' = √ᾱ_T' · E(x̃₀) + √(1 − ᾱ_T') · ε.

* ``telea`` (default, no weights): OpenCV's Telea fast-marching inpainting.
* ``lama``: Big-LaMa from a local TorchScript file, fp32, input padded symmetrically to a
  multiple of 8 as LaMa expects, then cropped back.
* ``none``: no classical fill; the masked pixels are set to mid-gray, i.e. exactly the masked
  image the inpainting UNet is conditioned on (diffusion then has to invent the content).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from magiceraser.models.lama import LamaInpainter, check_image_and_mask, pad_to_multiple

__all__ = ["TeleaInpainter", "LamaInpainter", "GrayFill", "make_content_initializer", "ContentInitializer", "pad_to_multiple"]

ContentInitializer = Callable[[np.ndarray, np.ndarray], np.ndarray]


class TeleaInpainter:
    """OpenCV Telea inpainting (``cv2.INPAINT_TELEA``) with neighbourhood ``radius`` px."""

    def __init__(self, radius: int = 5):
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        self.radius = radius

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import cv2

        check_image_and_mask(image, mask)
        m = mask.astype(np.uint8) * 255
        out = cv2.inpaint(np.ascontiguousarray(image), m, self.radius, cv2.INPAINT_TELEA)
        out[~mask.astype(bool)] = image[~mask.astype(bool)]
        return out


class GrayFill:
    """No classical inpainting: masked pixels become mid-gray (the UNet's masked-image convention)."""

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        check_image_and_mask(image, mask)
        out = image.copy()
        out[mask.astype(bool)] = 127
        return out


def make_content_initializer(kind: str, path: str | Path | None = None, device: str = "cpu", telea_radius: int = 5) -> ContentInitializer:
    """``kind`` in {"telea", "lama", "none"}; ``path`` is the Big-LaMa TorchScript file for "lama"."""
    if kind == "telea":
        return TeleaInpainter(telea_radius)
    if kind == "lama":
        if path is None:
            raise ValueError("content_init='lama' needs lama_path, the Big-LaMa TorchScript file")
        return LamaInpainter(path, device=device)
    if kind == "none":
        return GrayFill()
    raise ValueError(f"unknown content initialiser {kind!r}: choose 'telea', 'lama' or 'none'")
