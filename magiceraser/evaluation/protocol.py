"""The paper's protocol as one object: ``Evaluation(cfg)()`` runs datasets x methods and returns an
:class:`EvaluationResult`, the way a diffusers pipeline is one class with one ``__call__``.

Data flow (everything under ``out_dir``, every file written atomically; the parts own their files):

    pairs/<dataset>/<key>/{input,mask,target}.png   pair_store.py: letterboxed pairs, built once (manifest.json last)
                                                    (folder names: magiceraser.keys.file_name_key of the labels)
    methods/<dataset>/<method>/images/<key>.png     method_run.py: erased images
    methods/<dataset>/<method>/metrics/<key>.json   method_run.py + scoring.py: per-image metrics + their cache key
    methods/<dataset>/<method>/method.json          method_run.py: method deps and metric settings of the last run
    methods/<dataset>/<method>/inception_*.npz      fid.py: FID features, keyed on the images they came from
    per_image.jsonl, skipped.jsonl                  outputs.py: all per-image records; what could not be used
    results.md, results.csv                         outputs.py + report.py: the table in the paper's layout,
                                                    every cell with its bootstrap interval and n (bootstrap.py)
    comparisons.csv                                 report.py: each method minus the baseline, paired bootstrap
    grids/<dataset>__<method>__{best,worst}.png     outputs.py + grids.py: best / worst cases by PSNR (ReMOVE
                                                    where the pairs have no ground truth)
    lineage.json                                    outputs.py + magiceraser.lineage: per evaluated method with a
                                                    trained_dir, the export's digest (the W&B model artifact's)
                                                    and the OLRD jobs it was trained on

Every cached file carries a key of what it depends on (``magiceraser.evaluation.cache``): pairs
the dataset config, size and source files; erased images and per-image metrics the pair's bytes,
the method's config and, per metric, the metric settings; FID features the images they came from.
A rerun reuses what still matches and recomputes the rest, logging how many were invalidated and
why: a cached image with missing or stale metrics (e.g. LPIPS switched on later) is scored without
erasing again; a changed pair or method config erases again. A resume never reports a stale score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from magiceraser.config import save_config
from magiceraser.devices import resolve_device
from magiceraser.evaluation.cache import pair_digest
from magiceraser.evaluation.config import EvalConfig
from magiceraser.evaluation.console import log
from magiceraser.evaluation.fid import FidSet, fid_features
from magiceraser.evaluation.layout import pairs_dir
from magiceraser.evaluation.method_run import run_method
from magiceraser.evaluation.outputs import (
    log_wandb,
    trained_exports,
    write_grids,
    write_lineage,
    write_tables,
)
from magiceraser.evaluation.pair_store import materialise_pairs
from magiceraser.evaluation.report import (
    Bootstrap,
    Cell,
    Comparison,
    ResultRow,
    aggregate,
    compare,
    fid_cell,
    results_markdown,
)
from magiceraser.evaluation.scoring import Scorer
from magiceraser.lock import OutputLock
from magiceraser.write_errors import writing


@dataclass
class EvaluationResult:
    """What one evaluation produced; the files under ``out_dir`` hold the same, for later readers."""

    out_dir: Path
    rows: list[ResultRow] = field(default_factory=list)
    """The table, one row per (dataset, method) that ran, in config order."""
    table: str = ""
    """The table as Markdown (``results.md``)."""
    records: list[dict] = field(default_factory=list)
    """One record per (dataset, method, image): metrics, prompt, tag, seconds, or ``error`` (``per_image.jsonl``)."""
    skipped: list[dict] = field(default_factory=list)
    """Pairs that could not be built and images a method failed on, with reasons (``skipped.jsonl``)."""
    fid: dict[tuple[str, str], Cell] = field(default_factory=dict)
    """FID per (dataset, method) with its interval, where computed."""
    comparisons: list[Comparison] = field(default_factory=list)
    """Every method minus the baseline, per dataset and metric (``comparisons.csv``)."""
    grids: list[Path] = field(default_factory=list)
    """The best / worst grid files written."""
    lineage: dict = field(default_factory=dict)
    """Per evaluated method with a trained_dir, the export's digest and the jobs it was trained on (``lineage.json``)."""
    not_evaluated: list[str] = field(default_factory=list)
    """``dataset/method: reason`` for every method that could not run."""
    missing: dict[str, str] = field(default_factory=dict)
    """Required (not ``optional``) methods that could not run -> why: the table lacks their rows."""
    nothing_to_do: bool = False
    """The config listed no datasets or no methods."""

    @property
    def per_image_path(self) -> Path:
        return self.out_dir / "per_image.jsonl"

    @property
    def exit_code(self) -> int:
        """2: nothing to do, or a required method missing; 1: no row at all; 0: a complete table."""
        if self.nothing_to_do or self.missing:
            return 2
        return 0 if self.rows else 1


