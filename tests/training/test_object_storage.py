"""The latent cache and the trainer with S3 (moto's server): source shards, cache and cache.json on s3://.

``cache-latents`` writes each object once under its final key (the server records every write),
the shard before its stats and ``cache.json`` last; a rerun reuses the shards from their stats
objects; training reads the cache from s3:// and ends with the weights of the same run on a local
copy of the cache. A trainer ``out_dir`` on an object store is refused in one line; its checkpoints
may go there (``checkpoint.dir``): one PUT per file, the marker last, a half upload never chosen.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from magiceraser.config import ConfigError
from magiceraser.storage import Folder
from magiceraser.training.latent_cache import LatentCacheConfig, build_cache
from magiceraser.training.loop import run_training

from .olrd_fixture import write_olrd_shards
from .run_config import tiny_train_config


def _cache_cfg(tiny_sd, urls, out_dir) -> LatentCacheConfig:
    return LatentCacheConfig(urls=urls, out_dir=out_dir, base_model=str(tiny_sd), resolution=64,
                             storage_dtype="float32", device="cpu")


def test_cache_on_s3_written_once_per_key_and_training_reads_it(tiny_sd, tmp_path, s3_server):
    bucket = s3_server.new_bucket("cache")
    write_olrd_shards(tmp_path / "data", num_shards=2, per_shard=3, seed=5)
    data = Folder(f"s3://{bucket}/data")
    for tar in sorted((tmp_path / "data").glob("olrd-*.tar")):
        data.write_bytes(tar.name, tar.read_bytes())
    url, local = f"s3://{bucket}/cache", tmp_path / "cache"
    assert build_cache(_cache_cfg(tiny_sd, [f"s3://{bucket}/data/olrd-*.tar"], url))["encoded_shards"] == 2
    build_cache(_cache_cfg(tiny_sd, [str(tmp_path / "data" / "olrd-*.tar")], str(local)))

    written = [k.removeprefix("cache/") for k in s3_server.written(bucket) if k.startswith("cache/")]
    # the build's lock first; no temporary key; each shard before its stats; the marker last
    assert written == ["job.lock", "olrd-000000.tar", "olrd-000000.stats.json", "olrd-000001.tar", "olrd-000001.stats.json",
                       "cache.json"]
    cache = Folder(url)
    assert sorted(cache.list()) == sorted(p.name for p in local.iterdir())  # the lock is gone again
    # a rerun finds every shard done from its stats object (nothing encoded, only the marker rewritten)
    assert build_cache(_cache_cfg(tiny_sd, [f"s3://{bucket}/data/olrd-*.tar"], url))["encoded_shards"] == 0
    assert [k for k in s3_server.written(bucket) if k.startswith("cache/")][len(written):] == ["cache/job.lock", "cache/cache.json"]

    over = {"phases.total_steps": 2, "phases.textual_inversion_steps": 1}
    from_s3 = run_training(tiny_train_config(tiny_sd, [f"s3://{bucket}/data/olrd-*.tar"], tmp_path / "run-s3",
                                             **{**over, "data.latent_cache": url}))
    from_local = run_training(tiny_train_config(tiny_sd, [tmp_path / "data" / "olrd-*.tar"], tmp_path / "run-local",
                                                **{**over, "data.latent_cache": str(local)}))
    a, b = from_s3.model.trainable_state(), from_local.model.trainable_state()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_a_trainer_out_dir_on_an_object_store_is_refused_before_anything_runs(tiny_sd, tmp_path):
    with pytest.raises(ConfigError, match=r"out_dir must be a local or shared filesystem path, not an object store"):
        tiny_train_config(tiny_sd, [tmp_path / "olrd-*.tar"], "s3://bucket/run")
    proc = subprocess.run([sys.executable, "-m", "magiceraser", "train", "out_dir=s3://bucket/run"],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "not an object store ('s3://bucket/run')" in lines[0], proc.stderr


# -- checkpoints on an object store (checkpoint.dir=s3://...) ------------------------------------------

CKPT_RUN = {"phases.total_steps": 5, "phases.textual_inversion_steps": 1, "checkpoint.every": 1, "checkpoint.keep_last": 2,
            "num_threads": 1}

# Run `magiceraser train`, SIGKILLing the process while it uploads checkpoint 3 (after its first files).
KILLED_DURING_UPLOAD = """
import os, signal, sys
from magiceraser.storage import Folder
real = Folder.write_bytes
def write_bytes(self, name, data):
    if name == "optimizer.pt" and self.given.endswith("/checkpoint-00000003"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, name, data)
