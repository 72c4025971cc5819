"""``magiceraser olrd``: build OLRD shards with Ray Data (local Ray, or a cluster via ``ray job submit``).

:func:`run_olrd` ties the steps together, in this order:

1. :func:`~magiceraser.datasets.preflight.preflight` checks the settings, reading only, and
   :func:`~magiceraser.datasets.preflight.prepare_output` creates the output and proves it writable.
2. ``job.lock`` (``lock.py``) is taken before anything in the output is touched, and released
   at the end or on any error: one job per output, a second one refuses at once.
3. The job state (``job_state.py``): ``job.json`` and the finished shards' sidecars must be this
   job's; the shards still missing (with ``retry_failed=true``, also those holding retryable
   skips) are planned, so a rerun only builds what is missing, with the same bytes.
4. Ray is joined or started (``ray_pipeline.py``) and the driver (``driver.py``) writes each
   shard, tar and sidecar, as soon as all its inputs are back, rerunning the unfinished shards
   after a lost node.
5. ``skipped.jsonl`` and ``stats.json`` are rewritten from all sidecars; ``stats.json`` last: it
   marks a complete output.
6. With ``wandb.enabled``, the job's W&B run (``tracking.py``): config, fingerprint, counts, skip
   reasons, a preview, throughput and the dataset artifact referencing every shard; a W&B failure
   is a warning, the job still succeeds.

The output may be an object store (``output=s3://bucket/prefix``, any fsspec URL; credentials
and endpoint from the AWS variables, fsspec's configuration or ``storage_options``): every file
is then written once under its final key, a shard is final when its sidecar object exists, the
resume scan lists the prefix once and reads the sidecars, the lock uses conditional requests,
and spill files go to a local temporary folder (``magiceraser.storage``).

:func:`main` is the command line: a user error is one line with exit code 2, Ctrl-C one line
naming the complete shards kept and the command that continues.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from magiceraser import __version__
from magiceraser.datasets import ray_pipeline
from magiceraser.datasets.config import OLRDConfig
from magiceraser.datasets.driver import no_work_figures, run_with_node_loss_retries
from magiceraser.datasets.inputs import InputItem, num_shards
from magiceraser.datasets.job_messages import JobError, first_line, log
from magiceraser.datasets.job_state import (
    check_job_file,
    check_sidecars,
    job_fingerprint,
    scan_sidecars,
    shards_to_build,
    write_job_file,
)
from magiceraser.datasets.preflight import preflight, prepare_output
from magiceraser.datasets.shards import retryable_skips, summarize, write_skip_log
from magiceraser.errors import INTERRUPTED_EXIT_CODE, Interrupted, UserError
from magiceraser.lock import OutputLock
from magiceraser.quiet import filtered_stderr
from magiceraser.storage import Folder
from magiceraser.write_errors import writing


def run_olrd(cfg: OLRDConfig) -> dict[str, Any]:
    """Build (or finish) the shards of ``cfg.output``; returns the stats written to stats.json.

    Raises :class:`UserError` (one-line messages) before any expensive work: a setting
    :func:`preflight` refuses, an output that is not writable, locked by another job or holding
    another job's shards.
    """
    items = preflight(cfg)
    out = Folder(cfg.output, cfg.storage_options)
    prepare_output(out)
    # The lock comes first: a second job must not even sweep the running one's temporaries.
    lock = OutputLock(out, stale_after_s=cfg.lock_stale_s, log=log)
    try:
        lock.acquire()
    except PermissionError as exc:
        raise JobError(f"output={str(out)!r} is not writable ({first_line(exc) or 'permission denied'}): "
                       "choose a location these credentials may write to") from None
    try:
        return _run_locked(cfg, out, lock, items)
    finally:
        lock.release()


def _run_locked(cfg: OLRDConfig, out: Folder, lock: OutputLock, items: list[InputItem]) -> dict[str, Any]:
    out.sweep_temporaries()  # leftovers of a killed writer (local folders; object stores hold none)
    job = job_fingerprint(cfg, items)
    has_job_file = check_job_file(out, job)
    n_shards = num_shards(len(items), cfg.samples_per_shard)
    sidecars = scan_sidecars(out, n_shards)
    check_sidecars(out, sidecars, job)
    if not has_job_file:
        write_job_file(out, job, cfg)
    build = shards_to_build(n_shards, sidecars, cfg.retry_failed)
    retried = [s for s in build if s in sidecars]
    build_set = set(build)
    todo = [it for it in items if it.shard in build_set]
    print(f"[olrd] {len(items)} inputs in {n_shards} shards; {n_shards - len(build)} shards already done"
          + (f", {len(retried)} rebuilt for their retryable skips (retry_failed=true)" if retried else "")
          + f", {len(todo)} inputs to process -> {out}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    driver = no_work_figures()
    if todo:
        started = ray_pipeline.init_ray(cfg)
        try:
            with filtered_stderr():  # entered after Ray started its processes (quiet.py: a known C++ line)
                driver = run_with_node_loss_retries(cfg, todo, out, job, sidecars, lock)
        except KeyboardInterrupt:  # Ctrl-C: the driver's sidecars are every complete shard (a rerun skips them)
            raise Interrupted(f"interrupted; {len(sidecars)} of {n_shards} shards are complete in {out} and kept") from None
        finally:
            if started:
                import ray

                ray.shutdown()
    elapsed = time.monotonic() - t0
    ordered = [sidecars[s] for s in range(n_shards)]
    with writing(out.url("skipped.jsonl"), "the skip log"):
        write_skip_log(out, ordered)
    stats = {
        **summarize(ordered),
        "processed_this_run": len(todo),
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(len(todo) / elapsed, 3) if todo and elapsed > 0 else None,
        "segmenter": ray_pipeline.segmenter_id(cfg),
        "captioner": cfg.captioner.model,
        "version": __version__,
        "timeline": driver["timeline"],  # [seconds since the pipeline started, inputs done] (this run)
        "driver": {k: v for k, v in driver.items() if k not in ("timeline", "progress")},  # reruns after a lost node, pending rows
    }
    lock.check()
    with writing(out.url("stats.json"), "stats.json"):
        out.write_json("stats.json", stats)  # last: marks the output complete
    print(f"[olrd] done: {stats['samples']} samples, {stats['skipped']} skipped {stats['skip_reasons']} in "
          f"{n_shards} shards under {out}", file=sys.stderr, flush=True)
    if stats["retryable"]:
        print(_retry_hint(ordered), file=sys.stderr, flush=True)
    if cfg.wandb.active:  # after stats.json: the output is complete whatever W&B does (a failure is one warning)
        from magiceraser.datasets.tracking import log_job_run

        log_job_run(cfg, out, stats, ordered, driver["progress"])
    return stats


def _retry_hint(sidecars: list[dict[str, Any]]) -> str:
    """The end-of-run line about skips a rerun may turn into samples."""
    reasons = Counter(rec["reason"] for sc in sidecars for rec in retryable_skips(sc))
    shards = sum(1 for sc in sidecars if retryable_skips(sc))
    listed = ", ".join(f"{k} {v}" for k, v in reasons.most_common())
    return (f"[olrd] {sum(reasons.values())} skips in {shards} shards may succeed on a rerun ({listed}): "
            "rerun with retry_failed=true to rebuild exactly those shards")


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli_args import config_argparser, load_cli_config, user_error_exit

    parser = config_argparser("olrd", "Build OLRD training shards (segment, shift+blend, caption) on Ray.")
    args = parser.parse_args(argv)
    cfg = load_cli_config(OLRDConfig, args)
    try:
        run_olrd(cfg)
    except (Interrupted, KeyboardInterrupt) as exc:  # Ctrl-C: one line, what was kept and the command that continues
        kept = str(exc) if isinstance(exc, Interrupted) else f"interrupted; the complete shards in {cfg.output} are kept"
        again = "magiceraser olrd " + shlex.join(sys.argv[1:] if argv is None else argv)
        print(f"magiceraser olrd: {kept}; to continue: {again}", file=sys.stderr, flush=True)
        return INTERRUPTED_EXIT_CODE
    except (UserError, OSError) as exc:  # here too, not only in cli.main: tests and scripts call this main directly
        code = user_error_exit("olrd", exc, args)
        if code is None:
            raise
        return code
    return 0
