"""The optimizer step of the trainable parameters (v* and the LoRA weights).

AdamW with two parameter groups (v* and LoRA have their own learning rate and weight decay), one
learning-rate schedule over ``phases.total_steps`` and, for fp16, a loss scaler. A step
accumulates ``optim.grad_accumulation`` micro-batches (:func:`backward_micro_batch`); between
that and :func:`apply_gradients` the caller averages the gradients over the processes.

The noise, timesteps and VAE samples of a micro-batch are drawn for the whole global batch from
one generator seeded alike on every process, each process taking its slice: the same global
batch gives the same draws whatever the world size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from magiceraser.training.config import OptimConfig, TrainConfig
from magiceraser.training.distributed import DistContext
from magiceraser.training.model import PromptTuner, diffusion_loss, draw_step_noise


@dataclass(frozen=True)
class StepShape:
    """What every optimizer step of a run has in common: batch sizes, latent shape, clipping."""

    accum: int
    local_bs: int
    global_bs: int
    latent_shape: tuple[int, int, int]
    num_t: int
    max_norm: float


def step_shape(cfg: TrainConfig, model: PromptTuner, world_size: int) -> StepShape:
    local_bs = cfg.data.batch_size
    latent = cfg.data.resolution // model.vae_scale_factor
    return StepShape(
        accum=cfg.optim.grad_accumulation,
        local_bs=local_bs,
        global_bs=local_bs * world_size,
        latent_shape=(model.vae.config.latent_channels, latent, latent),
        num_t=model.noise_scheduler.config.num_train_timesteps,
        max_norm=cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else math.inf,
    )


def build_optimizer(model: PromptTuner, o: OptimConfig, total_steps: int) -> tuple[torch.optim.Optimizer, Any, Any]:
    """The optimizer, its learning-rate scheduler and the fp16 loss scaler (None unless fp16)."""
    optimizer = torch.optim.AdamW(
        [
            {"params": [model.placeholder.vector], "lr": o.embedding_lr, "weight_decay": o.embedding_weight_decay},
            {"params": model.lora_parameters(), "lr": o.lr, "weight_decay": o.weight_decay},
        ],
        betas=tuple(o.betas),
        eps=o.eps,
    )
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler(o.scheduler, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=total_steps)
    scaler = torch.amp.GradScaler("cuda") if o.mixed_precision == "fp16" else None
    return optimizer, lr_scheduler, scaler


def trainable_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """The parameters the current phase trains (phase 1 freezes the LoRA weights)."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def backward_micro_batch(model: PromptTuner, batch: dict[str, Any], generator: torch.Generator, shape: StepShape,
                         ctx: DistContext, autocast: Callable[[], Any], scaler: Any) -> torch.Tensor:
    """Add one micro-batch's gradients; returns its share of the step's loss (detached)."""
    batch = {k: (v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    draws = draw_step_noise(generator, shape.global_bs, ctx.rank, shape.local_bs, shape.latent_shape, shape.num_t, ctx.device)
    loss = diffusion_loss(model, batch, draws, autocast) / shape.accum
    (scaler.scale(loss) if scaler else loss).backward()
    return loss.detach()


def apply_gradients(optimizer: torch.optim.Optimizer, lr_scheduler: Any, scaler: Any,
                    params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the (averaged) gradients, step the optimizer and the schedule; returns the gradient norm."""
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    lr_scheduler.step()
    return grad_norm
