"""The job's state on disk without Ray: sidecar fingerprints, retryable skips, the output lock.

An output is faked with the real shard writer (tars + sidecars of a given job), so the driver's
resume logic runs as in a real job; where shards must be (re)built, the Ray pipeline is replaced
by rows made in-process (``FakeDataset``), which is all the driver reads from it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from magiceraser.config import load_config
from magiceraser.datasets import job_state, olrd_job, ray_pipeline
from magiceraser.datasets.config import OLRDConfig
from magiceraser.datasets.inputs import list_inputs
from magiceraser.datasets.job_messages import JobError
from magiceraser.datasets.shards import Sample, ShardResult, Skip, write_shard
from magiceraser.lock import LockHeld

N_INPUTS, PER_SHARD = 6, 2  # 3 shards


@pytest.fixture
def setup(tmp_path):
    """An input folder (files are never decoded here), its annotations, a config file and an output path."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(N_INPUTS):
        (images / f"img{i}.png").write_bytes(b"never decoded in these tests")
    (tmp_path / "panoptic").mkdir()  # annotations are checked before a job starts, never read here
    (tmp_path / "panoptic.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"img{i}.png"} for i in range(N_INPUTS)],
        "annotations": [{"image_id": i, "file_name": f"img{i}.png", "segments_info": []} for i in range(N_INPUTS)]}))
    config = tmp_path / "olrd.yaml"
    config.write_text(json.dumps({
        "input": str(images), "samples_per_shard": PER_SHARD, "image_format": "png", "progress_interval_s": 1000,
        "segmenter": {"backend": "coco_panoptic", "annotations": str(tmp_path / "panoptic.json")},
        "captioner": {"backend": "transformers", "model": "unused"},
    }))
    return config, tmp_path / "out"


def _cfg(config: Path, out: Path, *overrides: str) -> OLRDConfig:
    return load_config(OLRDConfig, config, [f"output={out}", *overrides])


def _fake_output(config: Path, out: Path, *overrides: str, skips: dict[int, str] | None = None) -> dict:
    """Write every shard of the job ``overrides`` describe, as the job would; ``skips``: input index -> reason."""
    cfg = _cfg(config, out, *overrides)
    items = list_inputs(cfg.input, cfg.samples_per_shard)
    job = job_state.job_fingerprint(cfg, items)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(job))
    for shard in range(-(-len(items) // cfg.samples_per_shard)):
        result = ShardResult(shard=shard, inputs=0)
        for it in (it for it in items if it.shard == shard):
            result.inputs += 1
            if skips and it.index in skips:
                result.skips.append(Skip(it.source, it.key, skips[it.index], "segment", "RuntimeError: boom"))
            else:
                result.samples.append(Sample(it.key, {"json": json.dumps({"seed": cfg.seed}).encode()}))
        write_shard(out, result, job)
    return job


def _tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("olrd-*.tar"))}


class FakeDataset:
    """What ``build_dataset`` returns, for the driver: one numpy batch per input, every input a sample."""

    def __init__(self, items, gate: threading.Event | None = None):
        self.items, self.gate = items, gate

    def iter_batches(self, batch_size=None, batch_format="numpy"):
        if self.gate is not None:
            assert self.gate.wait(20), "the test never opened the gate"
        for it in self.items:
            meta = json.dumps({"key": it.key, "rebuilt": True})
            row = {"source": it.source, "key": it.key, "index": it.index, "shard": it.shard, "reason": "",
                   "stage": "", "message": "", "original": b"o", "blended": b"b", "mask": b"m", "meta": meta,
                   "done_at": time.time()}
            yield {k: np.asarray([v], dtype=object if isinstance(v, (str, bytes)) else None) for k, v in row.items()}


@pytest.fixture
def fake_ray(monkeypatch):
    """Run the driver without Ray; records which inputs it was asked to build."""
    built: list = []
    gate: dict[str, threading.Event | None] = {"event": None}

    def build_dataset(cfg, items, segmenter_name, elastic=False):
        built.extend(items)
        return FakeDataset(items, gate["event"])

    monkeypatch.setattr(ray_pipeline, "init_ray", lambda cfg: False)
    monkeypatch.setattr(ray_pipeline, "build_dataset", build_dataset)
    return built, gate


# --- finding 1: a shard is done only when its sidecar carries this job's fingerprint -------------


