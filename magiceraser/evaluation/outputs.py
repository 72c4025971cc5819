"""The run's outputs from its per-image records: the table files, best/worst grids, lineage, W&B tables.

    results.md, results.csv          the table in the paper's layout, intervals and n per cell (report.py)
    comparisons.csv                  every method's paired difference from the baseline, per metric
    per_image.jsonl, skipped.jsonl   every per-image record (metrics, judges' verdicts); what could not be used
    grids/<dataset>__<method>__{best,worst}.png
    lineage.json                     per evaluated method with a trained_dir: the export's digest (the W&B
                                     model artifact's), its files' sha256 and the OLRD jobs it was trained on

With ``wandb.enabled`` the run logs the tables and uses the model artifact of every method with a
``trained_dir`` (built from the export's files: the digest the training run logged), so W&B links
each score to the model, its training run and the shards (:mod:`magiceraser.lineage`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from magiceraser.atomic import atomic_write_bytes, atomic_write_text
from magiceraser.config import config_to_dict
from magiceraser.evaluation.config import EvalConfig, grid_stem
from magiceraser.evaluation.console import log
from magiceraser.evaluation.grids import best_and_worst, grid_image
from magiceraser.evaluation.layout import method_dir, pairs_dir
from magiceraser.evaluation.pair_store import load_pair
from magiceraser.evaluation.report import COLUMNS, Comparison, ResultRow, comparisons_csv, results_csv
from magiceraser.imageio import decode_image, encode_image
from magiceraser.lineage import export_lineage, model_artifact
from magiceraser.wandb_runs import start_run, use_artifact

LINEAGE_NAME = "lineage.json"

# What the grids rank cases by, with the caption's unit: PSNR where the pairs have a ground truth,
# else the reference-free ReMOVE.
GRID_METRICS = {"psnr": "dB", "remove": "ReMOVE"}


def write_tables(out: Path, rows: Sequence[ResultRow], table: str, records: Sequence[dict], skipped: Sequence[dict],
                 comparisons: Sequence[Comparison] = ()) -> None:
    """results.md (``table``), results.csv, comparisons.csv, per_image.jsonl and skipped.jsonl, each written atomically."""
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.csv", results_csv(rows))
    atomic_write_text(out / "comparisons.csv", comparisons_csv(comparisons))
    atomic_write_text(out / "per_image.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(out / "skipped.jsonl", "".join(json.dumps(s) + "\n" for s in skipped))


def write_grids(cfg: EvalConfig, records: Sequence[dict]) -> list[Path]:
    """Best / worst ``grid_cases`` cases per (dataset, method) by PSNR (ReMOVE where no pair has a
    ground truth), from the stored pairs and images."""
    out = Path(cfg.out_dir)
    written = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    for (ds, method), recs in groups.items():
        metric = next((m for m in GRID_METRICS if any(r.get(m) is not None for r in recs)), None)
        if metric is None:
            continue
        best, worst = best_and_worst(recs, cfg.grid_cases, metric)
        for name, cases in (("best", best), ("worst", worst)):
            if not cases:
                continue
            rows = []
            for r in cases:
                image, mask, target = load_pair(pairs_dir(out, ds), r["key"])
                erased = decode_image(method_dir(out, ds, method) / "images" / f"{r['key']}.png")
                rows.append((image, mask, erased, target, f"{r['key']} {r[metric]:.2f} {GRID_METRICS[metric]}"))
            path = out / "grids" / f"{grid_stem(ds, method)}__{name}.png"
            atomic_write_bytes(path, encode_image(grid_image(rows), "png"))
            written.append(path)
    return written


def trained_exports(cfg: EvalConfig, evaluated: Iterable[str]) -> dict[str, str]:
    """Method name -> ``trained_dir`` of every evaluated method that erases with a trained export."""
    names = set(evaluated)
    return {m.name: m.trained_dir for m in cfg.methods if m.name in names and m.kind == "magiceraser" and m.trained_dir}


def write_lineage(out: Path, trained: Mapping[str, str]) -> dict:
    """``lineage.json``: per method of ``trained``, the export's digest and files and the jobs it was trained on.

    An export that cannot be read now (a method scored entirely from the cache after its folder was
    removed) is recorded with ``error`` instead, and said in one line: the table is still written.
    """
    methods = {}
    for name, path in trained.items():
        try:
            methods[name] = {"trained_dir": path, **export_lineage(path)}
        except (OSError, ValueError) as exc:
            log(f"lineage: cannot read the export {path} of method {name!r} ({exc}); lineage.json names no digest for it")
            methods[name] = {"trained_dir": path, "error": f"{type(exc).__name__}: {exc}"}
    record = {"methods": methods}
    atomic_write_text(out / LINEAGE_NAME, json.dumps(record, indent=2) + "\n")
    return record


def log_wandb(cfg: EvalConfig, rows: Sequence[ResultRow], records: Sequence[dict], comparisons: Sequence[Comparison] = (),
              lineage: Mapping | None = None) -> None:
    """The results (with interval bounds and n), comparisons and per-image tables as one W&B run (``wandb.enabled``),
    using the model artifact of every export ``lineage`` (``lineage.json``) names with a digest; ``lineage`` in its config."""
    import wandb

    lineage = dict(lineage or {})
    run = start_run(cfg.wandb, cfg.out_dir, "evaluate", Path(cfg.out_dir).name, {**config_to_dict(cfg), "lineage": lineage})
    try:
        for entry in lineage.get("methods", {}).values():
            if "export_digest" in entry:
                use_artifact(run, model_artifact(entry["trained_dir"]))
        cols = ["dataset", "method"] + [f"{c.key}{part}" for c in COLUMNS for part in ("", "_low", "_high", "_n")] + ["count"]
        data = []
        for r in rows:
            line = [r.dataset, r.method]
            for c in COLUMNS:
                cell = r.cells.get(c.key)
                line += [None] * 4 if cell is None else [cell.value, cell.low, cell.high, cell.n]
            data.append(line + [r.count])
        run.log({"results": wandb.Table(columns=cols, data=data)})
        if comparisons:
            run.log({"comparisons": wandb.Table(
                columns=["dataset", "method", "baseline", "metric", "difference", "low", "high", "n"],
                data=[[c.dataset, c.method, c.baseline, c.metric, c.cell.value, c.cell.low, c.cell.high, c.cell.n]
                      for c in comparisons])})
        keys = sorted({k for r in records for k in r})
        run.log({"per_image": wandb.Table(columns=keys, data=[[r.get(k) for k in keys] for r in records])})
    finally:
        run.finish()
