"""A full disk or a read-only mount under the trainer and the latent cache: one line, the previous state intact.

On a real (tmpfs) file system of a few MiB, mounted here (root only; CI runs as root, elsewhere
these tests are skipped saying why): ENOSPC while a checkpoint is written, EROFS at the start, a
cache shard that does not fit. Each ends in one line naming the path, what was being written and
the free space, with nothing partial under a final name; with space again, the run ends exactly
like an uninterrupted one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from magiceraser.config import save_config
from magiceraser.training import checkpoint as ckpt
from magiceraser.training.checkpoint_store import CheckpointStore
from magiceraser.training.loop import run_training
from magiceraser.write_errors import WriteError

from .olrd_fixture import write_olrd_shards
from .run_config import tiny_train_config

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
RUN = {"phases.textual_inversion_steps": 1, "checkpoint.every": 1, "checkpoint.keep_last": 5, "num_threads": 1}


def _train(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "magiceraser", "train", "--config", str(config), *extra],
                          capture_output=True, text=True, cwd=str(REPO), env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("magiceraser train:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def test_a_full_disk_at_a_checkpoint_then_a_read_only_one_are_one_line_and_the_run_ends_exactly(
        tiny_sd, olrd_shards, tmp_path, small_filesystem):
    urls = [olrd_shards / "olrd-*.tar"]
    reference = run_training(tiny_train_config(tiny_sd, urls, tmp_path / "reference", **{**RUN, "phases.total_steps": 4}))
    fs = small_filesystem(4 * MiB)
    out = fs.path / "run"
    run_training(tiny_train_config(tiny_sd, urls, out, **{**RUN, "phases.total_steps": 2}))
    save_config(tiny_train_config(tiny_sd, urls, out, **{**RUN, "phases.total_steps": 4}), tmp_path / "run.yaml")
    fs.fill(leave=200 << 10)  # room for the lock and the run's records, not for a checkpoint

    line = _one_error_line(_train(tmp_path / "run.yaml", "--resume"))
    assert f"cannot write the checkpoint of step 3 to {out / 'checkpoints' / 'checkpoint-00000003'}" in line, line
    assert "no space left on the device" in line and "free of 4.0 MiB there" in line, line
    store = CheckpointStore(out / "checkpoints")
    assert [r.name for r in store.list()] == ["checkpoint-00000001", "checkpoint-00000002"]
    assert ckpt.load_checkpoint(store, store.list()[-1])["state"]["step"] == 2  # intact, every digest right
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert not (out / "job.lock").exists()

    fs.read_only()
    line = _one_error_line(_train(tmp_path / "run.yaml", "--resume"))
    assert f"cannot write the run's lock file to {out / 'job.lock'}: the file system is read-only" in line, line

    fs.writable()
    (fs.path / "filler").unlink()
    done = _train(tmp_path / "run.yaml", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("pytorch_lora_weights.safetensors", "learned_embeds.safetensors"):
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    assert reference.steps == 4


def test_a_cache_shard_that_does_not_fit_is_one_user_error_and_leaves_nothing_partial(tiny_sd, tmp_path, small_filesystem):
    from magiceraser.training.latent_cache import LatentCacheConfig, build_cache

    write_olrd_shards(tmp_path / "data", num_shards=2, per_shard=4, seed=2)
    fs = small_filesystem(1 * MiB)
    cfg = LatentCacheConfig(urls=[str(tmp_path / "data" / "olrd-*.tar")], out_dir=str(fs.path / "cache"),
                            base_model=str(tiny_sd), resolution=64, storage_dtype="float32", device="cpu")
    (fs.path / "cache").mkdir()
    fs.fill(leave=8 << 10)
    with pytest.raises(WriteError, match=r"cannot write a latent-cache shard to .*olrd-000000\.tar: no space left on the "
                                         r"device \(.* free of 1\.0 MiB there\)"):
        build_cache(cfg)
    assert sorted(p.name for p in (fs.path / "cache").iterdir()) == []  # no shard, no stats, no temporary, no lock
    (fs.path / "filler").unlink()
    assert build_cache(cfg)["encoded_shards"] == 2
