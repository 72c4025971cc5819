"""Fixtures of the trainer tests: small OLRD shards and a config builder for tiny runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# Two cores shared with other test processes: one intra-op thread avoids OpenMP oversubscription stalls.
torch.set_num_threads(1)

from olrd_fixture import write_olrd_shards  # noqa: E402


@pytest.fixture(scope="session")
def olrd_shards(tmp_path_factory) -> Path:
    """Two shards of 4 samples (96x80 px); one sample has a truncated JPEG."""
    out = tmp_path_factory.mktemp("olrd")
    write_olrd_shards(out, num_shards=2, per_shard=4, corrupt_keys=("s000i0001",))
    write_olrd_shards(out, num_shards=1, per_shard=2, seed=7, prefix="heldout")
    return out


def tiny_train_config(base_model, urls, out_dir, **over):
    """A TrainConfig for a few CPU steps at 64 px; ``over`` takes dotted keys (``optim.lr``)."""
    from magiceraser.config import load_config
    from magiceraser.training.config import TrainConfig

    values = {
        "model.base_model": str(base_model),
        "data.urls": [str(u) for u in urls],
        "data.resolution": 64,
        "data.batch_size": 2,
        "data.num_workers": 0,
        "data.shuffle_buffer": 4,
        "phases.total_steps": 4,
        "phases.textual_inversion_steps": 1,
        "phases.textual_inversion_subset": 1.0,
        "optim.warmup_steps": 0,
        "optim.lr": 1e-3,
        "optim.embedding_lr": 1e-3,
        "checkpoint.every": 0,
        "wandb.mode": "disabled",
        "log_every": 1,
        "out_dir": str(out_dir),
        "device": "cpu",
    }
    values.update(over)
    import yaml

    return load_config(TrainConfig, None, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in values.items()])
