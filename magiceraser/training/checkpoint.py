"""What a training checkpoint holds: everything needed to continue a run exactly, and no pickle.

The files of ``checkpoint-{step:08d}/`` (where they are stored, and how a checkpoint is known to
be whole, is :mod:`checkpoint_store`):

    trainable.safetensors   v* and the LoRA weights
    optimizer.pt            AdamW state (tensors and plain values; read with ``weights_only=True``)
    scheduler.json          learning-rate scheduler state
    rng.safetensors         the shared noise generator and every process's torch (and CUDA) RNG states
    state.json              step, world size, run id, launch, what the weights depend on
                            (``dependencies`` and its ``fingerprint``), every process's data-stream
                            position and Python/NumPy RNG states, and the size and sha256 of each
                            file above; written last

Nothing in a checkpoint is unpickled: a checkpoint on shared storage cannot run code in the
training processes that resume from it. Every file is serialised in memory first
(:func:`encode_checkpoint`), so a full disk surfaces as the OSError of one plain write, and the
digests are of exactly the bytes written.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magiceraser.errors import UserError
from magiceraser.training.checkpoint_store import (
    CheckpointRef,
    CheckpointStore,
    DamagedCheckpoint,
)

TRAINABLE_NAME = "trainable.safetensors"
RNG_NAME = "rng.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.json"
#: Every file a checkpoint holds besides its marker (state.json).
FILES = (TRAINABLE_NAME, RNG_NAME, OPTIMIZER_NAME, SCHEDULER_NAME)


# -- RNG states as tensors and JSON -------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's global RNG states: Python and NumPy as JSON values, torch/CUDA as uint8 tensors."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _split_rng(generator: torch.Generator, per_rank: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Tensors for ``rng.safetensors`` and the JSON part of every rank's states."""
    tensors = {"generator": generator.get_state()}
    json_part = []
    for rank, state in enumerate(per_rank):
        tensors[f"rank{rank}.torch"] = state["torch"]
        for i, cuda in enumerate(state.get("cuda") or []):
            tensors[f"rank{rank}.cuda{i}"] = cuda
        json_part.append({"python": state["python"], "numpy": state["numpy"], "num_cuda": len(state.get("cuda") or [])})
    return tensors, json_part


def _join_rng(tensors: dict[str, torch.Tensor], json_part: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for rank, part in enumerate(json_part):
        out.append({
            "python": part["python"],
            "numpy": part["numpy"],
            "torch": tensors[f"rank{rank}.torch"],
            "cuda": [tensors[f"rank{rank}.cuda{i}"] for i in range(part["num_cuda"])],
        })
    return out


# -- encoding and decoding ----------------------------------------------------------------------


def encode_checkpoint(
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    rng_states: list[dict[str, Any]],
    data_states: list[dict[str, Any]],
    world_size: int,
    run_id: str,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The bytes of every file of checkpoint ``step`` and its marker's content (without the digests)."""
    from safetensors.torch import save as safetensors_bytes

    rng_tensors, rng_json = _split_rng(generator, rng_states)
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    files = {
        TRAINABLE_NAME: safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in trainable.items()}),
        RNG_NAME: safetensors_bytes({k: v.contiguous() for k, v in rng_tensors.items()}),
        OPTIMIZER_NAME: buf.getvalue(),
        SCHEDULER_NAME: (json.dumps(scheduler.state_dict()) + "\n").encode(),
    }
    state = {"step": step, "world_size": world_size, "run_id": run_id, "data": data_states, "rng": rng_json, **(extra or {})}
    return files, state


def _load_plain(data: bytes, where: str) -> Any:
    """``torch.load`` restricted to tensors and plain values; a pickled object is refused, not run."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{where} holds pickled Python objects, which are not loaded (they could run code); "
            "it was not written by magiceraser: delete that checkpoint"
        ) from exc


def decode_checkpoint(ref: CheckpointRef, state: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:
    """The checkpoint as tensors (on CPU) and plain values; :class:`DamagedCheckpoint` if a file cannot be parsed."""
    from safetensors.torch import load as safetensors_load

    def parse(name: str, fn):
        try:
            return fn(files[name])
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse failure of stored bytes means damage
            raise DamagedCheckpoint(ref.name, name, f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None

    rng_tensors = parse(RNG_NAME, safetensors_load)
    try:
        per_rank = _join_rng(rng_tensors, state["rng"])
        step = int(state["step"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DamagedCheckpoint(ref.name, "state.json", f"lacks what a checkpoint records ({exc!r})") from None
    return dict(
        name=ref.name,
        state={**state, "step": step},
        trainable=parse(TRAINABLE_NAME, safetensors_load),
        optimizer=parse(OPTIMIZER_NAME, lambda b: _load_plain(b, f"{ref.url}/{OPTIMIZER_NAME}")),
        scheduler=parse(SCHEDULER_NAME, json.loads),
        rng={"generator": rng_tensors["generator"], "per_rank": per_rank},
    )


def load_checkpoint(store: CheckpointStore, ref: CheckpointRef) -> dict[str, Any]:
    """Read, verify (sizes, digests) and decode a checkpoint; :class:`DamagedCheckpoint` if it is not whole."""
    state, files = store.load(ref, expected=FILES)
    return decode_checkpoint(ref, state, files)


# -- conveniences for a checkpoint folder on a filesystem (tests, scripts) ------------------------


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoint folders under a local ``ckpt_root``, oldest first."""
    return [Path(ckpt_root) / ref.name for ref in CheckpointStore(ckpt_root).list()]


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def read_state(path: str | Path) -> dict[str, Any]:
    """The ``state.json`` of a local checkpoint folder."""
    path = Path(path)
    return CheckpointStore(path.parent).read_state(CheckpointRef(path.name, 0, str(path)))
