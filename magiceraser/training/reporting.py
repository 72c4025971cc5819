"""The metrics a training run reports: what its steps add up to between two reports, agreed by all processes.

Every process accumulates a :class:`Window` over its optimizer steps; at a report all of them
average the window in one all-reduce (and sum the learned-prompt counts of the whole run), so
the numbers are the group's, not rank 0's. Rank 0 then keeps them in the run's history, logs
them to W&B (:mod:`tracking`) and, every ``log_every`` steps, prints one console line.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from magiceraser.training.config import TrainConfig
from magiceraser.training.distributed import DistContext, all_reduce_scalars
from magiceraser.training.model import PromptTuner
from magiceraser.training.tracking import NullLogger

# The console lines of a training run name the training loop as their source, wherever the code that writes them lives.
log = logging.getLogger("magiceraser.training.loop")


class Window:
    """This process's optimizer steps since the last report: loss, time, data time, prompts."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.steps = 0
        self.time = 0.0
        self.data = 0.0
        self.learned = 0
        self.samples = 0

    def add_batch(self, learned: int, samples: int) -> None:
        self.learned += learned
        self.samples += samples

    def add_step(self, seconds: float, data_seconds: float) -> None:
        self.steps += 1
        self.time += seconds
        self.data += data_seconds


def report_due(step: int, cfg: TrainConfig) -> bool:
    """Whether ``step`` is reported: every ``log_every`` and ``wandb.log_every`` steps, and the last."""
    return step % cfg.log_every == 0 or step % cfg.wandb.log_every == 0 or step == cfg.phases.total_steps


def gather_metrics(window: Window, grad_norm: torch.Tensor, phase: int, samples_per_step: int,
                   learned_count: list[int], lr_scheduler: Any, model: PromptTuner, ctx: DistContext) -> dict[str, float]:
    """The window's metrics, averaged (or summed) over every process; a collective: all processes call it."""
    steps = max(1, window.steps)
    loss, gnorm, learned, samples, step_time = all_reduce_scalars(
        [float(window.loss_sum) / steps, float(grad_norm), window.learned, window.samples, window.time / steps],
        ctx,
    )
    learned, samples = learned * ctx.world_size, samples * ctx.world_size  # sums
    total_learned = all_reduce_scalars([learned_count[0], learned_count[1]], ctx, op="sum")
    metrics = {
        "train/loss": loss,
        "train/grad_norm": gnorm,
        "train/lr_lora": lr_scheduler.get_last_lr()[1],
        "train/lr_embedding": lr_scheduler.get_last_lr()[0],
        "train/step_time_s": step_time,
        "train/data_time_s": window.data / steps,
        "train/samples_per_s": samples_per_step / step_time if step_time > 0 else float("nan"),
        "train/prompt_learned_share": learned / samples if samples else float("nan"),
        "train/prompt_learned_share_total": total_learned[0] / max(1.0, total_learned[1]),
        "train/phase": phase,
        "train/v_star_norm": float(model.placeholder.vector.detach().norm()),
    }
    if ctx.device.type == "cuda":
        metrics["gpu/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
        metrics["gpu/memory_reserved_gb"] = torch.cuda.memory_reserved(ctx.device) / 2**30
    return metrics


def record_metrics(metrics: dict[str, float], step: int, cfg: TrainConfig, history: list[dict[str, float]],
                   logger: NullLogger) -> None:
    """Rank 0: keep the metrics of ``step`` in ``history``, log them to W&B, print the console line when due."""
    history.append({"step": step, **metrics})
    logger.log(metrics, step=step)
    if step % cfg.log_every == 0 or step == cfg.phases.total_steps:
        log.info(
            "step %d/%d  loss %.4f  grad_norm %.3g  lr %.2e  %.1f samples/s  learned-prompt share %.2f",
            step, cfg.phases.total_steps, metrics["train/loss"], metrics["train/grad_norm"],
            metrics["train/lr_lora"], metrics["train/samples_per_s"], metrics["train/prompt_learned_share_total"],
        )