def test_shards_of_another_seed_are_refused_even_without_job_json(setup, capsys):
    config, out = setup
    _fake_output(config, out, "seed=0")
    (out / "job.json").unlink()
    before = _tars(out)
    rc = olrd_job.main(["--config", str(config), f"output={out}", "seed=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("magiceraser olrd: ") and "seed: 0 -> 1" in err[0], err
    assert "olrd-000000.json" in err[0] and "2 more of 3 shards" in err[0]
    assert not (out / "job.json").exists(), "no job.json may claim seed 1 over seed-0 shards"
    assert not (out / "stats.json").exists()
    assert _tars(out) == before


def test_a_foreign_sidecar_is_refused_under_a_matching_job_json(setup, tmp_path):
    config, out = setup
    _fake_output(config, out, "seed=0")
    other = tmp_path / "other"
    _fake_output(config, other, "seed=0", "compose.max_thing_overlap=0.3")
    for ext in ("tar", "json"):  # one shard of another job copied in
        (out / f"olrd-000001.{ext}").write_bytes((other / f"olrd-000001.{ext}").read_bytes())
    with pytest.raises(JobError, match=r"olrd-000001\.json .*compose\.max_thing_overlap: 0\.3 -> "):
        olrd_job.run_olrd(_cfg(config, out, "seed=0"))


def test_same_job_without_job_json_resumes_and_rewrites_it(setup, fake_ray):
    config, out = setup
    _fake_output(config, out, "seed=0")
    (out / "job.json").unlink()
    stats = olrd_job.run_olrd(_cfg(config, out, "seed=0"))
    assert stats["processed_this_run"] == 0 and stats["samples"] == N_INPUTS
    assert json.loads((out / "job.json").read_text())["seed"] == 0


def test_an_unreadable_job_json_is_one_line_naming_the_file(setup, capsys):
    config, out = setup
    _fake_output(config, out)
    (out / "job.json").write_text("{not json")
    assert olrd_job.main(["--config", str(config), f"output={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / 'job.json'} is not a job record" in err[0], err


def test_changed_settings_are_named_with_old_and_new_values():
    old = {"fingerprint": "a", "seed": 0, "compose": {"max_thing_overlap": 0.1, "min_background_share": 0.95}}
    new = {"fingerprint": "b", "seed": 7, "compose": {"max_thing_overlap": 0.2, "min_background_share": 0.95}}
    assert job_state.describe_changes(old, new) == "compose.max_thing_overlap: 0.1 -> 0.2, seed: 0 -> 7"
    assert job_state.describe_changes({"fingerprint": "a"}, new) == "unknown"  # a sidecar with only the digest


# --- finding 2: transient failures are retryable, and retry_failed rebuilds exactly their shards ---


def test_model_exception_is_a_retryable_skip_and_bad_input_a_final_one(tmp_path):
    from magiceraser.datasets.inputs import make_items
    from magiceraser.datasets.stages import SegmentStage, add_row, initial_rows, read_images

    class CudaFault:
        def segment(self, images):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    from magiceraser.imageio import encode_image

    (tmp_path / "a.png").write_bytes(b"")  # an empty file: a fact about the input
    (tmp_path / "b.png").write_bytes(encode_image(np.full((64, 64, 3), 90, np.uint8), "png"))
    items = make_items([(str(tmp_path / "a.png"), "a.png"), (str(tmp_path / "b.png"), "b.png")], 10)
    rows = initial_rows(items)
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    stage = object.__new__(SegmentStage)  # the stage's code, a model that faults
    stage.backend, stage.model = "mask2former", CudaFault()
    segmented = stage.segment(read_images(batch))
    result = ShardResult(shard=0, inputs=2)
    for i in range(2):
        add_row(result, {k: segmented[k][i] for k in segmented}, "png")
    records = [s.to_json() for s in result.skips]
    assert [(r["reason"], r["retryable"]) for r in records] == [("empty_file", False), ("segment_error", True)]


def test_retry_failed_rebuilds_exactly_the_shards_with_retryable_skips(setup, fake_ray, capsys):
    config, out = setup
    built, _ = fake_ray
    # shard 0: a final skip (too small); shard 1: a segment_error (retryable); shard 2: clean.
    _fake_output(config, out, skips={0: "too_small", 3: "segment_error"})
    before = _tars(out)
    stats = olrd_job.run_olrd(_cfg(config, out))
    assert stats["processed_this_run"] == 0 and not built, "a plain rerun leaves finished shards alone"
    assert stats["retryable"] == 1 and stats["skipped"] == 2
    assert "retry_failed=true" in capsys.readouterr().err
    skips = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert {s["reason"]: s["retryable"] for s in skips} == {"too_small": False, "segment_error": True}

    stats = olrd_job.run_olrd(_cfg(config, out, "retry_failed=true"))
    assert sorted(it.index for it in built) == [2, 3], "exactly the inputs of shard 1"
    after = _tars(out)
    assert after["olrd-000000.tar"] == before["olrd-000000.tar"]  # its final skip stays
    assert after["olrd-000002.tar"] == before["olrd-000002.tar"]
    assert after["olrd-000001.tar"] != before["olrd-000001.tar"]
    assert stats["retryable"] == 0 and stats["skipped"] == 1 and stats["samples"] == N_INPUTS - 1
    assert json.loads((out / "olrd-000001.json").read_text())["skips"] == []


# --- finding 3: one job per output folder --------------------------------------------------------


def _write_lock(out: Path, **record) -> None:
    out.mkdir(parents=True, exist_ok=True)
    now = time.time()
    (out / "job.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started_at": now,
                                              "heartbeat_at": now, "token": "someone-else", **record}))


def test_second_job_on_a_locked_output_refuses_at_once_naming_the_owner(setup, capsys):
    config, out = setup
    _fake_output(config, out)
    (out / "job.json").unlink()
    _write_lock(out, host="gpu-node-7", pid=4242)
    temp = out / ".tmp-olrd-000001.tar.abc123"  # the running job's shard being written
    temp.write_bytes(b"in progress")
    t0 = time.monotonic()
    rc = olrd_job.main(["--config", str(config), f"output={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and time.monotonic() - t0 < 30
    assert len(err) == 1 and "in use by another job" in err[0] and "host gpu-node-7, pid 4242" in err[0], err
    assert temp.exists(), "the running job's temporaries must not be swept"
    assert not (out / "job.json").exists() and not (out / "stats.json").exists()
    assert json.loads((out / "job.lock").read_text())["pid"] == 4242  # not released by the refused job


def test_two_concurrent_jobs_one_refused_then_the_lock_is_released(setup, fake_ray):
    config, out = setup
    _, gate = fake_ray
    gate["event"] = threading.Event()
    first: dict = {}

    def run_first():
        try:
            first["stats"] = olrd_job.run_olrd(_cfg(config, out))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            first["error"] = exc

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (out / "job.lock").exists():
            assert time.monotonic() < deadline and thread.is_alive(), first
            time.sleep(0.01)
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            olrd_job.run_olrd(_cfg(config, out))
    finally:
        gate["event"].set()
        thread.join(60)
    assert "error" not in first and first["stats"]["samples"] == N_INPUTS
    assert not (out / "job.lock").exists()


def test_stale_locks_are_taken_over_with_a_message(setup, fake_ray, capsys):
    config, out = setup
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(out, pid=gone.pid)  # a killed job on this host
    olrd_job.run_olrd(_cfg(config, out))
    assert f"taking over the stale lock {out / 'job.lock'}" in capsys.readouterr().err
    assert not (out / "job.lock").exists()
    _write_lock(out, host="elsewhere", pid=1, heartbeat_at=time.time() - 3600)  # a dead host
    olrd_job.run_olrd(_cfg(config, out))
    assert "last heartbeat was 3600 s ago" in capsys.readouterr().err
    _write_lock(out, host="elsewhere", pid=1)  # alive elsewhere
    with pytest.raises(LockHeld, match="host elsewhere, pid 1"):
        olrd_job.run_olrd(_cfg(config, out))


def test_lock_is_released_on_errors(setup, fake_ray, monkeypatch):
    config, out = setup
    _fake_output(config, out, "seed=0")
    with pytest.raises(JobError):
        olrd_job.run_olrd(_cfg(config, out, "seed=3"))
    assert not (out / "job.lock").exists()

    def broken(cfg, items, segmenter_name, elastic=False):
        raise RuntimeError("pipeline failed")

    monkeypatch.setattr(ray_pipeline, "build_dataset", broken)
    (out / "olrd-000002.json").unlink()
    with pytest.raises(RuntimeError, match="pipeline failed"):
        olrd_job.run_olrd(_cfg(config, out, "seed=0"))
    assert not (out / "job.lock").exists()


def test_heartbeat_is_refreshed_and_a_taken_over_lock_is_noticed(tmp_path):
    from magiceraser.lock import LockLost, OutputLock

    lock = OutputLock(tmp_path, stale_after_s=60, heartbeat_s=0.05)
    with lock:
        first = json.loads((tmp_path / "job.lock").read_text())
        deadline = time.monotonic() + 20
        while json.loads((tmp_path / "job.lock").read_text())["heartbeat_at"] == first["heartbeat_at"]:
            assert time.monotonic() < deadline, "the heartbeat was never refreshed"
            time.sleep(0.02)
        lock.check()
        _write_lock(tmp_path, host="other", pid=7)  # another job judged us stale and took over
        deadline = time.monotonic() + 20
        while lock.lost is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(LockLost, match="host other, pid 7"):
            lock.check()
    assert json.loads((tmp_path / "job.lock").read_text())["pid"] == 7  # not removed: it is not ours
