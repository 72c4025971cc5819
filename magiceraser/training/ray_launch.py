"""Run the training loop on a Ray cluster with Ray Train's ``TorchTrainer``.

Each of ``ray.num_workers`` workers runs the training loop with the process group Ray Train
created (NCCL with GPUs, gloo without); Accelerate's ``PartialState`` joins that group from the
RANK/WORLD_SIZE/LOCAL_RANK variables Ray sets.

What the driver (this process) does before any worker starts, so a mistake is one line:

* **paths**: Ray Train starts its workers in another working directory, so every relative local
  path of the config (``out_dir``, ``data.urls``, ``data.latent_cache``, ``model.base_model``
  when it names a local folder, ``validation.urls``, ``checkpoint.dir``, ``ray.storage_path``)
  is made absolute where the user stands (:func:`absolute_paths`); URLs stay as they are;
* **locks and refusals**: it takes the locks of ``out_dir`` and the checkpoint folder for the
  whole run, under a launch id of its own (``launch.py``), and makes the start checks there.

**A lost node** (or worker) does not end the run: ``FailureConfig(max_failures=ray.max_failures)``
restarts the worker group, and the restarted workers, being the same launch, continue from the
newest intact checkpoint of this run. Checkpoints must be where every node reads them: a shared
``out_dir``, or ``checkpoint.dir=s3://...``.

**A preemption signal to the driver** (``ray job stop``, a Kubernetes pod's SIGTERM) is passed to
the workers through a small actor they poll once a second; they stop after the same step, save
a checkpoint together and return, and the driver exits with status 75 (restart me).

Submit multi-node fine-tuning with ``ray job submit`` (see ``cluster/train-rayjob.yaml``):

    ray job submit --working-dir . -- magiceraser train --config configs/train/sd15_inpaint.yaml \\
        --ray --resume ray.num_workers=16 ray.use_gpu=true out_dir=/mnt/shared/runs/sd15
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from magiceraser.config import build_config, config_to_dict
from magiceraser.errors import UserError
from magiceraser.storage import is_object_store
from magiceraser.training.config import TrainConfig
from magiceraser.training.preemption import Preempted, PreemptionWatcher, watched_signals

log = logging.getLogger(__name__)

POLL_S = 1.0


# -- paths ------------------------------------------------------------------------------------------


def _absolute(path: str, cwd: Path) -> str:
    """``path`` made absolute against ``cwd`` unless it is a URL (``file://`` paths included) or empty."""
    if not path or "://" in path:
        return path
    expanded = os.path.expanduser(path)
    return expanded if os.path.isabs(expanded) else str(cwd / expanded)


def _absolute_model(name: str, cwd: Path) -> str:
    """A local model folder made absolute; a Hugging Face id (``org/name``, no such folder here) as it is."""
    if name and not is_object_store(name) and (cwd / os.path.expanduser(name)).exists():
        return _absolute(name, cwd)
    return name


def absolute_paths(cfg: TrainConfig, cwd: str | Path | None = None) -> TrainConfig:
    """``cfg`` with every relative local path resolved against ``cwd`` (default: the working directory)."""
    here = Path(cwd or os.getcwd()).absolute()
    r = dataclasses.replace
    return r(
        cfg,
        out_dir=_absolute(cfg.out_dir, here),
        data=r(cfg.data, urls=[_absolute(u, here) for u in cfg.data.urls], latent_cache=_absolute(cfg.data.latent_cache, here)),
        model=r(cfg.model, base_model=_absolute_model(cfg.model.base_model, here)),
        validation=r(cfg.validation, urls=[_absolute(u, here) for u in cfg.validation.urls]),
        checkpoint=r(cfg.checkpoint, dir=_absolute(cfg.checkpoint.dir, here)),
        ray=r(cfg.ray, storage_path=_absolute(cfg.ray.storage_path, here) if cfg.ray.storage_path else cfg.ray.storage_path),
    )


# -- the workers ----------------------------------------------------------------------------------


def _poll_stop(coordinator: Any, watcher: PreemptionWatcher, done: threading.Event) -> None:
    """In a worker: turn the driver's stop request into this process's preemption flag."""
    import ray

    while not done.wait(POLL_S):
        try:
            reason = ray.get(coordinator.reason.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - the driver is going away: its workers follow
            return
        if reason:
            watcher.request(reason)
            return


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Body of every Ray Train worker: train, then rank 0 tells the driver how it ended."""
    import ray

    from magiceraser.quiet import silence_known_warnings

    silence_known_warnings()  # a worker is a process of its own: the command line's filters are not here

    from magiceraser.training.distributed import init_distributed
    from magiceraser.training.logs import setup_logging
    from magiceraser.training.loop import Trainer

    cfg = build_config(TrainConfig, loop_config["config"])
    ctx = init_distributed(cfg.device)
    setup_logging(ctx.rank)
    done = threading.Event()
    try:
        trainer = Trainer(cfg, ctx, launch_id=loop_config["launch_id"], hold_locks=False)
        threading.Thread(target=_poll_stop, args=(loop_config["coordinator"], trainer.preemption, done),
                         name="stop-request-poll", daemon=True).start()
        result = trainer.train()
        last = result.history[-1] if result.history else {}
        report = {"outcome": "finished", "steps": result.steps, "world_size": result.world_size, "rank": result.rank,
                  "loss": last.get("train/loss", float("nan"))}
    except Preempted as exc:
        report = {"outcome": "preempted", "steps": exc.step, "signal": exc.signal_name, "checkpoint": exc.checkpoint}
    except UserError as exc:  # the start checks and writes are collective: every worker gets the same one
        report = {"outcome": "user_error", "message": str(exc)}
    finally:
        done.set()
    if ctx.is_main:  # the start checks and writes are collective: rank 0's outcome is every worker's
        try:
            ray.get(loop_config["coordinator"].set_outcome.remote(report), timeout=60)
        except Exception as exc:  # noqa: BLE001 - the driver is gone: nobody is left to tell
            log.warning("could not report the outcome to the driver (%s)", exc)


# -- the driver -------------------------------------------------------------------------------------


def _coordinator_actor():
    import ray

    @ray.remote(num_cpus=0)
    class Coordinator:
        """Between the driver and its workers: the driver's "save and leave" request, rank 0's outcome."""

        def __init__(self) -> None:
            self._reason: str | None = None
            self._outcome: dict[str, Any] = {}

        def request(self, reason: str) -> None:
            self._reason = self._reason or reason

        def reason(self) -> str | None:
            return self._reason

        def set_outcome(self, outcome: dict[str, Any]) -> None:
            self._outcome = outcome

        def outcome(self) -> dict[str, Any]:
            return self._outcome

    # On the driver's own node: it lives exactly as long as the driver can read it (a worker node may be lost).
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return Coordinator.options(scheduling_strategy=here).remote()


def _forward_signals(watcher: PreemptionWatcher, coordinator: Any, done: threading.Event) -> None:
    """In the driver: pass a preemption signal it received on to the workers (signal handlers do no Ray calls)."""
    while not done.wait(0.2):
        if watcher.requested:
            log.warning("%s received: asking the workers to save a checkpoint and stop", watcher.received)
            coordinator.request.remote(f"{watcher.received} to the Ray driver")
            return


@dataclasses.dataclass
class RayTrainOutcome:
    """Ray Train's ``Result`` and what rank 0 reported at the end (``outcome``, ``steps``, ``world_size``, ``loss``)."""

    result: Any
    report: dict[str, Any]


def run_on_ray(cfg: TrainConfig, launch_id: str | None = None) -> RayTrainOutcome:
    """Start a TorchTrainer with ``cfg.ray.num_workers`` workers and wait for it.

    Raises :class:`UserError` for a refusal (before any worker starts, or reported by them) and
    :class:`Preempted` when a preemption signal made the run save and stop.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from magiceraser.training import startup
    from magiceraser.training.launch import LAUNCH_ENV
    from magiceraser.training.launch import launch_id as current_launch_id
    from magiceraser.training.startup import preflight

    cfg = absolute_paths(cfg)
    r = cfg.ray
    if launch_id is None:  # MAGICERASER_LAUNCH_ID names a launch across resubmissions; else this driver is one
        launch_id = current_launch_id() if os.environ.get(LAUNCH_ENV) else f"ray:{uuid.uuid4().hex}"
    launch = launch_id
    store = startup.checkpoint_store(cfg)
    locks = startup.take_locks(cfg, store, launch)
    watcher = PreemptionWatcher(watched_signals(cfg.preemption.signals))
    done = threading.Event()
    try:
        preflight(cfg, launch, r.num_workers, "cuda" if r.use_gpu else "cpu")
        if not ray.is_initialized():
            ray.init(address=r.address, log_to_driver=True, ignore_reinit_error=True)
        coordinator = _coordinator_actor()
        watcher.install()
        threading.Thread(target=_forward_signals, args=(watcher, coordinator, done), name="stop-forward", daemon=True).start()
        worker_cfg = dataclasses.replace(cfg, ray=dataclasses.replace(r, enabled=False), device="cuda" if r.use_gpu else "cpu")
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"config": config_to_dict(worker_cfg), "launch_id": launch, "coordinator": coordinator},
            scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker={"CPU": r.cpus_per_worker}),
            torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
            run_config=RunConfig(name=f"magiceraser-train-{launch.rsplit(':', 1)[-1][:12]}", storage_path=r.storage_path,
                                 failure_config=FailureConfig(max_failures=r.max_failures)),
        )
        result = trainer.fit()
        outcome = ray.get(coordinator.outcome.remote())
    finally:
        done.set()
        watcher.close()
        startup.release_locks(locks)
    if outcome.get("outcome") == "user_error":
        raise UserError(outcome["message"])
    if outcome.get("outcome") == "preempted":
        # Name the signal as the person who sent it knows it (the workers only saw the request).
        signal_name = f"{watcher.received} to the Ray driver" if watcher.received else str(outcome["signal"])
        raise Preempted(int(outcome["steps"]), signal_name, str(outcome["checkpoint"]))
    return RayTrainOutcome(result, outcome)
