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

__all__ = ["TeleaInpainter", "LamaInpainter", "GrayFill", "make_content_initializer", "ContentInitializer", "pad_to_multiple"]

ContentInitializer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8, got shape {image.shape} dtype {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")


class TeleaInpainter:
    """OpenCV Telea inpainting (``cv2.INPAINT_TELEA``) with neighbourhood ``radius`` px."""

    def __init__(self, radius: int = 5):
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        self.radius = radius

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import cv2

        _check(image, mask)
        m = mask.astype(np.uint8) * 255
        out = cv2.inpaint(np.ascontiguousarray(image), m, self.radius, cv2.INPAINT_TELEA)
        out[~mask.astype(bool)] = image[~mask.astype(bool)]
        return out


class GrayFill:
    """No classical inpainting: masked pixels become mid-gray (the UNet's masked-image convention)."""

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        _check(image, mask)
        out = image.copy()
        out[mask.astype(bool)] = 127
        return out


def pad_to_multiple(arr: np.ndarray, multiple: int = 8) -> tuple[np.ndarray, tuple[int, int]]:
    """Symmetric (mirror-with-edge) padding on the bottom/right to a multiple; returns the original (h, w)."""
    h, w = arr.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode="symmetric"), (h, w)


class LamaInpainter:
    """Big-LaMa from a TorchScript file (``torch.jit.load``), run in fp32 on ``device``."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Big-LaMa TorchScript file {str(path)!r} not found: download big-lama.pt "
                "(e.g. from the IOPaint/lama-cleaner releases) or use content_init=telea"
            )
        self.path, self.device = path, device
        self.model = torch.jit.load(str(path), map_location=device).eval().float()

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        _check(image, mask)
        img, (h, w) = pad_to_multiple(image.astype(np.float32) / 255.0)
        msk, _ = pad_to_multiple(mask.astype(np.float32))
        with torch.inference_mode():
            t_img = torch.from_numpy(img).permute(2, 0, 1)[None].to(self.device)
            t_msk = torch.from_numpy(msk)[None, None].to(self.device)
            out = self.model(t_img, t_msk)[0].permute(1, 2, 0)[:h, :w].float().cpu().numpy()
        out = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
        keep = ~mask.astype(bool)
        out[keep] = image[keep]
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
