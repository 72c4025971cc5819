"""The trainer's state in and out of a checkpoint, across the processes of a run.

Saving: every process's RNG states and data-stream state are gathered on rank 0
(:func:`gather_process_states`), which encodes them with the trainable weights, the optimizer,
the schedule and the shared generator (:func:`encode_trainer_state`). Restoring: every process
reads the chosen checkpoint and all agree that each could (:func:`read_on_every_process`), then
the shared state is restored everywhere (:func:`restore_shared_state`) and each process takes its
own RNG and data-stream state back (:func:`restore_process_state`), when the checkpoint was
written by as many processes as now run.
"""

from __future__ import annotations

from typing import Any

import torch

from magiceraser.errors import UserError
from magiceraser.fingerprint import digest
from magiceraser.training import checkpoint as ckpt
from magiceraser.training.checkpoint_store import CheckpointRef, CheckpointStore, DamagedCheckpoint
from magiceraser.training.distributed import DistContext, all_reduce_scalars, gather_objects
from magiceraser.training.model import PromptTuner


def gather_process_states(data_state: dict[str, Any], ctx: DistContext) -> tuple[list[Any], list[Any]]:
    """Every process's RNG states and data state (a collective: all processes call it)."""
    rng_states = gather_objects(ckpt.rng_state(), ctx)
    data_states = gather_objects(dict(data_state), ctx)
    return rng_states, data_states


def encode_trainer_state(step: int, model: PromptTuner, optimizer: torch.optim.Optimizer, lr_scheduler: Any,
                         generator: torch.Generator, rng_states: list[Any], data_states: list[Any], world_size: int,
                         run_id: str, launch_id: str, wandb_run_id: str | None,
                         dependencies: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The checkpoint files and marker state of ``step`` (rank 0)."""
    return ckpt.encode_checkpoint(
        step, model.trainable_state(), optimizer, lr_scheduler, generator,
        rng_states, data_states, world_size, run_id,
        extra={"launch": launch_id, "wandb_run_id": wandb_run_id,
               "dependencies": dependencies, "fingerprint": digest(dependencies)},
    )


def read_on_every_process(store: CheckpointStore, ref: CheckpointRef, verified: dict[str, Any] | None,
                          ctx: DistContext) -> dict[str, Any]:
    """The checkpoint ``ref``, decoded (``verified``: rank 0's copy, read when the run started).

    Every process must know whether all could read it, or one would wait in the next collective
    alone: a UserError on every process when any could not.
    """
    problem = ""
    state: dict[str, Any] = {}
    try:  # rank 0 read and verified it when the run started
        state = verified or ckpt.load_checkpoint(store, ref)
    except (DamagedCheckpoint, OSError) as exc:  # rank 0 verified it a moment ago: the storage changed under us
        problem = str(exc)
    if all_reduce_scalars([1.0 if problem else 0.0], ctx, op="sum")[0] > 0:
        raise UserError(f"checkpoint {ref.url} could not be read by every process ({problem or 'on another process'}); "
                        "check that every node sees the checkpoint folder, then start the run again")
    return state


def restore_shared_state(state: dict[str, Any], model: PromptTuner, optimizer: torch.optim.Optimizer,
                         lr_scheduler: Any, generator: torch.Generator) -> int:
    """Load the trainable weights, optimizer, schedule and shared generator; returns the checkpoint's step."""
    model.load_trainable_state(state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["rng"]["generator"].to(generator.get_state().device))
    return int(state["state"]["step"])


def saved_world_size(state: dict[str, Any]) -> int:
    return int(state["state"]["world_size"])


def restore_process_state(state: dict[str, Any], ctx: DistContext) -> dict[str, Any] | None:
    """This process's RNG states restored and its data state; None when another number of processes wrote it.

    Streams are defined per (rank, worker): with another world size they cannot be continued.
    """
    if saved_world_size(state) != ctx.world_size:
        return None
    ckpt.set_rng_state(state["rng"]["per_rank"][ctx.rank])
    data = state["state"]["data"][ctx.rank]
    data["positions"] = {int(k): [int(v[0]), int(v[1])] for k, v in data["positions"].items()}
    return data
