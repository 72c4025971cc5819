"""The training loop: phase 1 (v* only) then phase 2 (v* + LoRA), one process of possibly many.

Written for one device; distribution enters only through :mod:`distributed` (process context,
one all-reduce of the trainable gradients per optimizer step, gathering states for checkpoints).
Rank-0-only work (W&B, console, validation, checkpoint and export writes) is in
:meth:`Trainer._main_process_work` and :meth:`Trainer._finish`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME
from magiceraser.config import config_to_dict, save_config
from magiceraser.errors import UserError
from magiceraser.fingerprint import digest
from magiceraser.models.stable_diffusion import load_base_components
from magiceraser.olrd_samples import expand_urls
from magiceraser.training import checkpoint as ckpt
from magiceraser.training import resume as resume_checks
from magiceraser.training.config import TrainConfig
from magiceraser.training.data import StreamSpec, make_loader
from magiceraser.training.distributed import (
    DistContext,
    all_reduce_mean_,
    all_reduce_scalars,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
)
from magiceraser.training.examples import ExampleSpec
from magiceraser.training.export import sweep_incomplete_export
from magiceraser.training.model import (
    DTYPES,
    PromptTuner,
    diffusion_loss,
    draw_step_noise,
)
from magiceraser.training.sampling import stable_seed
from magiceraser.training.tracking import NullLogger, RunLogger

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run leaves in memory (tests and benchmarks read it)."""

    model: PromptTuner
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    out_dir: Path | None = None
    rank: int = 0
    world_size: int = 1
    learned_share: float = float("nan")


def training_shards(cfg: TrainConfig) -> list[str]:
    """The shard URLs a run reads: the latent cache's listed shards, else ``data.urls`` expanded.

    Raises UserError for patterns that match nothing, missing shards or an unfinished cache.
    """
    if cfg.data.latent_cache:
        from magiceraser.training.latent_cache import cache_shard_urls

        return cache_shard_urls(cfg.data.latent_cache)
    return expand_urls(cfg.data.urls, key="data.urls")


def preflight(cfg: TrainConfig) -> None:
    """What a launcher checks before starting workers: the out_dir and the data (no model needed)."""
    resume_checks.check_out_dir(Path(cfg.out_dir), cfg.resume, cfg.overwrite)
    training_shards(cfg)


def _on_all_ranks(check: Callable[[], Any], ctx: DistContext) -> Any:
    """Run a check of shared state on rank 0; its result, or its UserError, reaches every rank.

    Raising on rank 0 alone would leave the other ranks waiting in the next collective forever.
    """
    outcome: tuple[str, Any]
    if ctx.is_main:
        try:
            outcome = ("ok", check())
        except UserError as exc:
            outcome = ("error", str(exc))
    else:
        outcome = ("ok", None)
    kind, value = broadcast_object(outcome, ctx)
    if kind == "error":
        raise UserError(value)
    return value


