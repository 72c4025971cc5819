"""The ``olrd`` driver loop: iterate the pipeline, write each shard once all its inputs are back.

Rows come back from the Ray Data pipeline (``ray_pipeline.py``) in any order; the assembler
(``assembler.py``) holds them per shard, spilling to disk past ``max_open_shards``, and each
complete shard is written at once, tar and sidecar, atomically, after checking that the job
still holds the output's lock. :class:`Progress` prints the periodic progress line and keeps
the timeline for stats.json.

:func:`run_with_node_loss_retries` survives a lost node (or actor, worker, object): the shards
already written stay, the unfinished ones are planned again and run on what is left of the
cluster, up to ``node_loss_retries`` times. A shard's bytes depend only on its inputs, so the
output equals an uninterrupted run's.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from magiceraser.datasets import ray_pipeline  # called as ray_pipeline.X: tests replace Ray there
from magiceraser.datasets.config import OLRDConfig
from magiceraser.datasets.inputs import InputItem, shard_name
from magiceraser.datasets.job_messages import first_line, log
from magiceraser.datasets.node_loss import LostActorWatch, is_cluster_fault
from magiceraser.datasets.shards import ShardResult, as_folder, write_shard
from magiceraser.lock import OutputLock
from magiceraser.storage import Folder
from magiceraser.write_errors import writing


class Progress:
    """Periodic one-line report (inputs done, samples, skips per reason, images/s) and a timeline.

    Each row carries ``done_at``, the wall-clock time its last stage finished it (stages.py).
    The timeline for stats.json, ``[[seconds since start, inputs finished], ...]``, is built from
    those times, so it shows when the workers finished the images, not when the driver got round
    to them; it has at most ``max_points + 1`` points whatever the run's length. Every printed
    line is also kept as a progress point (:attr:`points`: seconds since start, inputs done,
    samples, images/s), the throughput over time the job's W&B run shows.
    """

    def __init__(self, total: int, interval_s: float):
        self.total, self.interval = total, interval_s
        self.t0 = self.last = time.monotonic()
        self.wall0 = time.time()
        self.done = self.samples = 0
        self.reasons: Counter[str] = Counter()
        self.finished = array("d")  # seconds after wall0, one per input; 8 bytes each
        self.points: list[list[float]] = []  # [seconds since start, done, samples, images/s] per printed line

    def update(self, reason: str, done_at: float | None = None) -> None:
        self.done += 1
        if reason:
            self.reasons[reason] += 1
        else:
            self.samples += 1
        self.finished.append((done_at if done_at is not None else time.time()) - self.wall0)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.report()

    def report(self) -> None:
        """Print the progress line and keep its figures as a progress point."""
        self.points.append([round(time.monotonic() - self.t0, 3), self.done, self.samples, round(self.rate, 3)])
        print(self.line(), file=sys.stderr, flush=True)

    def forget(self, done_at: list[float]) -> None:
        """Un-count rows that were dropped (their shard is processed again after a lost node)."""
        if not done_at:
            return
        drop = Counter(t - self.wall0 for t in done_at)
        kept = array("d")
        for t in self.finished:
            if drop[t] > 0:
                drop[t] -= 1
            else:
                kept.append(t)
        self.finished = kept
        self.done -= len(done_at)

    def timeline(self, max_points: int = 1000) -> list[list[float]]:
        """``[t, n]`` points: ``n`` inputs were finished ``t`` seconds after the start; starts at [0, 0]."""
        times = sorted(self.finished)
        if not times:
            return [[0.0, 0]]
        counts = sorted({round(k * len(times) / max_points) for k in range(1, max_points + 1)})
        return [[0.0, 0], *([round(max(times[n - 1], 0.0), 3), n] for n in counts if n > 0)]

    @property
    def rate(self) -> float:
        """Images/s since the first image was finished: the start-up (Ray, loading the models) is not counted.

        0 until two images are done (one finish time gives no rate).
        """
        if self.done < 2 or not self.finished:
            return 0.0
        first = min(self.finished) + self.wall0
        return (self.done - 1) / max(time.time() - first, 1e-9)

    def line(self) -> str:
        skips = ", ".join(f"{k} {v}" for k, v in self.reasons.most_common()) or "none"
        if self.done >= 2:
            speed = f"{self.rate:.2f} images/s"
        elif self.done:
            speed = f"first image after {min(self.finished):.0f} s of start-up"
        else:
            speed = "starting up"
        return (f"[olrd] {self.done}/{self.total} images, {self.samples} samples, "
                f"{sum(self.reasons.values())} skipped ({skips}), {speed}")


# The driver's counters in stats.json (see run_with_node_loss_retries).
COUNTERS = ("max_pending_rows", "spilled_shards", "lost_actors_given_up")


def no_work_figures() -> dict[str, Any]:
    """The driver's figures of a run that found every shard done."""
    return {"timeline": [], "progress": [], "node_loss_retries": 0, **dict.fromkeys(COUNTERS, 0)}


