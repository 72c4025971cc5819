"""Best and worst cases of a (dataset, method) as image grids: input with the mask outlined, result,
ground truth (a grey tile where the pair has none). Pure functions; outputs.py writes the files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from magiceraser.imaging import image_grid

NO_TARGET_GREY = 128


def best_and_worst(records: Sequence[dict[str, Any]], k: int, metric: str = "psnr") -> tuple[list[dict], list[dict]]:
    """The ``k`` highest and ``k`` lowest records by ``metric`` (ties broken by key); records without it are left out."""
    ok = sorted((r for r in records if r.get(metric) is not None and "error" not in r), key=lambda r: (-r[metric], r["key"]))
    return ok[:k], list(reversed(ok))[:k] if ok else []


def _outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    out = image.copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 0, 0), max(1, image.shape[0] // 256))
    return out


def grid_image(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, str]], tile: int = 256) -> np.ndarray:
    """A grid: one row per case with input (mask outlined in red), erased result, ground truth.

    ``rows``: (input, mask, erased, target, caption); each tile is resized to ``tile`` px and the
    caption is drawn on the erased tile; a target None (no ground truth) is a grey tile.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("grid_image needs at least one row")

    def resized(arr: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(arr).resize((tile, tile), Image.BILINEAR))

    grey = np.full((tile, tile, 3), NO_TARGET_GREY, np.uint8)
    cells = [[resized(_outline(inp, mask)), resized(erased), grey if target is None else resized(target)]
             for inp, mask, erased, target, _ in rows]
    canvas = Image.fromarray(image_grid(cells, gap=0))
    draw = ImageDraw.Draw(canvas)
    for i, (*_, caption) in enumerate(rows):
        draw.rectangle((tile, i * tile, tile + 8 * len(caption) + 6, i * tile + 14), fill=(0, 0, 0))
        draw.text((tile + 3, i * tile + 2), caption, fill=(255, 255, 255))
    return np.asarray(canvas)
