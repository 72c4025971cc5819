"""Fixtures of the trainer tests: small OLRD shards (the config builder for tiny runs is run_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .olrd_fixture import write_olrd_shards

# Two cores shared with other test processes: one intra-op thread avoids OpenMP oversubscription stalls.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def olrd_shards(tmp_path_factory) -> Path:
    """Two shards of 4 samples (96x80 px); one sample has a truncated JPEG."""
    out = tmp_path_factory.mktemp("olrd")
    write_olrd_shards(out, num_shards=2, per_shard=4, corrupt_keys=("s000i0001",))
    write_olrd_shards(out, num_shards=1, per_shard=2, seed=7, prefix="heldout")
    return out
