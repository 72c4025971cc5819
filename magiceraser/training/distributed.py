"""All distributed concerns of the trainer in one place: process context and gradient reduction.

The process group comes from Accelerate's ``PartialState`` (``accelerate launch`` / torchrun env,
multi-node included, or the group Ray Train already created). Model code is written for one
device; only v* and the LoRA weights train, so gradients are synchronised by one coalesced
all-reduce of exactly those tensors per optimizer step (a few MB) instead of wrapping the 1B
frozen parameters in DDP. This also makes the phase switch (v* only -> v* + LoRA) a matter of
which tensors are reduced, with no unused-parameter errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from magiceraser.errors import UserError


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join (or create) the process group through Accelerate and pick this process's device."""
    from accelerate import PartialState

    from magiceraser.devices import resolve_device

    state = PartialState(cpu=resolve_device(device) == "cpu")
    return DistContext(
        rank=state.process_index,
        world_size=state.num_processes,
        local_rank=state.local_process_index,
        device=state.device,
    )


def all_reduce_mean_(params: Sequence[torch.nn.Parameter], ctx: DistContext, flags: Sequence[float] = ()) -> torch.Tensor:
    """Average the gradients of ``params`` over processes in one flat all-reduce (None counts as 0).

    ``flags`` ride along in the same all-reduce, as extra elements; their sums over processes
    are returned as a tensor on the gradients' device (one process: the flags themselves, on the
    CPU). The trainer sends its preemption flag this way, so agreeing on the step to stop at
    costs no collective of its own. Read the result with :class:`StepFlags`, which does not make
    the host wait for the device.
    """
    if not ctx.distributed:
        return torch.tensor([float(f) for f in flags], dtype=torch.float32)
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    device = grads[0].device if grads else (ctx.device if ctx.device.type == "cuda" else torch.device("cpu"))
    extra = torch.tensor([float(f) for f in flags], dtype=torch.float32, device=device)
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [extra])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    n_grads = flat.numel() - len(flags)
    sums = flat[n_grads:].clone()
    flat = flat[:n_grads]
    flat /= ctx.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
    return sums


class StepFlags:
    """The flags of each step's all-reduce, read so that every process decides at the same step.

    On the CPU the sums are read at once: a decision in the step they were reduced in. On a GPU
    reading them at once would make the host wait for the step's kernels every step; instead
    they are copied to pinned host memory without blocking and read one step later, when that
    copy has long finished (every process then decides one step later, all at the same step).
    """

    def __init__(self) -> None:
        self._pending: tuple[torch.Tensor, Any] | None = None

    def push(self, sums: torch.Tensor) -> list[float] | None:
        """Hand over this step's sums; returns the sums to decide on now (None: nothing yet)."""
        if sums.device.type != "cuda":
            return sums.tolist()
        host = torch.empty(sums.shape, dtype=sums.dtype, pin_memory=True)
        host.copy_(sums, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        previous, self._pending = self._pending, (host, event)
        if previous is None:
            return None
        previous[1].synchronize()
        return previous[0].tolist()


def all_reduce_scalars(values: Sequence[float], ctx: DistContext, op: str = "mean") -> list[float]:
    """Mean (or sum) of a few floats over processes, for logging."""
    if not ctx.distributed:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if op == "mean":
        t /= ctx.world_size
    return t.tolist()


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every process's ``obj`` (list indexed by rank); the single object in one process."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main_process(work: Callable[[], Any], ctx: DistContext) -> Any:
    """Run ``work`` (a check or a write of shared state) on rank 0; its result or its failure reaches every rank.

    Raising on rank 0 alone would leave the other ranks waiting in the next collective until it
    times out. A UserError is raised on every rank with its message (one line each); any other
    exception is raised on rank 0 as it is and as a RuntimeError naming it on the others.
    """
    outcome: tuple[str, Any]
    error: BaseException | None = None
    if ctx.is_main:
        try:
            outcome = ("ok", work())
        except UserError as exc:
            error, outcome = exc, ("user_error", str(exc))
        except BaseException as exc:  # noqa: BLE001 - told to the other ranks, then raised here as it is
            error, outcome = exc, ("bug", f"{type(exc).__name__}: {exc}")
    else:
        outcome = ("ok", None)
    kind, value = broadcast_object(outcome, ctx)
    if error is not None:
        raise error
    if kind == "user_error":
        raise UserError(value)
    if kind == "bug":
        raise RuntimeError(f"rank 0 failed ({value}); this process stops with it")
    return value


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def shutdown_distributed() -> None:
    """Destroy the process group this process joined (a lingering gloo group blocks interpreter exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
