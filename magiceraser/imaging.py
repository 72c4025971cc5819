"""Array-image layout shared by the trainer's validation grids, the evaluation's best/worst grids
and ``magiceraser preview``: one way to tile images, so the three agree on gaps and padding.

A leaf module (numpy only): every package may import it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def image_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 2, row_gap: int | None = None,
               fill: int = 255) -> np.ndarray:
    """Tile HxWx3 (or HxW gray) uint8 images into one HxWx3 uint8 image, row by row.

    Images of a row are placed left to right with ``gap`` pixels between them, rows top to bottom
    with ``row_gap`` (default ``gap``) between them; a row is as tall as its tallest image, the
    grid as wide as its widest row, and everything not covered is ``fill`` (white). Images may
    differ in size, so callers that resize (the evaluation's tiles) and callers that do not (the
    preview's panels) share it.
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("image_grid needs at least one image")
    row_gap = gap if row_gap is None else row_gap
    heights = [max((img.shape[0] for img in row), default=0) for row in rows]
    widths = [sum(img.shape[1] for img in row) + gap * max(len(row) - 1, 0) for row in rows]
    grid = np.full((sum(heights) + row_gap * (len(rows) - 1), max(widths), 3), fill, np.uint8)
    y = 0
    for row, height in zip(rows, heights):
        x = 0
        for img in row:
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            grid[y : y + img.shape[0], x : x + img.shape[1]] = img
            x += img.shape[1] + gap
        y += height + row_gap
    return grid
