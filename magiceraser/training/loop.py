"""The training loop: phase 1 (v* only) then phase 2 (v* + LoRA), one process of possibly many.

The :class:`Trainer` sets a run up and drives it; each part of the work has its own module:
what the run starts from (locks, restart or command, the checkpoint it continues, the shards) is
:mod:`startup`, each phase's data stream :mod:`phase_data`, the optimizer and its step
:mod:`step`, the reported metrics :mod:`reporting`, the trainer's state in checkpoints
:mod:`trainer_checkpoint`, validation :mod:`validation`, and rank 0's config and export
:mod:`outputs`.

Written for one device; distribution enters only through :mod:`distributed` (process context,
one all-reduce of the trainable gradients per optimizer step, gathering states for checkpoints).
Rank-0-only work (W&B, console, validation, checkpoint and export writes) runs through
``on_main_process``, so a refused write stops every process with the same error.

A preemption signal (:mod:`preemption`) is read once per optimizer step and summed in that
step's gradient all-reduce, so all processes stop after the same step, save one checkpoint
together and raise :class:`~magiceraser.training.preemption.Preempted`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from magiceraser.config import config_to_dict
from magiceraser.lineage import DatasetLineage
from magiceraser.models.stable_diffusion import load_base_components
from magiceraser.training import launch as launches
from magiceraser.training import resume as resume_checks
from magiceraser.training import startup
from magiceraser.training.checkpoint_store import CheckpointRef, checkpoint_name
from magiceraser.training.config import TrainConfig
from magiceraser.training.data import make_loader, stop_loader
from magiceraser.training.distributed import (
    DistContext,
    StepFlags,
    all_reduce_mean_,
    all_reduce_scalars,
    barrier,
    broadcast_object,
    init_distributed,
    on_main_process,
)
from magiceraser.training.model import DTYPES, PromptTuner
from magiceraser.training.outputs import data_lineage, export_run, record_config, remove_replaced_run
from magiceraser.training.phase_data import phase_data_state, phase_stream_spec
from magiceraser.training.preemption import (
    Preempted,
    PreemptionWatcher,
    signals_ignored,
    watched_signals,
)
from magiceraser.training.reporting import Window, gather_metrics, record_metrics, report_due
from magiceraser.training.sampling import stable_seed
from magiceraser.training.step import (
    StepShape,
    apply_gradients,
    backward_micro_batch,
    build_optimizer,
    step_shape,
    trainable_params,
)
from magiceraser.training.tracking import NullLogger, RunLogger
from magiceraser.training.trainer_checkpoint import (
    encode_trainer_state,
    gather_process_states,
    read_on_every_process,
    restore_process_state,
    restore_shared_state,
    saved_world_size,
)
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
        self.urls = startup.training_shards(cfg)

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

        self.optimizer, self.lr_scheduler, self.scaler = build_optimizer(self.model, cfg.optim, cfg.phases.total_steps)
        # One generator for noise, timesteps and VAE samples, seeded alike on every process.
        self.generator = torch.Generator(device=self.ctx.device).manual_seed(cfg.seed)
        self.step = 0
        self.data_state: dict[str, Any] = {"phase": 0, "positions": {}, "batches": 0, "reseed": 0}
        self.logger: NullLogger = NullLogger()
        self.lineage: DatasetLineage | None = None  # rank 0: the shards and OLRD jobs read, for W&B and the export
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
        verified, self._verified = self._verified, None
        state = read_on_every_process(self.store, ref, verified, self.ctx)
        self.step = restore_shared_state(state, self.model, self.optimizer, self.lr_scheduler, self.generator)
        data = restore_process_state(state, self.ctx)
        if data is None:
            # Streams are defined per (rank, worker): with another world size they cannot be continued,
            # so new streams start with a fresh seed (no sample order is replayed).
            log.warning("checkpoint was written by %d processes, now %d: data streams restart reseeded",
                        saved_world_size(state), self.ctx.world_size)
            data = {"phase": 0, "positions": {}, "batches": 0, "reseed": self.step}
        self.data_state = data
        if self.ctx.is_main:
            log.info("resumed from %s at step %d", ref.url, self.step)

    def _loader(self, phase: int):
        self.data_state = phase_data_state(self.data_state, phase)
        spec = phase_stream_spec(self.cfg, phase, self.urls, self.model, self.ctx, self.data_state)
        return iter(make_loader(spec, self.cfg.data.num_workers, ignore_signals=watched_signals(self.cfg.preemption.signals)))

    # -- the loop -------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        """Train to ``phases.total_steps`` and export; :class:`Preempted` after a preemption's checkpoint."""
        try:
            with self.preemption:
                return self._train()
        except Preempted:
            with signals_ignored(self.preemption.signals):
                self.logger.finish(preempted=True)
            raise
        finally:  # once a stop is under way, no further signal may cut the cleanup short
            with signals_ignored(self.preemption.signals) if self.preemption.requested else contextlib.nullcontext():
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
            remove_replaced_run(self.out_dir, self.store, self.plan.replaced)
        public = record_config(cfg, self.out_dir)
        self.lineage = data_lineage(cfg, self.urls)
        self.logger = RunLogger(cfg.wandb, self.out_dir, config_to_dict(public), resume_id=self.plan.wandb_run_id,
                                logged_step=self.plan.logged_step, on_logged=self._note_logged_step, lineage=self.lineage)
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
        total, ti_steps = cfg.phases.total_steps, cfg.phases.textual_inversion_steps
        shape = step_shape(cfg, self.model, ctx.world_size)
        self.model.unet.train()

        phase, batches = None, None
        window = Window(ctx.device)
        while self.step < total:
            want = 1 if self.step < ti_steps else 2
            if want != phase:
                phase = want
                self.model.set_phase(phase)
                self._stop_loader()
                batches = self._batches = self._loader(phase)
                if ctx.is_main:
                    log.info("phase %d from step %d (%s)", phase, self.step, "v* only" if phase == 1 else "v* + LoRA")
            stop, grad_norm = self._optimizer_step(batches, shape, window)

            if report_due(self.step, cfg):
                self._report(window, grad_norm, phase, shape.accum * shape.global_bs)
                window = Window(ctx.device)
            saved = None
            if cfg.checkpoint.every and (self.step % cfg.checkpoint.every == 0 or self.step == total):
                saved = self._save_checkpoint()
            if stop and self.step < total:
                saved = saved or self._save_checkpoint()
                stopped = Preempted(self.step, self.preemption.received or "another process", saved)
                if ctx.is_main:
                    log.warning("%s (%s): stopped after step %d with checkpoint %s",
                                "interrupt" if stopped.interrupted else "preemption signal", stopped.signal_name, self.step, saved)
                raise stopped
            if cfg.validation.urls and cfg.validation.every and self.step % cfg.validation.every == 0 and self.step < total:
                self._validate()
        return self._finish()

    def _optimizer_step(self, batches: Any, shape: StepShape, window: Window) -> tuple[bool, torch.Tensor]:
        """One optimizer step over ``shape.accum`` batches: whether any process was asked to stop, and the gradient norm."""
        params = trainable_params(self.optimizer)
        t0 = time.perf_counter()
        data_time = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(shape.accum):
            td = time.perf_counter()
            batch = next(batches)
            data_time += time.perf_counter() - td
            self._count_batch(batch, window)
            window.loss_sum += backward_micro_batch(self.model, batch, self.generator, shape, self.ctx, self._autocast, self.scaler)
        # The preemption flag rides in the gradient all-reduce: every process learns of a signal
        # any of them received, in the same step (on a GPU: one step later, all alike).
        flags = self.step_flags.push(all_reduce_mean_(params, self.ctx, flags=[float(self.preemption.requested)]))
        stop = bool(flags and flags[0] > 0)
        grad_norm = apply_gradients(self.optimizer, self.lr_scheduler, self.scaler, params, shape.max_norm)
        self.step += 1
        window.add_step(time.perf_counter() - t0, data_time)
        return stop, grad_norm

    def _count_batch(self, batch: dict[str, Any], window: Window) -> None:
        """Advance the data state to ``batch`` (its worker's position) and count its prompts."""
        self.data_state["positions"][batch["worker"]] = batch["position"]
        self.data_state["batches"] += 1
        n_learned = int(batch["learned"].sum())
        window.add_batch(n_learned, len(batch["keys"]))
        self.learned_count[0] += n_learned
        self.learned_count[1] += len(batch["keys"])

    # -- rank-0 work and the collectives that feed it ------------------------------------------

    def _report(self, window: Window, grad_norm: torch.Tensor, phase: int, samples_per_step: int) -> None:
        metrics = gather_metrics(window, grad_norm, phase, samples_per_step, self.learned_count, self.lr_scheduler,
                                 self.model, self.ctx)
        if self.ctx.is_main:
            record_metrics(metrics, self.step, self.cfg, self.history, self.logger)

    def _save_checkpoint(self) -> str:
        """Every process's states to rank 0, which writes the checkpoint; returns where it is (on every process).

        A refused write (full disk, quota) or a lost lock is one user error on every process,
        and the previous checkpoint stays intact.
        """
        rng_states, data_states = gather_process_states(self.data_state, self.ctx)

        def write() -> str:
            startup.check_locks(self.locks)  # never write over the folder of a launch that took our lock over
            files, state = encode_trainer_state(
                self.step, self.model, self.optimizer, self.lr_scheduler, self.generator, rng_states, data_states,
                self.ctx.world_size, self.run_id, self.launch_id, getattr(self.logger, "run_id", None), self.dependencies,
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
        from magiceraser.training.validation import held_out_samples, write_validation_grid

        if self._validation_samples is None:
            self._validation_samples = held_out_samples(self.cfg)
        if not self._validation_samples:
            log.warning("validation.urls %s gave no usable sample; skipping validation", self.cfg.validation.urls)
            return
        write_validation_grid(self.model, self.base_scheduler_config, self._validation_samples, self.cfg, self.ctx.device,
                              self.out_dir, self.step, self.logger)

    def _finish(self) -> TrainResult:
        if self.cfg.validation.urls:
            self._validate()
        on_main_process(lambda: export_run(self.cfg, self.out_dir, self.model, self.step, self.ctx.world_size, self.locks, self.lineage), self.ctx)
        if self.ctx.is_main:
            self.logger.log_model(self.out_dir)  # best effort, as finish: the export is written
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
