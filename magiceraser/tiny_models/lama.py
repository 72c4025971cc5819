"""A tiny random-weight inpainter with Big-LaMa's TorchScript calling convention.

``big-lama.pt`` (the scripted Big-LaMa that lama-cleaner / IOPaint distribute) is loaded with
``torch.jit.load`` and called as ``model(image, mask)``: image (B, 3, H, W) float in [0, 1], mask
(B, 1, H, W) float 0/1, H and W multiples of 8; it returns (B, 3, H, W) in [0, 1] with the known
pixels kept. This stand-in has the same signature, the same multiple-of-8 requirement (three
stride-2 levels) and the same output range, so the eraser's LaMa path runs unchanged offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class TinyLama(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(4, width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(),
        )
        self.up = nn.Sequential(
            nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, 2, 1),
        )

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.shape[-2] % 8 != 0 or image.shape[-1] % 8 != 0:
            raise RuntimeError("Big-LaMa needs height and width divisible by 8: pad the input first")
        masked = image * (1.0 - mask)
        pred = torch.sigmoid(self.up(self.down(torch.cat([masked, mask], dim=1))))
        return mask * pred + (1.0 - mask) * image


def write_tiny_lama(path: str | Path, seed: int = 0) -> Path:
    """Script a random-weight :class:`TinyLama` and save it with ``torch.jit.save`` at ``path``."""
    torch.manual_seed(seed)
    module = torch.jit.script(TinyLama().eval())
    path = Path(path)
    torch.jit.save(module, str(path))
    return path
