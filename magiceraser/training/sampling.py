"""The trainer's randomness and choices as pure functions: seeds, the phase-1 subset, crops, masks, prompts.

Everything here is a function of its arguments (no I/O, no global state), so the latent cache can
store what a crop will be and a resumed stream replays what it chose: geometry depends on (seed,
sample key), the prompt on (seed, rank, worker, position).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from magiceraser.prompts import learned_prompt


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts, identical in every process and Python version."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def in_subset(key: str, seed: int, fraction: float) -> bool:
    """Deterministic random subset membership of a sample key (phase-1 textual inversion)."""
    if fraction >= 1.0:
        return True
    return stable_seed("subset", seed, key) / 2**63 < fraction


def crop_box_containing(
    bbox: tuple[int, int, int, int], height: int, width: int, scale_min: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A crop (x0, y0, x1, y1), exclusive ends, that contains ``bbox`` and lies inside the image.

    Square with side in [max(mask extent, scale_min * short side), short side] when the mask fits
    in a square; otherwise the smallest rectangle spanning the mask and the short side (resizing
    then squeezes it, which keeps the whole mask, as required, at the cost of aspect).
    """
    x0, y0, x1, y1 = bbox
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"bbox {bbox} is empty or outside a {width}x{height} image")
    short = min(height, width)
    need = max(x1 - x0, y1 - y0)
    if need <= short:
        lo = max(need, int(np.ceil(scale_min * short)))
        side_x = side_y = int(rng.integers(lo, short + 1))
    else:
        side_x, side_y = min(width, max(need, short)), min(height, max(need, short))
    cx = int(rng.integers(max(0, x1 - side_x), min(x0, width - side_x) + 1))
    cy = int(rng.integers(max(0, y1 - side_y), min(y0, height - side_y) + 1))
    return cx, cy, cx + side_x, cy + side_y


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1), exclusive ends, of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def random_mask(size: int, rng: np.random.Generator, max_shapes: int = 4) -> np.ndarray:
    """A random inpainting mask (bool size x size) of rectangles, ellipses and thick strokes."""
    import cv2

    canvas = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = int(rng.integers(3))
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(max(2, size // 10), max(3, size // 2), 2))
        if kind == 0:
            cv2.rectangle(canvas, (cx - w // 2, cy - h // 2), (cx + w // 2, cy + h // 2), 255, -1)
        elif kind == 1:
            cv2.ellipse(canvas, (cx, cy), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, 255, -1)
        else:
            pts = np.cumsum(rng.integers(-size // 4, size // 4 + 1, (4, 2)), axis=0) + [cx, cy]
            thickness = max(1, int(rng.integers(size // 20 + 1, size // 8 + 2)))
            cv2.polylines(canvas, [pts.astype(np.int32).reshape(-1, 1, 2)], False, 255, thickness)
    if not canvas.any():  # every shape fell off the canvas
        canvas[size // 4 : size // 2, size // 4 : size // 2] = 255
    return canvas > 0


def choose_prompt(
    tags: Sequence[str], caption: str, token: str, learned_prob: float, rng: np.random.Generator, tag_choice: str = "first"
) -> tuple[str, bool]:
    """Prompt of one sample: ``learned_prompt(token, tag)`` with probability ``learned_prob``, else the caption.

    Returns (prompt, used_learned). A sample without caption always gets the learned prompt and
    one without tags gets "A photo of R*".
    """
    use_learned = rng.random() < learned_prob or not caption.strip()
    if not use_learned:
        return caption.strip(), False
    tag = None
    if tags:
        tag = tags[0] if tag_choice == "first" else tags[int(rng.integers(len(tags)))]
    return learned_prompt(token, tag), True
