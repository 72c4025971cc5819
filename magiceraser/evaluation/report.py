"""Results in the paper's layout (Table 1: Dataset | Method | PSNR↑ | SSIM↑ | LPIPS↓ | FID↓), plus
the beyond-the-paper columns (masked-region metrics, re-generation rate), and best/worst grids.

Pure functions from per-image records to rows and text; the run writes them atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from magiceraser.imaging import image_grid

# (record key, column header, higher is better, decimals, unit)
COLUMNS: list[tuple[str, str, bool, int, str]] = [
    ("psnr", "PSNR↑", True, 3, "dB"),
    ("ssim", "SSIM↑", True, 3, ""),
    ("lpips", "LPIPS↓", False, 3, ""),
    ("fid", "FID↓", False, 2, ""),
    ("psnr_mask", "PSNR mask↑", True, 3, "dB"),
    ("ssim_mask", "SSIM mask↑", True, 3, ""),
    ("lpips_mask", "LPIPS mask↓", False, 3, ""),
    ("regrowth", "Regrowth↓", False, 3, ""),
]
PAPER_COLUMNS = ("psnr", "ssim", "lpips", "fid")


@dataclass
class ResultRow:
    dataset: str
    method: str
    values: dict[str, float | None]  # column key -> mean (None: metric off or unavailable)
    count: int  # images evaluated
    skipped: int  # images that failed for this method


def mean_or_none(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def aggregate(
    records: Sequence[dict[str, Any]], fid: dict[tuple[str, str], float] | None = None, order: Sequence[tuple[str, str]] = ()
) -> list[ResultRow]:
    """Per-(dataset, method) means of per-image records ({"dataset", "method", metric keys...})."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    keys = list(order) + [k for k in groups if k not in order]
    rows = []
    for key in keys:
        recs = groups.get(key, [])
        ok = [r for r in recs if "error" not in r]
        values = {col: mean_or_none([r.get(col) for r in ok]) for col, *_ in COLUMNS if col != "fid"}
        values["fid"] = (fid or {}).get(key)
        rows.append(ResultRow(key[0], key[1], values, len(ok), len(recs) - len(ok)))
    return rows


def _format(value: float | None, decimals: int, unit: str) -> str:
    return "–" if value is None else f"{value:.{decimals}f}{unit}"


def _ranks(rows: Sequence[ResultRow], col: str, higher: bool) -> dict[int, int]:
    """Row index -> rank (0 best, 1 second) within each dataset, for rows with a value."""
    out: dict[int, int] = {}
    by_ds: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.values.get(col) is not None:
            by_ds.setdefault(r.dataset, []).append(i)
    for idxs in by_ds.values():
        if len(idxs) < 2:
            continue
        ordered = sorted(idxs, key=lambda i: rows[i].values[col], reverse=higher)
        for rank, i in enumerate(ordered[:2]):
            out[i] = rank
    return out


def columns_in_use(rows: Sequence[ResultRow]) -> list[tuple[str, str, bool, int, str]]:
    """The paper's four columns always; the others only where some row has a value."""
    return [c for c in COLUMNS if c[0] in PAPER_COLUMNS or any(r.values.get(c[0]) is not None for r in rows)]


def results_markdown(rows: Sequence[ResultRow]) -> str:
    """Markdown table: best per dataset in bold, second underlined (as the paper marks them)."""
    cols = columns_in_use(rows)
    ranks = {c[0]: _ranks(rows, c[0], c[2]) for c in cols}
    header = ["Dataset", "Method"] + [c[1] for c in cols] + ["N"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) + 1)) + "|"]
    previous = None
    for i, r in enumerate(rows):
        cells = [r.dataset if r.dataset != previous else "", r.method]
        previous = r.dataset
        for key, _, _, dec, unit in cols:
            text = _format(r.values.get(key), dec, unit)
            rank = ranks[key].get(i)
            cells.append(f"**{text}**" if rank == 0 else f"<u>{text}</u>" if rank == 1 else text)
        cells.append(str(r.count) + (f" ({r.skipped} failed)" if r.skipped else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_csv(rows: Sequence[ResultRow]) -> str:
    """CSV with raw (unrounded) means; empty cells for metrics that are off."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "method"] + [c[0] for c in COLUMNS] + ["count", "failed"])
    for r in rows:
        writer.writerow([r.dataset, r.method] + ["" if r.values.get(c[0]) is None else repr(r.values[c[0]]) for c in COLUMNS]
                        + [r.count, r.skipped])
    return buf.getvalue()


def best_and_worst(records: Sequence[dict[str, Any]], k: int, metric: str = "psnr") -> tuple[list[dict], list[dict]]:
    """The ``k`` highest and ``k`` lowest records by ``metric`` (ties broken by key)."""
    ok = sorted((r for r in records if r.get(metric) is not None and "error" not in r), key=lambda r: (-r[metric], r["key"]))
    return ok[:k], list(reversed(ok))[:k] if ok else []


def _outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import cv2

    out = image.copy()
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 0, 0), max(1, image.shape[0] // 256))
    return out


def grid_image(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]], tile: int = 256) -> np.ndarray:
    """A grid: one row per case with input (mask outlined in red), erased result, ground truth.

    ``rows``: (input, mask, erased, target, caption); each tile is resized to ``tile`` px and the
    caption is drawn on the erased tile.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("grid_image needs at least one row")

    def resized(arr: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(arr).resize((tile, tile), Image.BILINEAR))

    cells = [[resized(a) for a in (_outline(inp, mask), erased, target)] for inp, mask, erased, target, _ in rows]
    canvas = Image.fromarray(image_grid(cells, gap=0))
    draw = ImageDraw.Draw(canvas)
    for i, (*_, caption) in enumerate(rows):
        draw.rectangle((tile, i * tile, tile + 8 * len(caption) + 6, i * tile + 14), fill=(0, 0, 0))
        draw.text((tile + 3, i * tile + 2), caption, fill=(255, 255, 255))
    return np.asarray(canvas)