class Evaluation:
    """``Evaluation(cfg)()``: materialise pairs, erase, score, cache, tabulate; see the module docstring.

    Nothing is loaded or written until the call, so building one is free; the call raises
    ``MissingWeightsError`` / ``FileNotFoundError`` for missing weights or data (before any work
    where they can be known up front).
    """

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg

    def __call__(self) -> EvaluationResult:
        out = Path(self.cfg.out_dir)
        with writing(out, "the evaluation's outputs"):
            out.mkdir(parents=True, exist_ok=True)
        # One evaluation per out_dir: two would write the same tables and caches (refused, naming the owner).
        with OutputLock(out, log=log):
            return self._run(out)

    def _run(self, out: Path) -> EvaluationResult:
        cfg = self.cfg
        save_config(cfg, out / "config.yaml")
        device = resolve_device(cfg.device, key="device")
        if not cfg.datasets or not cfg.methods:
            log("nothing to do: the config lists no datasets or no methods")
            return EvaluationResult(out, nothing_to_do=True)
        scorer = Scorer(cfg.metrics, device)  # missing LPIPS weights / segmenter: fail before any work
        inception = None
        if cfg.metrics.fid:
            from magiceraser.evaluation.perceptual import InceptionFeatures

            inception = InceptionFeatures(cfg.metrics.fid_inception_weights or None, device=device)
        result = EvaluationResult(out)
        order: list[tuple[str, str]] = []
        fid_sets: dict[tuple[str, str], FidSet] = {}
        boot = Bootstrap(cfg.bootstrap.resamples, cfg.bootstrap.confidence, cfg.bootstrap.seed)
        for ds in cfg.datasets:
            root = pairs_dir(out, ds.name)
            keys, ds_skipped = materialise_pairs(ds, root, cfg.size)
            result.skipped += ds_skipped
            if not keys:
                log(f"{ds.name}: no usable pairs; see skipped.jsonl")
                continue
            digests = {k: pair_digest(root, k) for k in keys}
            for mcfg in cfg.methods:
                if not mcfg.enabled:
                    continue
                recs, reason = run_method(cfg, ds, mcfg, keys, digests, scorer, device)
                if reason is not None:
                    log(f"skipping {'optional ' if mcfg.optional else ''}method {mcfg.name!r} on {ds.name}: {reason}")
                    result.not_evaluated.append(f"{ds.name}/{mcfg.name}: {reason}")
                    if not mcfg.optional:
                        result.missing.setdefault(mcfg.name, reason)
                    continue
                order.append((ds.name, mcfg.name))
                result.records += recs
                result.skipped += [{"dataset": ds.name, "method": mcfg.name, "key": r["key"], "reason": "method_failed",
                                    "detail": r["error"]} for r in recs if "error" in r]
                if inception is not None:
                    scored = [r["key"] for r in recs if "error" not in r]
                    features = fid_features(cfg, ds.name, mcfg.name, scored, inception)
                    if features is not None:
                        fid_sets[(ds.name, mcfg.name)] = features
                        result.fid[(ds.name, mcfg.name)] = fid_cell(features, boot)
        result.rows = aggregate(result.records, result.fid, order, boot)
        baseline = cfg.bootstrap.baseline or next((m.name for m in cfg.methods if m.enabled), "")
        result.comparisons = compare(result.records, baseline, boot, fid_sets, order)
        result.table = results_markdown(result.rows, result.comparisons, boot)
        write_tables(out, result.rows, result.table, result.records, result.skipped, result.comparisons)
        if cfg.grid_cases:
            result.grids = write_grids(cfg, result.records)
        result.lineage = write_lineage(out, trained_exports(cfg, (method for _, method in order)))
        if cfg.wandb.active:
            log_wandb(cfg, result.rows, result.records, result.comparisons, result.lineage)
        return result
