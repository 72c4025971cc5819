"""The latent cache is keyed, per shard, on what it was encoded from; the trainer checks it.

Each test reproduces a way a cache built for one thing was used for another: a rebuild with
another seed that encoded nothing, a source shard replaced under its name, an unreadable source
marked done, a cache of another VAE, stale shards beside a smaller rebuild.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from magiceraser.errors import UserError
from magiceraser.training.latent_cache import (
    CACHE_META,
    LatentCacheConfig,
    build_cache,
    cache_shard_urls,
    encode_shard,
)
from magiceraser.training.loop import Trainer

from .olrd_fixture import write_olrd_shards
from .run_config import tiny_train_config


def _cfg(tiny_sd, urls, out, **over) -> LatentCacheConfig:
    values = dict(urls=[str(u) for u in urls], out_dir=str(out), base_model=str(tiny_sd), resolution=64, device="cpu",
                  storage_dtype="float32")
    values.update(over)
    return LatentCacheConfig(**values)


@pytest.fixture()
def data(tmp_path) -> Path:
    write_olrd_shards(tmp_path / "data", num_shards=2, per_shard=3, seed=11)
    return tmp_path / "data"


def _stats(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.stats.json").read_text())


def test_rebuild_with_another_seed_re_encodes_and_the_trainer_checks_the_seed(tiny_sd, data, tmp_path):
    out = tmp_path / "cache"
    assert build_cache(_cfg(tiny_sd, [data / "olrd-*.tar"], out, seed=0))["encoded_shards"] == 2
    before = (out / "olrd-000000.tar").read_bytes()
    assert build_cache(_cfg(tiny_sd, [data / "olrd-*.tar"], out, seed=1))["encoded_shards"] == 2  # was 0
    assert (out / "olrd-000000.tar").read_bytes() != before  # other crops, other latents
    assert _stats(out, "olrd-000000")["dependencies"]["seed"] == 1
    assert json.loads((out / CACHE_META).read_text())["seed"] == 1
    # the same settings again: nothing to do
    assert build_cache(_cfg(tiny_sd, [data / "olrd-*.tar"], out, seed=1))["encoded_shards"] == 0
    with pytest.raises(UserError, match=r"data\.seed: 1 -> 0"):
        Trainer(tiny_train_config(tiny_sd, [data / "olrd-*.tar"], tmp_path / "run", **{"data.latent_cache": str(out)}))


def test_a_source_shard_replaced_under_its_name_is_re_encoded_alone(tiny_sd, data, tmp_path):
    out = tmp_path / "cache"
    build_cache(_cfg(tiny_sd, [data / "olrd-*.tar"], out))
    write_olrd_shards(tmp_path / "other", num_shards=1, per_shard=2, seed=99)
    shutil.copy(tmp_path / "other" / "olrd-000000.tar", data / "olrd-000001.tar")
    summary = build_cache(_cfg(tiny_sd, [data / "olrd-*.tar"], out))
    assert summary["encoded_shards"] == 1 and summary["written"] == 2
    assert _stats(out, "olrd-000001")["written"] == 2


def test_an_unreadable_source_shard_is_an_error_never_an_empty_shard_marked_done(tiny_sd, data, tmp_path):
    out = tmp_path / "cache"
    cfg = _cfg(tiny_sd, [data / "olrd-*.tar"], out)
    with pytest.raises(OSError, match="nonexistent/olrd-000000.tar"):
        encode_shard("/nonexistent/olrd-000000.tar", str(out / "olrd-000000.tar"), cfg, deps={})
    assert not (out / "olrd-000000.stats.json").exists() and not (out / "olrd-000000.tar").exists()

    # a damaged shard among good ones: the good one is cached, the build fails naming the bad one,
    # and no cache.json vouches for the folder
    (data / "olrd-000001.tar").write_bytes(b"not a tar file at all" * 100)
    with pytest.raises(UserError, match=r"olrd-000001\.tar"):
        build_cache(cfg)
    assert (out / "olrd-000000.stats.json").is_file()
    assert not (out / "olrd-000001.stats.json").exists()
    assert not (out / CACHE_META).exists()
    with pytest.raises(UserError, match="not built, or its build did not finish"):
        cache_shard_urls(str(out))
    # a named shard that does not exist is refused before any encoding
    with pytest.raises(UserError, match=r"1 of 3 shards do not exist"):
        build_cache(_cfg(tiny_sd, [data / "olrd-00000{0,1,2}.tar"], out))


def test_a_cache_of_another_vae_is_refused(tiny_sd, data, tmp_path):
    out = tmp_path / "cache"
    build_cache(_cfg(tiny_sd, [data / "olrd-*.tar"], out))
    other = shutil.copytree(tiny_sd, tmp_path / "other-model")
    vae_cfg = json.loads((other / "vae" / "config.json").read_text())
    (other / "vae" / "config.json").write_text(json.dumps({**vae_cfg, "scaling_factor": 0.13025}))
    with pytest.raises(UserError, match="VAE config"):
        Trainer(tiny_train_config(other, [data / "olrd-*.tar"], tmp_path / "run", **{"data.latent_cache": str(out)}))


def test_the_trainer_reads_exactly_the_shards_cache_json_lists(tiny_sd, data, tmp_path):
    out = tmp_path / "cache"
    build_cache(_cfg(tiny_sd, [data / "olrd-*.tar"], out))
    build_cache(_cfg(tiny_sd, [data / "olrd-000000.tar"], out))  # a smaller cache in the same folder
    assert (out / "olrd-000001.tar").exists()  # stale, left in place
    assert cache_shard_urls(str(out)) == [f"{out}/olrd-000000.tar"]


def test_a_second_cache_build_on_a_busy_folder_is_refused_naming_the_owner(tiny_sd, tmp_path):
    from magiceraser.lock import LockHeld, OutputLock
    from magiceraser.training.latent_cache import LatentCacheConfig, build_cache

    write_olrd_shards(tmp_path / "data", num_shards=1, per_shard=2, seed=3)
    (tmp_path / "cache").mkdir()
    with OutputLock(tmp_path / "cache"):
        with pytest.raises(LockHeld, match=rf"in use by another job \(host .*, pid {os.getpid()}"):
            build_cache(LatentCacheConfig(urls=[str(tmp_path / "data" / "olrd-*.tar")], out_dir=str(tmp_path / "cache"),
                                          base_model=str(tiny_sd), resolution=64, device="cpu"))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == []
