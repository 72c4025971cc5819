"""Training checkpoints: everything needed to continue a run exactly, saved atomically, no pickle.

Layout of ``{out_dir}/checkpoints/checkpoint-{step:08d}/``:

    trainable.safetensors   v* and the LoRA weights
    optimizer.pt            AdamW state (tensors and plain values; read with ``weights_only=True``)
    scheduler.json          learning-rate scheduler state
    rng.safetensors         the shared noise generator and every process's torch (and CUDA) RNG states
    state.json              step, world size, run id, what the weights depend on (``dependencies``
                            and its ``fingerprint``), every process's data-stream position and its
                            Python/NumPy RNG states; written last

Nothing in a checkpoint is unpickled: a checkpoint directory on shared storage cannot run code
in the training processes that resume from it. The directory is built under a temporary name
and renamed into place when complete (``magiceraser.atomic.atomic_directory``), so a process
killed mid-save leaves the previous checkpoint as the newest loadable one; leftovers start with
``.tmp-`` and are swept on start. Files get the permissions ``open()`` gives (team-readable).
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magiceraser.atomic import atomic_directory, make_shareable, remove_stale_temporaries
from magiceraser.errors import UserError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{8})$")
STATE_NAME = "state.json"


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


# -- listing, saving, loading -------------------------------------------------------------------


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


def read_state(path: str | Path) -> dict[str, Any]:
    """The ``state.json`` of a checkpoint directory."""
    path = Path(path)
    try:
        return json.loads((path / STATE_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path / STATE_NAME} cannot be read ({exc}); delete that checkpoint to resume from an earlier one") from exc


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
    run_id: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically (call on rank 0 only).

    Then delete all but the newest ``keep_last`` checkpoints *of this run* (same ``run_id``):
    checkpoints another run left in the folder are never pruned.
    """
    from safetensors.torch import save_file

    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"checkpoint-{step:08d}"
    rng_tensors, rng_json = _split_rng(generator, rng_states)
    with atomic_directory(target) as tmp:
        save_file({k: v.contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(tmp / "rng.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()) + "\n")
        state = {"step": step, "world_size": world_size, "run_id": run_id, "data": data_states, "rng": rng_json, **(extra or {})}
        (tmp / STATE_NAME).write_text(json.dumps(state, indent=1) + "\n")
        for f in tmp.iterdir():
            make_shareable(f)
    mine = [p for p in list_checkpoints(root) if _run_id(p) == run_id]
    for old in mine[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _run_id(path: Path) -> str | None:
    try:
        return json.loads((path / STATE_NAME).read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def _load_plain(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain values; a pickled object is refused, not run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{path} holds pickled Python objects, which are not loaded (they could run code); "
            "it was not written by magiceraser: delete that checkpoint"
        ) from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint directory into a dict (tensors on CPU), without unpickling anything."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / STATE_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_NAME})")
    state = read_state(path)
    rng_tensors = load_file(str(path / "rng.safetensors"))
    return dict(
        path=path,
        state=state,
        trainable=load_file(str(path / "trainable.safetensors")),
        optimizer=_load_plain(path / "optimizer.pt"),
        scheduler=json.loads((path / "scheduler.json").read_text()),
        rng={"generator": rng_tensors["generator"], "per_rank": _join_rng(rng_tensors, state["rng"])},
    )


def sweep_temporaries(ckpt_root: str | Path) -> list[Path]:
    """Remove leftovers of saves that were killed (``.tmp-*``)."""
    return remove_stale_temporaries(ckpt_root)
