"""The training loop: phase 1 (v* only) then phase 2 (v* + LoRA), one process of possibly many.

Written for one device; distribution enters only through :mod:`distributed` (process context,
one all-reduce of the trainable gradients per optimizer step, gathering states for checkpoints).
Rank-0-only work (W&B, console, validation, checkpoint and export writes) is in
:meth:`Trainer._main_process_work` and :meth:`Trainer._finish`; what the run starts from (locks,
restart or command, the checkpoint it continues) is :mod:`startup`.

A preemption signal (:mod:`preemption`) is read once per optimizer step and summed in that
step's gradient all-reduce, so all processes stop after the same step, save one checkpoint
together and raise :class:`~magiceraser.training.preemption.Preempted`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
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
from magiceraser.training import launch as launches
from magiceraser.training import resume as resume_checks
from magiceraser.training import startup
from magiceraser.training.checkpoint_store import CheckpointRef, DamagedCheckpoint, checkpoint_name
from magiceraser.training.config import TrainConfig, public_train_config
from magiceraser.training.data import StreamSpec, make_loader, stop_loader
from magiceraser.training.distributed import (
    DistContext,
    StepFlags,
    all_reduce_mean_,
    all_reduce_scalars,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
    on_main_process,
)
from magiceraser.training.examples import ExampleSpec
from magiceraser.training.export import sweep_incomplete_export
from magiceraser.training.model import (
    DTYPES,
    PromptTuner,
    diffusion_loss,
    draw_step_noise,
)
from magiceraser.training.preemption import INTERRUPT, Preempted, PreemptionWatcher, watched_signals
from magiceraser.training.sampling import stable_seed
from magiceraser.training.tracking import NullLogger, RunLogger
from magiceraser.write_errors import writing

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


def preflight(cfg: TrainConfig, launch_id: str, world_size: int, device_type: str) -> None:
    """What a launcher checks before starting workers, under its locks: the folders, the checkpoint, the data.

    No model is needed: a refusal here is one line within a second, not a failed group of workers.
    """
    startup.plan_start(cfg, startup.checkpoint_store(cfg), launch_id, world_size, device_type)
    training_shards(cfg)


class Trainer:
    """One process's part of a training run (see the module docstring).

    ``launch_id`` names the launch across restarts (default: :func:`launch.launch_id`; a Ray
    driver passes its own); ``hold_locks=False`` when the launcher holds the folders' locks.
    Construct, then :meth:`train` (which releases the locks); :meth:`close` releases them
    without training.
    """

    def __init__(self, cfg: TrainConfig, ctx: DistContext | None = None, components: dict[str, Any] | None = None,
                 launch_id: str | None = None, hold_locks: bool = True):
        self.cfg = cfg
        self.ctx = ctx or init_distributed(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.out_dir = Path(cfg.out_dir)
        self.store = startup.checkpoint_store(cfg)
        mp = cfg.optim.mixed_precision
        if mp == "fp16" and self.ctx.device.type != "cuda":
            raise ValueError("optim.mixed_precision=fp16 needs a CUDA device; use bf16 or no on CPU")
        self.weight_dtype = DTYPES[mp]
        self.launch_id = broadcast_object(launch_id or launches.launch_id(), self.ctx)
        self.locks: list[Any] = []
        # Lock the folders and refuse what would mix or destroy another run before any model is loaded.
        if hold_locks:
            on_main_process(lambda: self.locks.extend(startup.take_locks(cfg, self.store, self.launch_id)), self.ctx)
        try:
            self._setup(components)
        except BaseException:
            self.close()
            raise

    def _setup(self, components: dict[str, Any] | None) -> None:
        cfg = self.cfg
        self._verified: dict[str, Any] | None = None  # rank 0: the checkpoint the plan read and checked, decoded
        self.plan: startup.StartPlan = on_main_process(self._plan_start, self.ctx)
        self.urls = training_shards(cfg)

        # LoRA initialisation must be identical on every process: seed before building the model.
        torch.manual_seed(cfg.seed)
        comps = components or load_base_components(cfg.model.base_model, cfg.model.revision)
        model_digest = resume_checks.base_model_digest(comps)
        if cfg.data.latent_cache:
            from magiceraser.training.latent_cache import check_cache_matches, vae_digest

            check_cache_matches(cfg.data.latent_cache, cfg, vae_digest(comps["vae"].config))
        self.dependencies = resume_checks.training_dependencies(cfg, self.ctx.world_size, self.ctx.device.type, model_digest)
        if self.plan.checkpoint:
            accepted = on_main_process(lambda: startup.check_dependencies(
                cfg, self.plan, self.store.url(self.plan.checkpoint), self.ctx.world_size, self.ctx.device.type, model_digest),
                self.ctx)
            if accepted and self.ctx.is_main:
                log.warning("continuing %s with changed settings: %s", self.store.url(self.plan.checkpoint), "; ".join(accepted))
        self.run_id = self.plan.run_id
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
        self.scaler = torch.amp.GradScaler("cuda") if o.mixed_precision == "fp16" else None
        # One generator for noise, timesteps and VAE samples, seeded alike on every process.
        self.generator = torch.Generator(device=self.ctx.device).manual_seed(cfg.seed)
        self.step = 0
        self.data_state: dict[str, Any] = {"phase": 0, "positions": {}, "batches": 0, "reseed": 0}
        self.logger: NullLogger = NullLogger()
        self.history: list[dict[str, float]] = []
        self.learned_count = [0, 0]  # learned prompts, samples (this process)
        self._validation_samples: list[dict[str, Any]] | None = None
        self.preemption = PreemptionWatcher(watched_signals(cfg.preemption.signals))
        self.step_flags = StepFlags()
        self._batches: Any = None  # the current phase's loader iterator
        self._checkpoint_step = self.plan.step  # the newest checkpoint of this run (0: none yet)

    def _plan_start(self) -> startup.StartPlan:
        """Rank 0's start plan; the decoded checkpoint it verified stays here (the plan sent to all is small)."""
        plan = startup.plan_start(self.cfg, self.store, self.launch_id, self.ctx.world_size, self.ctx.device.type)
        self._verified, plan.loaded = plan.loaded, None
        return plan

    def close(self) -> None:
        """Release the folders' locks (idempotent); :meth:`train` does it when it ends."""
        startup.release_locks(self.locks)

    # -- setup ----------------------------------------------------------------------------------

    def _autocast(self):
        if self.cfg.optim.mixed_precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.weight_dtype)

    def _resume(self) -> None:
        """Load the checkpoint the start plan chose (every process reads and verifies it)."""
        name = self.plan.checkpoint
        assert name is not None
        ref = CheckpointRef(name, self.plan.step, self.store.url(name))
        problem = ""
        try:  # rank 0 read and verified it when the run started
            state, self._verified = self._verified or ckpt.load_checkpoint(self.store, ref), None
        except (DamagedCheckpoint, OSError) as exc:  # rank 0 verified it a moment ago: the storage changed under us
            problem = str(exc)
        # Every process must know whether all could read it, or one would wait in the next collective alone.
        if all_reduce_scalars([1.0 if problem else 0.0], self.ctx, op="sum")[0] > 0:
            raise UserError(f"checkpoint {ref.url} could not be read by every process ({problem or 'on another process'}); "
                            "check that every node sees the checkpoint folder, then start the run again")
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
            log.info("resumed from %s at step %d", ref.url, self.step)

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
        return iter(make_loader(spec, d.num_workers, ignore_signals=watched_signals(cfg.preemption.signals)))

    # -- the loop -------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        """Train to ``phases.total_steps`` and export; :class:`Preempted` after a preemption's checkpoint."""
        try:
            with self.preemption:
                return self._train()
        except Preempted:
            self.logger.finish(preempted=True)
            raise
        finally:
            self._stop_loader()
            self.logger.finish()
            self.close()

    def _stop_loader(self) -> None:
        batches, self._batches = self._batches, None
        stop_loader(batches)

    def _start_outputs(self) -> None:
        """Rank 0, before the first step: apply --overwrite, sweep leftovers, record the run and open W&B.

        Called through ``on_main_process``: a refused write here stops every process in one line.
        """
        cfg = self.cfg
        if self.plan.replaced:
            log.warning("--overwrite: deleting the previous run in %s (%s)", self.out_dir, ", ".join(self.plan.replaced))
            for ref in self.store.list():
                self.store.remove(ref)
            for name in (META_NAME, LORA_WEIGHTS_NAME, EMBEDS_NAME):
                (self.out_dir / name).unlink(missing_ok=True)
        sweep_incomplete_export(self.out_dir)
        public = public_train_config(cfg)
        with writing(self.out_dir, "the run's config"):
            save_config(public, self.out_dir / "train_config.yaml")
        self.logger = RunLogger(cfg.wandb, self.out_dir, config_to_dict(public), resume_id=self.plan.wandb_run_id,
                                logged_step=self.plan.logged_step, on_logged=self._note_logged_step)
        with writing(self.store.url(launches.RUN_STATE_NAME), "the run's state"):
            self._write_run_state()  # from here on a restarted process of this launch continues this run

    def _write_run_state(self) -> None:
        """``run_state.json`` in the checkpoint folder: this launch, its attempt, the run, its newest
        checkpoint's step, the W&B run and its last logged step (``launch.py``)."""
        launches.write_run_state(self.store.folder, {
            "launch": self.launch_id, "attempt": self.plan.attempt, "run_id": self.run_id,
            "checkpoint_step": self._checkpoint_step,
            "wandb_run_id": self.logger.run_id or self.plan.wandb_run_id,
            "wandb_logged_step": max(self.plan.logged_step, self.logger.logged_step),
        })

    def _note_logged_step(self) -> None:
        """After each W&B log: record the step. Best effort: a storage hiccup here must not stop rank 0
        alone (the others would wait for it in the next all-reduce); at worst a restart logs a step twice."""
        try:
            self._write_run_state()
        except OSError as exc:
            log.warning("could not record the last logged W&B step in %s (%s)", self.store, exc)

    def _train(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        if self.plan.checkpoint:
            self._resume()
        on_main_process(self._start_outputs, ctx)
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
                self._stop_loader()
                batches = self._batches = self._loader(phase)
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
            # The preemption flag rides in the gradient all-reduce: every process learns of a signal
            # any of them received, in the same step (on a GPU: one step later, all alike).
            flags = self.step_flags.push(all_reduce_mean_(params, ctx, flags=[float(self.preemption.requested)]))
            stop = bool(flags and flags[0] > 0)
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
            saved = None
            if cfg.checkpoint.every and (self.step % cfg.checkpoint.every == 0 or self.step == total):
                saved = self._save_checkpoint()
            if stop and self.step < total:
                saved = saved or self._save_checkpoint()
                where = self.preemption.received or "another process"
                if ctx.is_main:
                    kind = "interrupt" if where.split()[0] == INTERRUPT else "preemption signal"
                    log.warning("%s (%s): stopped after step %d with checkpoint %s", kind, where, self.step, saved)
                raise Preempted(self.step, where, saved)
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

    def _save_checkpoint(self) -> str:
        """Every process's states to rank 0, which writes the checkpoint; returns where it is (on every process).

        A refused write (full disk, quota) or a lost lock is one user error on every process,
        and the previous checkpoint stays intact.
        """
        rng_states = gather_objects(ckpt.rng_state(), self.ctx)
        data_states = gather_objects(dict(self.data_state), self.ctx)

        def write() -> str:
            startup.check_locks(self.locks)  # never write over the folder of a launch that took our lock over
            files, state = ckpt.encode_checkpoint(
                self.step, self.model.trainable_state(), self.optimizer, self.lr_scheduler, self.generator,
                rng_states, data_states, self.ctx.world_size, self.run_id,
                extra={"launch": self.launch_id, "wandb_run_id": getattr(self.logger, "run_id", None),
                       "dependencies": self.dependencies, "fingerprint": digest(self.dependencies)},
            )
            where = self.store.url(checkpoint_name(self.step))
            with writing(where, f"the checkpoint of step {self.step}"):
                ref = self.store.write(self.step, files, state)
                self._checkpoint_step = self.step
                self._write_run_state()  # a restart now knows the run has a checkpoint to continue
                self.store.prune(self.run_id, self.cfg.checkpoint.keep_last)
            log.info("saved %s", ref.url)
            return ref.url

        return on_main_process(write, self.ctx)

    def _validate(self) -> None:
        """Rank 0 erases the held-out samples and writes the grid; every process waits for its outcome."""
        on_main_process(self._validate_main, self.ctx)

    def _validate_main(self) -> None:
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
        path = self.out_dir / "validation" / f"step-{self.step:08d}.png"
        with writing(path, "a validation grid"):
            atomic_write_bytes(path, encode_image(grid, "png"))
        self.logger.log_image("validation/grid", grid, "rows: input, mask, result, target", step=self.step)

    def _export(self) -> None:
        from magiceraser.training.export import export_trained

        startup.check_locks(self.locks)
        with writing(self.out_dir, "the export (v* and LoRA)"):
            export_trained(
                self.out_dir, self.model.unet, self.model.placeholder.vector, self.cfg.model.token, self.cfg.model.base_model,
                extra={"steps": self.step, "world_size": self.ctx.world_size,
                       "training_config": {k: v for k, v in config_to_dict(public_train_config(self.cfg)).items() if k not in resume_checks.LAUNCH_KEYS}},
            )
        log.info("exported v* and LoRA to %s", self.out_dir)

    def _finish(self) -> TrainResult:
        if self.cfg.validation.urls:
            self._validate()
        on_main_process(self._export, self.ctx)
        if self.ctx.is_main:
            self.logger.finish()  # best effort: the export is written, a W&B hiccup is only logged
        barrier(self.ctx)
        total = all_reduce_scalars(self.learned_count, self.ctx, op="sum")
        return TrainResult(
            model=self.model, steps=self.step, history=self.history, out_dir=self.out_dir, rank=self.ctx.rank,
            world_size=self.ctx.world_size, learned_share=total[0] / max(1.0, total[1]),
        )


def run_training(cfg: TrainConfig, ctx: DistContext | None = None, components: dict[str, Any] | None = None,
                 launch_id: str | None = None, hold_locks: bool = True) -> TrainResult:
    """Train with ``cfg`` in this process (one rank of a group when launched by accelerate/torchrun/Ray)."""
    return Trainer(cfg, ctx, components, launch_id=launch_id, hold_locks=hold_locks).train()