Folder.write_bytes = write_bytes
from magiceraser.cli import main
sys.exit(main(["train", "--config", sys.argv[1]]))
"""


def test_checkpoints_on_s3_marker_last_a_kill_mid_upload_is_never_chosen_and_the_result_is_exact(
        tiny_sd, olrd_shards, tmp_path, s3_server):
    from magiceraser.config import save_config
    from magiceraser.training.checkpoint_store import CheckpointStore

    bucket = s3_server.new_bucket("ckpt")
    url = f"s3://{bucket}/runs/a/checkpoints"
    urls = [olrd_shards / "olrd-*.tar"]
    local = run_training(tiny_train_config(tiny_sd, urls, tmp_path / "local", **CKPT_RUN))

    cfg = tiny_train_config(tiny_sd, urls, tmp_path / "run", **{**CKPT_RUN, "checkpoint.dir": url})
    save_config(cfg, tmp_path / "run.yaml")
    proc = subprocess.run([sys.executable, "-c", KILLED_DURING_UPLOAD, str(tmp_path / "run.yaml")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    keys = [k.removeprefix("runs/a/checkpoints/") for k in s3_server.written(bucket)]
    assert keys[0] == "job.lock"  # the folder is locked before anything is written to it
    for step in (1, 2):  # each checkpoint: its files, then its marker
        mine = [k.split("/", 1)[1] for k in keys if k.startswith(f"checkpoint-0000000{step}/")]
        assert mine[-1] == "state.json" and sorted(mine[:-1]) == ["optimizer.pt", "rng.safetensors", "scheduler.json",
                                                                 "trainable.safetensors"], mine
    assert "checkpoint-00000003/trainable.safetensors" in keys and "checkpoint-00000003/state.json" not in keys
    store = CheckpointStore(url)
    assert [r.name for r in store.list()] == ["checkpoint-00000001", "checkpoint-00000002"]  # 3 is not a checkpoint

    # The restart (by hand here: --resume) continues from 2, replaces the half upload, ends like the local run.
    resumed = run_training(tiny_train_config(tiny_sd, urls, tmp_path / "run", resume=True, **{**CKPT_RUN, "checkpoint.dir": url}))
    assert resumed.steps == 5
    a, b = local.model.trainable_state(), resumed.model.trainable_state()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r.name for r in store.list()] == ["checkpoint-00000004", "checkpoint-00000005"]  # keep_last 2
    assert not Folder(url).exists("job.lock") and not (tmp_path / "run" / "checkpoints").exists()
    assert (tmp_path / "run" / "magiceraser.json").exists()  # the export stays in the local out_dir


def test_pruning_on_s3_never_touches_another_runs_checkpoint_and_a_second_run_is_refused(
        tiny_sd, olrd_shards, tmp_path, s3_server):
    from magiceraser.errors import UserError
    from magiceraser.lock import OutputLock
    from magiceraser.training.checkpoint_store import CheckpointStore
    from magiceraser.training.loop import Trainer

    bucket = s3_server.new_bucket("ckpt")
    url = f"s3://{bucket}/checkpoints"
    urls = [olrd_shards / "olrd-*.tar"]
    over = {**CKPT_RUN, "phases.total_steps": 2, "checkpoint.dir": url}
    run_training(tiny_train_config(tiny_sd, urls, tmp_path / "a", **over))
    first = Folder(f"{url}/checkpoint-00000001")
    state = json.loads(first.read_bytes("state.json"))
    first.write_bytes("state.json", json.dumps({**state, "run_id": "another-run"}).encode())  # another run's, now
    run_training(tiny_train_config(tiny_sd, urls, tmp_path / "a", resume=True, **{**over, "phases.total_steps": 5,
                                                                                   "checkpoint.keep_last": 1}))
    assert [r.name for r in CheckpointStore(url).list()] == ["checkpoint-00000001", "checkpoint-00000005"]

    # Another launch holds the checkpoint folder (its lock on S3): a run from another out_dir is refused at once.
    with OutputLock(Folder(url)):
        with pytest.raises(UserError, match=rf"s3://{bucket}/checkpoints is in use by another job"):
            Trainer(tiny_train_config(tiny_sd, urls, tmp_path / "b", resume=True, **over))
