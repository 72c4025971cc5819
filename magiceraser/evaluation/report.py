"""Results in the paper's layout (Table 1: Dataset | Method | PSNR↑ | SSIM↑ | LPIPS↓ | FID↓), the
beyond-the-paper columns (masked-region metrics, re-generation rate, ReMOVE, CFD, success rates), each
cell with its bootstrap interval and the number of images behind it, and every method's paired
difference from a baseline. Pure functions from per-image records to rows and text; the run writes them.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from magiceraser.evaluation.bootstrap import bootstrap_mean, bootstrap_statistic, paired_difference


@dataclass(frozen=True)
class Column:
    key: str  # the per-image record key (FID: a set statistic)
    header: str
    higher: bool  # higher is better
    decimals: int
    unit: str = ""
    scale: float = 1.0  # shown as value x scale (success rates as percentages; the CSV keeps the raw value)


COLUMNS: tuple[Column, ...] = (
    Column("psnr", "PSNR↑", True, 3, "dB"),
    Column("ssim", "SSIM↑", True, 3),
    Column("lpips", "LPIPS↓", False, 3),
    Column("fid", "FID↓", False, 2),
    Column("psnr_mask", "PSNR mask↑", True, 3, "dB"),
    Column("ssim_mask", "SSIM mask↑", True, 3),
    Column("lpips_mask", "LPIPS mask↓", False, 3),
    Column("regrowth", "Regrowth↓", False, 3),
    Column("remove", "ReMOVE↑", True, 3),
    Column("cfd", "CFD↓", False, 3),
    Column("success_detector", "Success det.↑", True, 1, "%", 100.0),
    Column("success_vlm", "Success VLM↑", True, 1, "%", 100.0),
)
PAPER_COLUMNS = ("psnr", "ssim", "lpips", "fid")
BY_KEY = {c.key: c for c in COLUMNS}
FOOTNOTES = {
    "cfd": "CFD's segments come from the panoptic segmenter (Mask2Former), where OmniPaint uses SAM's automatic masks.",
    "remove": "ReMOVE is known to reward blur: a smooth fill resembles its surroundings in SAM's feature space.",
}


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn (``EvalConfig.bootstrap``): 0 resamples = means only."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class Cell:
    """One table cell: the statistic over ``n`` images and, where drawn, its bootstrap interval."""

    value: float
    n: int
    low: float | None = None
    high: float | None = None


class FeatureSet(Protocol):
    """What the FID cells need of :class:`magiceraser.evaluation.fid.FidSet`."""

    keys: tuple[str, ...]

    def fid(self, indices: np.ndarray | None = None) -> float: ...

    def subset(self, keys: Sequence[str]) -> FeatureSet: ...


@dataclass
class ResultRow:
    dataset: str
    method: str
    cells: dict[str, Cell]  # column key -> cell (absent: metric off, unavailable, or no image has it)
    count: int  # images evaluated
    skipped: int  # images that failed for this method

    @property
    def values(self) -> dict[str, float | None]:
        """Column key -> the cell's value (None where there is no cell)."""
        return {c.key: (self.cells[c.key].value if c.key in self.cells else None) for c in COLUMNS}


@dataclass(frozen=True)
class Comparison:
    """``method - baseline`` on one metric over the images both scored (paired bootstrap)."""

    dataset: str
    method: str
    baseline: str
    metric: str
    cell: Cell


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_cell(values: Iterable[Any], boot: Bootstrap | None) -> Cell | None:
    """Mean of the finite values with its interval (no interval when ``boot`` is None or has 0 resamples)."""
    vals = _finite(values)
    if not vals:
        return None
    if boot is None or not boot.resamples:
        return Cell(float(np.mean(vals)), len(vals))
    iv = bootstrap_mean(vals, boot.resamples, boot.seed, boot.confidence)
    return Cell(iv.value, iv.n, iv.low, iv.high)


def fid_cell(features: FeatureSet, boot: Bootstrap | None) -> Cell:
    """FID of a feature set; its interval recomputes FID on each resample of the images."""
    n = len(features.keys)
    if boot is None or not boot.resamples:
        return Cell(features.fid(), n)
    iv = bootstrap_statistic(n, features.fid, boot.resamples, boot.seed, boot.confidence)
    return Cell(iv.value, n, iv.low, iv.high)


