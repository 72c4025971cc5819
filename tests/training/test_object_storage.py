"""The latent cache and the trainer with S3 (moto's server): source shards, cache and cache.json on s3://.

``cache-latents`` writes each object once under its final key (the server records every write),
the shard before its stats and ``cache.json`` last; a rerun reuses the shards from their stats
objects; training reads the cache from s3:// and ends with the weights of the same run on a local
copy of the cache. A trainer ``out_dir`` on an object store is refused in one line.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import tiny_train_config
from olrd_fixture import write_olrd_shards

from magiceraser.config import ConfigError
from magiceraser.storage import Folder
from magiceraser.training.latent_cache import LatentCacheConfig, build_cache
from magiceraser.training.loop import run_training


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
