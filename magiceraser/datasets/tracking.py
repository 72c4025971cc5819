"""The data job's W&B run (``wandb.enabled``), logged by the driver once the output is complete.

What the run holds:

    config          the job's config (storage secrets masked) and its fingerprint with what it
                    depends on (``job.json``)
    summary         stats.json's counts: inputs, samples, skipped, shards, per stage, per skip
                    reason, retryable skips, images/s; the dataset artifact's name and digest
    skip_reasons    a table: reason, stage, retryable, count (over every shard of the output)
    preview         the grid ``magiceraser preview`` draws, of the first shard that holds samples
    throughput/*    images/s, inputs and samples done at each progress point of the driver (x axis
                    ``throughput/seconds``: seconds since the pipeline started)
    artifact        the dataset artifact (:mod:`magiceraser.lineage`): a reference to every shard
                    by URI with its sha256, the job fingerprint in its metadata

It is logged at the end of every run that completes the output, a resumed one too (W&B keeps
one artifact version per content: a rerun logs the same version). A W&B failure (no network
online, a full disk under ``wandb/``, a refused project) is one warning line: the shards are
complete and the job still succeeds. The run is written under ``OUT/wandb`` for a local output,
under ``./wandb`` (the working directory's) for an object-store one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from magiceraser.config import config_to_dict
from magiceraser.datasets.config import OLRDConfig
from magiceraser.datasets.job_messages import first_line, log
from magiceraser.datasets.shards import is_retryable
from magiceraser.lineage import written_dataset
from magiceraser.storage import Folder, public_options
from magiceraser.wandb_runs import start_run

STATS_IN_SUMMARY = ("inputs", "samples", "skipped", "shards", "stages", "skip_reasons", "retryable",
                    "processed_this_run", "elapsed_s", "images_per_s")


def log_job_run(cfg: OLRDConfig, out: Folder, stats: dict[str, Any], sidecars: Sequence[dict[str, Any]],
                progress: Sequence[Sequence[float]]) -> bool:
    """Log the run; False (after one warning line) when W&B failed. Never raises an ``Exception``."""
    try:
        _log(cfg, out, stats, sidecars, progress)
        return True
    except Exception as exc:
        log(f"W&B: could not log this job's run ({type(exc).__name__}: {first_line(exc)}); "
            f"the shards in {out} are complete and unaffected")
        return False


def skip_rows(sidecars: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """``[reason, stage, retryable, count]`` over every skip record, most frequent first."""
    counts = Counter((rec["reason"], rec["stage"], is_retryable(rec)) for sc in sidecars for rec in sc.get("skips", []))
    return [[reason, stage, retryable, n] for (reason, stage, retryable), n in
            sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _log(cfg: OLRDConfig, out: Folder, stats: dict[str, Any], sidecars: Sequence[dict[str, Any]],
         progress: Sequence[Sequence[float]]) -> None:
    import wandb

    version = written_dataset(out, sidecars)
    job = {k: v for k, v in (version.job if version else {}).items() if k != "config"}
    config = {**config_to_dict(cfg), "storage_options": public_options(cfg.storage_options),
              "job_fingerprint": job.get("fingerprint"), "job": job}
    run_dir = Path.cwd() if out.remote else out.path  # W&B writes files: an object-store output has no place for them
    run = start_run(cfg.wandb, run_dir, "olrd", out.given.rstrip("/").rsplit("/", 1)[-1], config)
    try:
        run.summary.update({k: stats.get(k) for k in STATS_IN_SUMMARY})
        run.log({"skip_reasons": wandb.Table(columns=["reason", "stage", "retryable", "count"], data=skip_rows(sidecars))})
        preview = _preview(out, sidecars)
        if preview is not None:
            run.log({"preview": wandb.Image(preview, caption="I | blended | mask outline, per sample (magiceraser preview)")})
        run.define_metric("throughput/seconds")
        run.define_metric("throughput/*", step_metric="throughput/seconds")
        for seconds, done, samples, rate in progress:
            run.log({"throughput/seconds": seconds, "throughput/inputs_done": done, "throughput/samples": samples,
                     "throughput/images_per_s": rate})
        if version is None:
            log(f"W&B: {out} has no job.json; no dataset artifact logged")
        else:
            run.log_artifact(version.artifact())
            run.summary.update({"dataset_artifact": version.artifact_name, "dataset_digest": version.digest})
    finally:
        run.finish()


def _preview(out: Folder, sidecars: Sequence[dict[str, Any]]) -> Any:
    """The preview grid of the first shard with samples (None, with a warning line, where it cannot be drawn)."""
    from magiceraser.datasets.preview import render_shard

    first = next((sc for sc in sidecars if sc.get("samples")), None)
    if first is None:
        return None
    try:
        return render_shard(out.url(first["tar"]))
    except Exception as exc:  # the preview is an illustration: the run is logged without it
        log(f"W&B: no preview of {first['tar']} ({type(exc).__name__}: {first_line(exc)})")
        return None