def _groups(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    return groups


def aggregate(
    records: Sequence[dict[str, Any]], fid: Mapping[tuple[str, str], Cell | float] | None = None,
    order: Sequence[tuple[str, str]] = (), boot: Bootstrap | None = None,
) -> list[ResultRow]:
    """Per-(dataset, method) cells of per-image records ({"dataset", "method", "key", metric keys...}).

    ``fid``: (dataset, method) -> its FID cell (:func:`fid_cell`) or plain value.
    """
    groups = _groups(records)
    keys = list(order) + [k for k in groups if k not in order]
    rows = []
    for key in keys:
        recs = groups.get(key, [])
        ok = [r for r in recs if "error" not in r]
        cells = {}
        for col in COLUMNS:
            if col.key == "fid":
                value = (fid or {}).get(key)
                cell = value if isinstance(value, Cell) or value is None else Cell(float(value), len(ok))
            else:
                cell = mean_cell((r.get(col.key) for r in ok), boot)
            if cell is not None:
                cells[col.key] = cell
        rows.append(ResultRow(key[0], key[1], cells, len(ok), len(recs) - len(ok)))
    return rows


def compare(
    records: Sequence[dict[str, Any]], baseline: str, boot: Bootstrap,
    fid_sets: Mapping[tuple[str, str], FeatureSet] | None = None, order: Sequence[tuple[str, str]] = (),
) -> list[Comparison]:
    """Every method minus ``baseline`` on every metric, per dataset, over the images both scored."""
    groups = _groups(records)
    keys = list(order) + [k for k in groups if k not in order]
    by_key = {k: {r["key"]: r for r in groups.get(k, []) if "error" not in r} for k in keys}
    out = []
    for ds, method in keys:
        if method == baseline or (ds, baseline) not in by_key:
            continue
        mine, base = by_key[(ds, method)], by_key[(ds, baseline)]
        for col in COLUMNS:
            if col.key == "fid":
                cell = _fid_difference((fid_sets or {}).get((ds, method)), (fid_sets or {}).get((ds, baseline)), boot)
            else:
                shared = [k for k in mine if k in base and _finite([mine[k].get(col.key)]) and _finite([base[k].get(col.key)])]
                cell = None
                if shared:
                    a = [float(mine[k][col.key]) for k in shared]
                    b = [float(base[k][col.key]) for k in shared]
                    if boot.resamples:
                        iv = paired_difference(a, b, boot.resamples, boot.seed, boot.confidence)
                        cell = Cell(iv.value, iv.n, iv.low, iv.high)
                    else:
                        cell = Cell(float(np.mean(np.subtract(a, b))), len(shared))
            if cell is not None:
                out.append(Comparison(ds, method, baseline, col.key, cell))
    return out


def _fid_difference(mine: FeatureSet | None, base: FeatureSet | None, boot: Bootstrap) -> Cell | None:
    if mine is None or base is None:
        return None
    shared = [k for k in mine.keys if k in set(base.keys)]
    if len(shared) < 2:
        return None
    a, b = mine.subset(shared), base.subset(shared)

    def diff(indices: np.ndarray | None = None) -> float:
        return a.fid(indices) - b.fid(indices)

    if not boot.resamples:
        return Cell(diff(), len(shared))
    iv = bootstrap_statistic(len(shared), diff, boot.resamples, boot.seed, boot.confidence)
    return Cell(iv.value, iv.n, iv.low, iv.high)


# ---------------------------------------------------------------- text


def _number(value: float, col: Column, signed: bool = False) -> str:
    return f"{value * col.scale:{'+' if signed else ''}.{col.decimals}f}"


def format_cell(cell: Cell | None, col: Column, signed: bool = False) -> str:
    """``31.204dB [30.912, 31.533] (200)``: value with unit, interval, images behind it; ``–`` for none."""
    if cell is None:
        return "–"
    text = _number(cell.value, col, signed) + col.unit
    if cell.low is not None and cell.high is not None:
        text += f" [{_number(cell.low, col, signed)}, {_number(cell.high, col, signed)}]"
    return f"{text} ({cell.n})"


def _ranks(rows: Sequence[ResultRow], col: Column) -> dict[int, int]:
    """Row index -> rank (0 best, 1 second) within each dataset, for rows with a value."""
    out: dict[int, int] = {}
    by_ds: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if col.key in r.cells:
            by_ds.setdefault(r.dataset, []).append(i)
    for idxs in by_ds.values():
        if len(idxs) < 2:
            continue
        ordered = sorted(idxs, key=lambda i: rows[i].cells[col.key].value, reverse=col.higher)
        for rank, i in enumerate(ordered[:2]):
            out[i] = rank
    return out


def columns_in_use(rows: Sequence[ResultRow]) -> list[Column]:
    """The paper's four columns always; the others only where some row has a value."""
    return [c for c in COLUMNS if c.key in PAPER_COLUMNS or any(c.key in r.cells for r in rows)]


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def results_markdown(rows: Sequence[ResultRow], comparisons: Sequence[Comparison] = (), boot: Bootstrap | None = None) -> str:
    """The table (best per dataset in bold, second underlined, as the paper marks them), then the
    differences from the baseline where there are any, then what the cells mean."""
    cols = columns_in_use(rows)
    ranks = {c.key: _ranks(rows, c) for c in cols}
    body, previous = [], None
    for i, r in enumerate(rows):
        cells = [r.dataset if r.dataset != previous else "", r.method]
        previous = r.dataset
        for col in cols:
            text = format_cell(r.cells.get(col.key), col)
            rank = ranks[col.key].get(i)
            cells.append(f"**{text}**" if rank == 0 else f"<u>{text}</u>" if rank == 1 else text)
        cells.append(str(r.count) + (f" ({r.skipped} failed)" if r.skipped else ""))
        body.append(cells)
    lines = _table(["Dataset", "Method"] + [c.header for c in cols] + ["N"], body)
    if comparisons:
        baseline = comparisons[0].baseline
        found = {(c.dataset, c.method, c.metric): c.cell for c in comparisons}
        pairs = list(dict.fromkeys((c.dataset, c.method) for c in comparisons))
        diff_cols = [col for col in cols if any((ds, m, col.key) in found for ds, m in pairs)]
        diff_body, previous = [], None
        for ds, m in pairs:
            cells = [ds if ds != previous else "", m]
            previous = ds
            for col in diff_cols:
                cell = found.get((ds, m, col.key))
                text = format_cell(cell, col, signed=True)
                excludes_zero = cell is not None and cell.low is not None and (cell.low > 0 or cell.high < 0)
                cells.append(text + (" *" if excludes_zero else ""))
            diff_body.append(cells)
        lines += ["", f"Difference from {baseline} (paired over the images both scored):", ""]
        lines += _table(["Dataset", "Method"] + [f"Δ{c.header}" for c in diff_cols], diff_body)
    lines += ["", _legend(boot, bool(comparisons))]
    lines += [note for key, note in FOOTNOTES.items() if any(c.key == key for c in cols)]
    return "\n".join(lines) + "\n"


def _legend(boot: Bootstrap | None, compared: bool) -> str:
    if boot is None or not boot.resamples:
        return "Cells: mean (images behind the cell)."
    text = (f"Cells: mean [{boot.confidence:.0%} bootstrap interval over images, {boot.resamples} resamples, "
            f"seed {boot.seed}] (images behind the cell).")
    return text + (" *: the difference's interval excludes 0." if compared else "")


def results_csv(rows: Sequence[ResultRow]) -> str:
    """CSV with raw (unrounded) values, the interval bounds and n per metric; empty cells for metrics that are off."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["dataset", "method"]
    for c in COLUMNS:
        header += [c.key, f"{c.key}_low", f"{c.key}_high", f"{c.key}_n"]
    writer.writerow(header + ["count", "failed"])
    for r in rows:
        line: list[Any] = [r.dataset, r.method]
        for c in COLUMNS:
            cell = r.cells.get(c.key)
            line += ["", "", "", ""] if cell is None else [repr(cell.value), _raw(cell.low), _raw(cell.high), cell.n]
        writer.writerow(line + [r.count, r.skipped])
    return buf.getvalue()


def comparisons_csv(comparisons: Sequence[Comparison]) -> str:
    """One line per (dataset, method, metric): the difference from the baseline, its bounds, n."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "method", "baseline", "metric", "difference", "low", "high", "n"])
    for c in comparisons:
        writer.writerow([c.dataset, c.method, c.baseline, c.metric, repr(c.cell.value), _raw(c.cell.low), _raw(c.cell.high), c.cell.n])
    return buf.getvalue()


def _raw(value: float | None) -> str:
    return "" if value is None else repr(value)