class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: DistContext | None = None, components: dict[str, Any] | None = None):
        self.cfg = cfg
        self.ctx = ctx or init_distributed(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        mp = cfg.optim.mixed_precision
        if mp == "fp16" and self.ctx.device.type != "cuda":
            raise ValueError("optim.mixed_precision=fp16 needs a CUDA device; use bf16 or no on CPU")
        self.weight_dtype = DTYPES[mp]
        # Refuse what would mix or destroy another run before any model is loaded.
        self.replaced = _on_all_ranks(lambda: resume_checks.check_out_dir(self.out_dir, cfg.resume, cfg.overwrite), self.ctx)
        if cfg.resume:
            self._check_resume(model_digest=None)
        self.urls = training_shards(cfg)

        # LoRA initialisation must be identical on every process: seed before building the model.
        torch.manual_seed(cfg.seed)
        comps = components or load_base_components(cfg.model.base_model, cfg.model.revision)
        model_digest = resume_checks.base_model_digest(comps)
        if cfg.data.latent_cache:
            from magiceraser.training.latent_cache import check_cache_matches, vae_digest

            check_cache_matches(cfg.data.latent_cache, cfg, vae_digest(comps["vae"].config))
        self.dependencies = resume_checks.training_dependencies(cfg, self.ctx.world_size, self.ctx.device.type, model_digest)
        self.run_id = broadcast_object(uuid.uuid4().hex, self.ctx)
        self.model = PromptTuner(comps, cfg.model, self.weight_dtype).to(self.ctx.device)
        self.base_scheduler_config = dict(self.model.noise_scheduler.config)
        # From here on each process has its own global RNG stream (LoRA dropout).
        torch.manual_seed(stable_seed("torch", cfg.seed, self.ctx.rank) % 2**62)

        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [self.model.placeholder.vector], "lr": o.embedding_lr, "weight_decay": o.embedding_weight_decay},
                {"params": self.model.lora_parameters(), "lr": o.lr, "weight_decay": o.weight_decay},
            ],
            betas=tuple(o.betas),
            eps=o.eps,
        )
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            o.scheduler, self.optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=cfg.phases.total_steps
        )
        self.scaler = torch.amp.GradScaler("cuda") if mp == "fp16" else None
        # One generator for noise, timesteps and VAE samples, seeded alike on every process.
        self.generator = torch.Generator(device=self.ctx.device).manual_seed(cfg.seed)
        self.step = 0
        self.data_state: dict[str, Any] = {"phase": 0, "positions": {}, "batches": 0, "reseed": 0}
        self.logger: NullLogger = NullLogger()
        self.history: list[dict[str, float]] = []
        self.learned_count = [0, 0]  # learned prompts, samples (this process)
        self._validation_samples: list[dict[str, Any]] | None = None

    # -- setup ----------------------------------------------------------------------------------

    def _autocast(self):
        if self.cfg.optim.mixed_precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.weight_dtype)

    def _resume(self) -> dict[str, Any]:
        path = broadcast_object(str(ckpt.latest_checkpoint(self.ckpt_root) or ""), self.ctx)
        if not path:
            if self.ctx.is_main:
                log.info("resume requested but %s holds no checkpoint: starting fresh", self.ckpt_root)
            return {}
        accepted = self._check_resume(model_digest=self.dependencies["base_model_config"])
        if accepted and self.ctx.is_main:
            log.warning("resuming %s with changed settings: %s", path, "; ".join(accepted))
        state = ckpt.load_checkpoint(path)
        self.run_id = state["state"].get("run_id") or self.run_id
        self.model.load_trainable_state(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["rng"]["generator"].to(self.generator.get_state().device))
        self.step = int(state["state"]["step"])
        saved_world = int(state["state"]["world_size"])
        if saved_world == self.ctx.world_size:
            ckpt.set_rng_state(state["rng"]["per_rank"][self.ctx.rank])
            data = state["state"]["data"][self.ctx.rank]
            data["positions"] = {int(k): [int(v[0]), int(v[1])] for k, v in data["positions"].items()}
            self.data_state = data
        else:
            # Streams are defined per (rank, worker): with another world size they cannot be continued,
            # so new streams start with a fresh seed (no sample order is replayed).
            log.warning("checkpoint was written by %d processes, now %d: data streams restart reseeded", saved_world, self.ctx.world_size)
            self.data_state = {"phase": 0, "positions": {}, "batches": 0, "reseed": self.step}
        if self.ctx.is_main:
            log.info("resumed from %s at step %d", path, self.step)
        return state["state"]

    def _check_resume(self, model_digest: str | None) -> list[str]:
        """Compare the newest checkpoint's dependencies with this run's (see ``resume.py``).

        Called twice: before the base model loads (everything but its config digest, so a changed
        seed is refused in a second, not after minutes of loading) and after (everything).
        """
        cfg = self.cfg

        def check() -> list[str]:
            path = ckpt.latest_checkpoint(self.ckpt_root)
            if path is None:
                return []
            current = resume_checks.training_dependencies(cfg, self.ctx.world_size, self.ctx.device.type, model_digest or "")
            ignore = () if model_digest else ("base_model_config",)
            return resume_checks.check_resume(ckpt.read_state(path).get("dependencies"), current, path,
                                              cfg.resume_allow_changes, ignore=ignore)

        return _on_all_ranks(check, self.ctx)

    def _loader(self, phase: int):
        cfg, d = self.cfg, self.cfg.data
        resumed = self.data_state.get("phase") == phase
        positions = self.data_state["positions"] if resumed else {}
        batches = self.data_state["batches"] if resumed else 0
        reseed = self.data_state.get("reseed", 0)
        self.data_state = {"phase": phase, "positions": dict(positions), "batches": batches, "reseed": reseed}
        spec = StreamSpec(
            urls=self.urls,
            example=ExampleSpec(
                resolution=d.resolution,
                vae_scale_factor=self.model.vae_scale_factor,
                mode=d.mode,
                crop_scale_min=d.crop_scale_min,
                mask_dilate_max=d.mask_dilate_max,
                random_mask_max_boxes=d.random_mask_max_boxes,
                seed=d.seed,
            ),
            batch_size=d.batch_size,
            tokenizer=self.model.tokenizer,
            token=cfg.model.token,
            # Phase 1 is textual inversion: every prompt must contain R* for v* to learn anything.
            learned_prob=1.0 if phase == 1 else d.prompt_learned_prob,
            tag_choice=d.tag_choice,
            shuffle_buffer=d.shuffle_buffer,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            subset_fraction=cfg.phases.textual_inversion_subset if phase == 1 else 1.0,
            cached=bool(d.latent_cache),
            stream_name=f"phase{phase}-r{reseed}",
            start_positions=dict(positions),
            worker_offset=batches % max(1, d.num_workers),
        )
        return iter(make_loader(spec, d.num_workers))

    # -- the loop -------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        resumed_state = self._resume() if cfg.resume else {}
        if ctx.is_main:
            if cfg.overwrite and self.replaced:
                log.warning("--overwrite: deleting the previous run in %s (%s)", self.out_dir, ", ".join(self.replaced))
                shutil.rmtree(self.ckpt_root, ignore_errors=True)
                for name in (META_NAME, LORA_WEIGHTS_NAME, EMBEDS_NAME):
                    (self.out_dir / name).unlink(missing_ok=True)
            ckpt.sweep_temporaries(self.ckpt_root)
            sweep_incomplete_export(self.out_dir)
            save_config(cfg, self.out_dir / "train_config.yaml")
            self.logger = RunLogger(cfg.wandb, self.out_dir, config_to_dict(cfg), resume_id=resumed_state.get("wandb_run_id"))
        total, ti_steps, accum = cfg.phases.total_steps, cfg.phases.textual_inversion_steps, cfg.optim.grad_accumulation
        local_bs = cfg.data.batch_size
        global_bs = local_bs * ctx.world_size
        latent = cfg.data.resolution // self.model.vae_scale_factor
        latent_shape = (self.model.vae.config.latent_channels, latent, latent)
        num_t = self.model.noise_scheduler.config.num_train_timesteps
        max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else math.inf
        self.model.unet.train()

        phase, batches = None, None
        loss_sum = torch.zeros((), device=ctx.device)
        window = {"steps": 0, "time": 0.0, "data": 0.0, "learned": 0, "samples": 0}
        while self.step < total:
            want = 1 if self.step < ti_steps else 2
            if want != phase:
                phase = want
                self.model.set_phase(phase)
                batches = self._loader(phase)
                if ctx.is_main:
                    log.info("phase %d from step %d (%s)", phase, self.step, "v* only" if phase == 1 else "v* + LoRA")
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
            t0 = time.perf_counter()
            data_time = 0.0
            self.optimizer.zero_grad(set_to_none=True)
            for _ in range(accum):
                td = time.perf_counter()
                batch = next(batches)
                data_time += time.perf_counter() - td
                self.data_state["positions"][batch["worker"]] = batch["position"]
                self.data_state["batches"] += 1
                n_learned = int(batch["learned"].sum())
                window["learned"] += n_learned
                window["samples"] += len(batch["keys"])
                self.learned_count[0] += n_learned
                self.learned_count[1] += len(batch["keys"])
                batch = {k: (v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
                draws = draw_step_noise(self.generator, global_bs, ctx.rank, local_bs, latent_shape, num_t, ctx.device)
                loss = diffusion_loss(self.model, batch, draws, self._autocast) / accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                loss_sum += loss.detach()
            all_reduce_mean_(params, ctx)
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.lr_scheduler.step()
            self.step += 1
            window["steps"] += 1
            window["time"] += time.perf_counter() - t0
            window["data"] += data_time

            if self.step % cfg.log_every == 0 or self.step % cfg.wandb.log_every == 0 or self.step == total:
                self._report(loss_sum, grad_norm, window, phase, accum * global_bs)
                loss_sum = torch.zeros((), device=ctx.device)
                window = {"steps": 0, "time": 0.0, "data": 0.0, "learned": 0, "samples": 0}
            if cfg.checkpoint.every and (self.step % cfg.checkpoint.every == 0 or self.step == total):
                self._save_checkpoint()
            if cfg.validation.urls and cfg.validation.every and self.step % cfg.validation.every == 0 and self.step < total:
                self._validate()
        return self._finish()

    # -- rank-0 work and the collectives that feed it ------------------------------------------

    def _report(self, loss_sum: torch.Tensor, grad_norm: torch.Tensor, window: dict[str, Any], phase: int, samples_per_step: int) -> None:
        steps = max(1, window["steps"])
        loss, gnorm, learned, samples, step_time = all_reduce_scalars(
            [float(loss_sum) / steps, float(grad_norm), window["learned"], window["samples"], window["time"] / steps],
            self.ctx,
        )
        learned, samples = learned * self.ctx.world_size, samples * self.ctx.world_size  # sums
        total_learned = all_reduce_scalars([self.learned_count[0], self.learned_count[1]], self.ctx, op="sum")
        metrics = {
            "train/loss": loss,
            "train/grad_norm": gnorm,
            "train/lr_lora": self.lr_scheduler.get_last_lr()[1],
            "train/lr_embedding": self.lr_scheduler.get_last_lr()[0],
            "train/step_time_s": step_time,
            "train/data_time_s": window["data"] / steps,
            "train/samples_per_s": samples_per_step / step_time if step_time > 0 else float("nan"),
            "train/prompt_learned_share": learned / samples if samples else float("nan"),
            "train/prompt_learned_share_total": total_learned[0] / max(1.0, total_learned[1]),
            "train/phase": phase,
            "train/v_star_norm": float(self.model.placeholder.vector.detach().norm()),
        }
        if self.ctx.device.type == "cuda":
            metrics["gpu/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(self.ctx.device) / 2**30
            metrics["gpu/memory_reserved_gb"] = torch.cuda.memory_reserved(self.ctx.device) / 2**30
        self._main_process_work(metrics)

    def _main_process_work(self, metrics: dict[str, float]) -> None:
        if not self.ctx.is_main:
            return
        self.history.append({"step": self.step, **metrics})
        self.logger.log(metrics, step=self.step)
        if self.step % self.cfg.log_every == 0 or self.step == self.cfg.phases.total_steps:
            log.info(
                "step %d/%d  loss %.4f  grad_norm %.3g  lr %.2e  %.1f samples/s  learned-prompt share %.2f",
                self.step, self.cfg.phases.total_steps, metrics["train/loss"], metrics["train/grad_norm"],
                metrics["train/lr_lora"], metrics["train/samples_per_s"], metrics["train/prompt_learned_share_total"],
            )

    def _save_checkpoint(self) -> None:
        rng_states = gather_objects(ckpt.rng_state(), self.ctx)
        data_states = gather_objects(dict(self.data_state), self.ctx)
        if self.ctx.is_main:
            path = ckpt.save_checkpoint(
                self.ckpt_root, self.step, self.model.trainable_state(), self.optimizer, self.lr_scheduler,
                self.generator, rng_states, data_states, self.ctx.world_size, self.cfg.checkpoint.keep_last, self.run_id,
                extra={"wandb_run_id": getattr(self.logger, "run_id", None), "dependencies": self.dependencies,
                       "fingerprint": digest(self.dependencies)},
            )
            log.info("saved %s", path)
        barrier(self.ctx)

    def _validate(self) -> None:
        if not self.ctx.is_main:
            return
        from magiceraser.atomic import atomic_write_bytes
        from magiceraser.imageio import encode_image
        from magiceraser.training.data import read_first_samples
        from magiceraser.training.validation import prepare_validation_samples, run_validation

        v = self.cfg.validation
        if self._validation_samples is None:
            decoded = read_first_samples(v.urls, v.num_samples)
            self._validation_samples = prepare_validation_samples(decoded, self.cfg.data.resolution, self.cfg.data.crop_scale_min, self.cfg.data.seed)
        if not self._validation_samples:
            log.warning("validation.urls %s gave no usable sample; skipping validation", v.urls)
            return
        grid = run_validation(
            self.model, self.base_scheduler_config, self._validation_samples, self.cfg.model.token,
            v.num_inference_steps, v.guidance_scale, v.seed, self.ctx.device,
        )
        atomic_write_bytes(self.out_dir / "validation" / f"step-{self.step:08d}.png", encode_image(grid, "png"))
        self.logger.log_image("validation/grid", grid, "rows: input, mask, result, target", step=self.step)

    def _finish(self) -> TrainResult:
        from magiceraser.training.export import export_trained

        if self.cfg.validation.urls:
            self._validate()
        if self.ctx.is_main:
            export_trained(
                self.out_dir, self.model.unet, self.model.placeholder.vector, self.cfg.model.token, self.cfg.model.base_model,
                extra={"steps": self.step, "world_size": self.ctx.world_size, "training_config": config_to_dict(self.cfg)},
            )
            log.info("exported v* and LoRA to %s", self.out_dir)
            self.logger.finish()
        barrier(self.ctx)
        total = all_reduce_scalars(self.learned_count, self.ctx, op="sum")
        return TrainResult(
            model=self.model, steps=self.step, history=self.history, out_dir=self.out_dir, rank=self.ctx.rank,
            world_size=self.ctx.world_size, learned_share=total[0] / max(1.0, total[1]),
        )


def run_training(cfg: TrainConfig, ctx: DistContext | None = None, components: dict[str, Any] | None = None) -> TrainResult:
    """Train with ``cfg`` in this process (one rank of a group when launched by accelerate/torchrun/Ray)."""
    return Trainer(cfg, ctx, components).train()