def run_with_node_loss_retries(cfg: OLRDConfig, todo: list[InputItem], out: str | Path | Folder, job: dict,
                               sidecars: dict[int, dict], lock: OutputLock | None = None) -> dict[str, Any]:
    """Run the pipeline over ``todo``, writing each shard once all its inputs are back.

    Returns the driver's figures: ``timeline``, ``progress`` (the progress points, for W&B),
    ``node_loss_retries`` (reruns after a loss), ``max_pending_rows`` (most rows held in memory at once, at most
    ``max_open_shards * samples_per_shard``), ``spilled_shards`` and ``lost_actors_given_up``
    (actors lost with their node that no live node had room for: :mod:`node_loss`).

    A lost node (or actor, worker, object: :func:`is_cluster_fault`, or an actor given up by
    :class:`LostActorWatch`) does not end the command:
    the shards already written stay, the rows of unfinished shards are dropped, and the
    unfinished shards are planned again and run on what is left of the cluster, at most
    ``node_loss_retries`` times, each retry logged. Every shard's bytes depend only on its inputs,
    so the output equals an uninterrupted run's.
    """
    out = as_folder(out)
    progress = Progress(len(todo), cfg.progress_interval_s)
    written: set[int] = set()
    figures = dict.fromkeys(COUNTERS, 0)
    attempt = 0
    while True:
        try:
            _run_attempt(cfg, todo, out, job, sidecars, lock, progress, written, attempt > 0, figures)
            break
        except Exception as exc:
            if not is_cluster_fault(exc) or attempt >= cfg.node_loss_retries:
                raise
            attempt += 1
            todo = [it for it in todo if it.shard not in written]
            log(f"lost part of the cluster ({type(exc).__name__}: {first_line(exc)}); {len(written)} shards written "
                f"so far are kept; re-planning the {len({it.shard for it in todo})} unfinished shards ({len(todo)} "
                f"inputs), retry {attempt} of {cfg.node_loss_retries} on the nodes still alive (actor pools from 1 actor up)")
            time.sleep(cfg.node_loss_settle_s)  # let Ray release the failed attempt's actors first
    progress.report()
    return {"timeline": progress.timeline(), "progress": progress.points, "node_loss_retries": attempt, **figures}


def _run_attempt(cfg: OLRDConfig, todo: list[InputItem], out: Folder, job: dict, sidecars: dict[int, dict],
                 lock: OutputLock | None, progress: Progress, written: set[int], elastic: bool,
                 figures: dict[str, int]) -> None:
    """One pass of the pipeline over ``todo``; every completed shard is written and added to ``written``.

    On an exception the rows of unfinished shards are dropped (and their spill files removed):
    a rerun processes those shards from scratch.
    """
    from magiceraser.datasets.assembler import ShardAssembler

    expected = Counter(it.shard for it in todo)
    # Spill files next to the shards on a local output (swept with its temporaries); an object
    # store has no place for temporaries: a local temporary folder, removed when the pass ends.
    spill = out.path if not out.remote else Path(tempfile.mkdtemp(prefix="olrd-spill-"))
    assembler = ShardAssembler(spill, expected, cfg.max_open_shards)
    ds = ray_pipeline.build_dataset(cfg, todo, ray_pipeline.segmenter_id(cfg), elastic)
    watch = LostActorWatch(cfg.lost_actor_timeout_s, log=log)  # a lost actor Ray would wait for forever
    try:
        with watch:
            # Whole blocks at a time (cheaper than iter_rows); each row is one input.
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                columns = list(batch)
                for values in zip(*(batch[c] for c in columns)):
                    row = dict(zip(columns, values))
                    progress.update(row["reason"], float(row["done_at"]))
                    rows = assembler.add(row)
                    if rows is not None:
                        _write(cfg, out, job, sidecars, lock, int(row["shard"]), rows)
                        written.add(int(row["shard"]))
    except BaseException:
        progress.forget(assembler.discard())
        raise
    finally:
        figures["max_pending_rows"] = max(figures["max_pending_rows"], assembler.max_pending_rows)
        figures["spilled_shards"] += assembler.spilled_shards
        figures["lost_actors_given_up"] += len(watch.given_up)
        if out.remote:
            shutil.rmtree(spill, ignore_errors=True)
    if assembler.open_shards():  # cannot happen unless a stage broke the one-row-per-input rule
        raise RuntimeError(f"shards {assembler.open_shards()} did not receive all their inputs")


def _write(cfg: OLRDConfig, out: Folder, job: dict, sidecars: dict[int, dict], lock: OutputLock | None, shard: int,
           rows: list[dict[str, Any]]) -> None:
    from magiceraser.datasets.stages import add_row

    result = ShardResult(shard=shard, inputs=len(rows))
    for r in rows:
        add_row(result, r, cfg.image_format)
    if lock is not None:
        lock.check()  # never write over the shards of a job that took our lock over
    with writing(out.url(f"{shard_name(shard)}.tar"), f"shard {shard}"):  # a full disk: one line, no partial shard
        sidecars[shard] = write_shard(out, result, job)
