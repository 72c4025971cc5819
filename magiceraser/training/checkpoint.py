"""Training checkpoints: everything needed to continue a run exactly, saved atomically.

Layout of ``{out_dir}/checkpoints/checkpoint-{step:08d}/``:

    trainable.safetensors   v* and the LoRA weights
    optimizer.pt            AdamW state
    scheduler.pt            learning-rate scheduler state
    rng.pt                  the shared noise generator + every process's Python/NumPy/torch RNG states
    state.json              step, world size, every process's data-stream position (written last)

The directory is built under a temporary name and renamed into place when complete
(``magiceraser.atomic.atomic_directory``), so a process killed mid-save leaves the previous
checkpoint as the newest loadable one; leftovers start with ``.tmp-`` and are swept on start.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magiceraser.atomic import atomic_directory, remove_stale_temporaries

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{8})$")
STATE_NAME = "state.json"


def rng_state() -> dict[str, Any]:
    """This process's global RNG states (Python, NumPy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints under ``ckpt_root``, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name) and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    rng_states: list[dict[str, Any]],
    data_states: list[dict[str, Any]],
    world_size: int,
    keep_last: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically (call on rank 0 only) and delete all but the newest ``keep_last``."""
    from safetensors.torch import save_file

    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"checkpoint-{step:08d}"
    with atomic_directory(target) as tmp:
        save_file({k: v.contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"generator": generator.get_state(), "per_rank": rng_states}, tmp / "rng.pt")
        (tmp / STATE_NAME).write_text(
            json.dumps({"step": step, "world_size": world_size, "data": data_states, **(extra or {})}, indent=2) + "\n"
        )
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint directory into a dict (tensors on CPU)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_NAME})")
    return dict(
        path=path,
        state=json.loads((path / STATE_NAME).read_text()),
        trainable=load_file(str(path / "trainable.safetensors")),
        optimizer=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False),
        scheduler=torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False),
        rng=torch.load(path / "rng.pt", map_location="cpu", weights_only=False),
    )


def sweep_temporaries(ckpt_root: str | Path) -> list[Path]:
    """Remove leftovers of saves that were killed (``.tmp-*``)."""
    return remove_stale_temporaries(ckpt_root)
