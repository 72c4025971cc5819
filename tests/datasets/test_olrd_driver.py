"""The driver's loop without Ray: reruns after a lost node, and the bound on rows pending in memory.

The Ray pipeline is replaced by :class:`ScriptedDataset`, which yields the rows the driver would
get, in an order the test chooses, and can fail part way with Ray's own exception for a lost
actor. Everything else (listing, fingerprints, shard writer, assembler) is the real code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from magiceraser.config import load_config
from magiceraser.datasets import olrd_job, ray_pipeline
from magiceraser.datasets.config import OLRDConfig

N_INPUTS, PER_SHARD = 24, 3  # 8 shards


@pytest.fixture
def config(tmp_path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(N_INPUTS):
        (images / f"img{i:02d}.png").write_bytes(b"never decoded in these tests")
    (tmp_path / "panoptic").mkdir()
    (tmp_path / "panoptic.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"img{i:02d}.png"} for i in range(N_INPUTS)],
        "annotations": [{"image_id": i, "file_name": f"img{i:02d}.png", "segments_info": []} for i in range(N_INPUTS)]}))
    path = tmp_path / "olrd.yaml"
    path.write_text(json.dumps({
        "input": str(images), "samples_per_shard": PER_SHARD, "image_format": "png", "progress_interval_s": 1000,
        "node_loss_settle_s": 0,
        "segmenter": {"backend": "coco_panoptic", "annotations": str(tmp_path / "panoptic.json")},
        "captioner": {"backend": "transformers", "model": "unused"},
    }))
    return path


def _row(it) -> dict:
    """What the caption stage hands the driver for input ``it``: a sample (every 5th input a skip)."""
    skip = it.index % 5 == 4
    return {"source": it.source, "key": it.key, "index": it.index, "shard": it.shard,
            "reason": "too_small" if skip else "", "stage": "read" if skip else "", "message": "",
            "original": b"" if skip else f"o{it.index}".encode() * 50, "blended": b"" if skip else b"b",
            "mask": b"" if skip else b"m", "meta": "" if skip else json.dumps({"key": it.key}), "done_at": time.time()}


def _batch(rows: list[dict]) -> dict:
    return {k: np.asarray([r[k] for r in rows], dtype=object if k not in ("index", "shard", "done_at") else None)
            for k in rows[0]}


def round_robin(items) -> list:
    """The worst order for open shards: the first input of every shard, then every second, ..."""
    by_shard: dict[int, list] = {}
    for it in items:
        by_shard.setdefault(it.shard, []).append(it)
    order = []
    for k in range(max(len(v) for v in by_shard.values())):
        order += [v[k] for v in by_shard.values() if k < len(v)]
    return order


class ScriptedRay:
    """Stands in for ``build_dataset``: each call is one pipeline attempt over the items asked for.

    ``fail_after[n]``: attempt ``n`` raises Ray's ActorUnavailableError after that many rows.
    """

    def __init__(self, order=lambda items: list(items), fail_after: dict[int, int] | None = None):
        self.order, self.fail_after, self.calls = order, fail_after or {}, []

    def __call__(self, cfg, items, segmenter_name, elastic=False):
        self.calls.append(([it.index for it in items], elastic))
        return self._rows(len(self.calls) - 1, self.order(items))

    def _rows(self, attempt: int, items):
        from ray.exceptions import ActorUnavailableError

        class Dataset:
            def iter_batches(_self, batch_size=None, batch_format="numpy"):
                for n, it in enumerate(items):
                    if n == self.fail_after.get(attempt):
                        raise ActorUnavailableError("The actor abc is unavailable: node lost", b"\0" * 16)
                    yield _batch([_row(it)])

        return Dataset()


def _run(monkeypatch, config: Path, out: Path, fake: ScriptedRay, *overrides: str) -> dict:
    monkeypatch.setattr(ray_pipeline, "init_ray", lambda cfg: False)
    monkeypatch.setattr(ray_pipeline, "build_dataset", fake)
    return olrd_job.run_olrd(load_config(OLRDConfig, config, [f"output={out}", *overrides]))


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.startswith("olrd-") and p.suffix == ".tar"} | {
        "skipped.jsonl": (out / "skipped.jsonl").read_bytes()}


def test_a_lost_actor_reruns_only_the_unfinished_shards_in_the_same_command(monkeypatch, config, tmp_path, capsys):
    reference = tmp_path / "reference"
    _run(monkeypatch, config, reference, ScriptedRay())
    fake = ScriptedRay(fail_after={0: 10})  # shards 0..2 written, shard 3 has 1 of its 3 rows
    stats = _run(monkeypatch, config, tmp_path / "out", fake)
    assert _files(tmp_path / "out") == _files(reference)  # nothing lost, nothing twice
    assert [idx for idx, _ in fake.calls] == [list(range(N_INPUTS)), list(range(9, N_INPUTS))]
    assert [elastic for _, elastic in fake.calls] == [False, True]  # the rerun's pools grow from 1 actor
    assert stats["driver"]["node_loss_retries"] == 1 and stats["samples"] + stats["skipped"] == N_INPUTS
    assert stats["processed_this_run"] == N_INPUTS and stats["timeline"][-1][1] == N_INPUTS  # dropped rows un-counted
    err = capsys.readouterr().err
    assert "lost part of the cluster (ActorUnavailableError" in err and "re-planning the 5 unfinished shards" in err


def test_reruns_are_bounded_and_other_errors_are_not_retried(monkeypatch, config, tmp_path):
    from ray.exceptions import ActorUnavailableError

    always = ScriptedRay(fail_after={n: 4 for n in range(10)})
    with pytest.raises(ActorUnavailableError):
        _run(monkeypatch, config, tmp_path / "a", always, "node_loss_retries=2")
    assert len(always.calls) == 3
    assert not (tmp_path / "a" / "job.lock").exists() and not list((tmp_path / "a").glob(".tmp-*"))

    def broken(cfg, items, segmenter_name, elastic=False):
        raise RuntimeError("a bug in a stage")

    calls = []
    monkeypatch.setattr(ray_pipeline, "init_ray", lambda cfg: False)
    monkeypatch.setattr(ray_pipeline, "build_dataset", lambda *a, **k: calls.append(1) or broken(*a, **k))
    with pytest.raises(RuntimeError, match="a bug"):
        olrd_job.run_olrd(load_config(OLRDConfig, config, [f"output={tmp_path / 'b'}"]))
    assert len(calls) == 1


@pytest.mark.parametrize("max_open", [1, 2, 3])
def test_rows_pending_in_the_driver_stay_bounded_however_work_is_reordered(monkeypatch, config, tmp_path, max_open):
    reference = tmp_path / "reference"
    _run(monkeypatch, config, reference, ScriptedRay())
    out = tmp_path / "out"
    stats = _run(monkeypatch, config, out, ScriptedRay(order=round_robin), f"max_open_shards={max_open}")
    assert _files(out) == _files(reference)
    assert 0 < stats["driver"]["max_pending_rows"] <= max_open * PER_SHARD
    assert stats["driver"]["spilled_shards"] == N_INPUTS // PER_SHARD - max_open
    assert not list(out.glob(".tmp-*"))


def test_spilled_rows_of_a_lost_attempt_are_removed_and_rebuilt(monkeypatch, config, tmp_path):
    reference = tmp_path / "reference"
    _run(monkeypatch, config, reference, ScriptedRay())
    out = tmp_path / "out"
    fake = ScriptedRay(order=round_robin, fail_after={0: 12})
    stats = _run(monkeypatch, config, out, fake, "max_open_shards=2")
    assert _files(out) == _files(reference)
    assert stats["driver"]["node_loss_retries"] == 1 and not list(out.glob(".tmp-*"))


def test_spill_records_round_trip_bytes_and_numpy_scalars():
    from magiceraser.datasets.assembler import decode_rows, encode_row

    rows = [{"key": "a", "index": np.int64(3), "done_at": np.float64(1.5), "original": b"\0\xff", "blended": b"",
             "mask": b"m" * 1000, "meta": '{"x": 1}'}]
    back = decode_rows(b"".join(encode_row(r) for r in rows * 2))
    assert back == [{"key": "a", "index": 3, "done_at": 1.5, "original": b"\0\xff", "blended": b"", "mask": b"m" * 1000,
                     "meta": '{"x": 1}'}] * 2
