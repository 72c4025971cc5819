"""Big-LaMa, the learned inpainter used for content initialisation (docs/method.md part 3).

Loaded from its TorchScript file (``big-lama.pt``, as IOPaint/lama-cleaner distribute it) with
``torch.jit.load``, run in fp32 with symmetric padding to a multiple of 8. Pixels outside the mask
are returned unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def check_image_and_mask(image: np.ndarray, mask: np.ndarray) -> None:
    """An inpainter's inputs: HxWx3 uint8 image and a mask of the same size."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8, got shape {image.shape} dtype {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")


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

        check_image_and_mask(image, mask)
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
