"""The run's outputs from its per-image records: the table files, best/worst grids, W&B tables.

    results.md, results.csv          the table in the paper's layout (report.py formats it)
    per_image.jsonl, skipped.jsonl   every per-image record; pairs and images that could not be used
    grids/<dataset>__<method>__{best,worst}.png
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from magiceraser.atomic import atomic_write_bytes, atomic_write_text
from magiceraser.config import config_to_dict
from magiceraser.evaluation.config import EvalConfig, grid_stem
from magiceraser.evaluation.layout import method_dir, pairs_dir
from magiceraser.evaluation.pair_store import load_pair
from magiceraser.evaluation.report import ResultRow, best_and_worst, grid_image, results_csv
from magiceraser.imageio import decode_image, encode_image


def write_tables(out: Path, rows: Sequence[ResultRow], table: str, records: Sequence[dict], skipped: Sequence[dict]) -> None:
    """results.md (``table``), results.csv, per_image.jsonl and skipped.jsonl, each written atomically."""
    atomic_write_text(out / "results.md", table)
    atomic_write_text(out / "results.csv", results_csv(rows))
    atomic_write_text(out / "per_image.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(out / "skipped.jsonl", "".join(json.dumps(s) + "\n" for s in skipped))


def write_grids(cfg: EvalConfig, records: Sequence[dict]) -> list[Path]:
    """Best / worst ``grid_cases`` cases by PSNR per (dataset, method), from the stored pairs and images."""
    out = Path(cfg.out_dir)
    written = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    for (ds, method), recs in groups.items():
        best, worst = best_and_worst(recs, cfg.grid_cases)
        for name, cases in (("best", best), ("worst", worst)):
            if not cases:
                continue
            rows = []
            for r in cases:
                image, mask, target = load_pair(pairs_dir(out, ds), r["key"])
                erased = decode_image(method_dir(out, ds, method) / "images" / f"{r['key']}.png")
                rows.append((image, mask, erased, target, f"{r['key']} {r['psnr']:.2f} dB"))
            path = out / "grids" / f"{grid_stem(ds, method)}__{name}.png"
            atomic_write_bytes(path, encode_image(grid_image(rows), "png"))
            written.append(path)
    return written


def log_wandb(cfg: EvalConfig, rows: Sequence[ResultRow], records: Sequence[dict]) -> None:
    """The results and per-image tables as one W&B run (``wandb.enabled``)."""
    import wandb

    run = wandb.init(project=cfg.wandb.project, mode=cfg.wandb.mode, dir=cfg.out_dir,
                     name=cfg.wandb.run_name or Path(cfg.out_dir).name, config=config_to_dict(cfg))
    try:
        from magiceraser.evaluation.report import COLUMNS

        cols = ["dataset", "method"] + [c[0] for c in COLUMNS] + ["count"]
        run.log({"results": wandb.Table(columns=cols, data=[[r.dataset, r.method] + [r.values.get(c[0]) for c in COLUMNS] + [r.count] for r in rows])})
        keys = sorted({k for r in records for k in r})
        run.log({"per_image": wandb.Table(columns=keys, data=[[r.get(k) for k in keys] for r in records])})
    finally:
        run.finish()
