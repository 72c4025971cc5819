"""What a training run starts from: its folders' locks, the refusals, the checkpoint it continues
and the shards it reads.

Decided once, by rank 0 (or by a ``--ray`` driver before any worker starts: :func:`preflight`),
before any model is loaded, so every mistake is one line within a second:

1. **Locks**: ``out_dir/job.lock``, and the checkpoint folder's when it lies elsewhere
   (``checkpoint.dir``, also on an object store). A second launch on the same folders is refused,
   naming the owner; a restarted process of the same launch takes the lock over (``launch.py``).
2. **Restart or command**: if ``run_state.json`` records this launch, the process is a restart:
   it continues that run from the newest intact checkpoint *of that run* (none yet: from step
   0 again), whatever its command line says about ``--resume`` or ``--overwrite``. Otherwise the
   command decides: a fresh run refuses folders that hold another run; ``--resume`` continues the
   newest intact checkpoint (a fresh start if there is none); ``--overwrite`` replaces the run.
3. **Intact**: the candidate checkpoints are verified newest first (every file's size and
   sha256, every header readable). A damaged one is set aside (renamed, never deleted) with one
   line naming the file and why, and the next one is tried. When none is intact the run stops
   with one line naming what was found: never a traceback, never a silent fresh start.
4. **Same settings**: the chosen checkpoint's recorded dependencies are compared with this run's
   (``resume.py``); a difference is refused, naming the keys.
5. **Data**: the shards it reads (``data.urls`` expanded, or the latent cache's list) must exist.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magiceraser.errors import UserError
from magiceraser.lock import OutputLock
from magiceraser.olrd_samples import expand_urls
from magiceraser.training import checkpoint as ckpt
from magiceraser.training import launch as launches
from magiceraser.training import resume as resume_checks
from magiceraser.training.checkpoint_store import CheckpointRef, CheckpointStore, DamagedCheckpoint
from magiceraser.training.config import TrainConfig
from magiceraser.write_errors import writing

log = logging.getLogger(__name__)


@dataclass
class StartPlan:
    """Rank 0's decision, sent to every process."""

    mode: str  # "fresh", "resume" or "restart"
    run_id: str
    attempt: int = 0
    checkpoint: str | None = None  # the name of the checkpoint to continue
    step: int = 0
    wandb_run_id: str | None = None
    logged_step: int = 0  # the last step already logged to that W&B run
    replaced: list[str] = field(default_factory=list)  # what --overwrite will delete
    dependencies: dict[str, Any] | None = None  # the chosen checkpoint's record
    loaded: dict[str, Any] | None = None  # the chosen checkpoint, decoded while verified (kept where it was read)


def checkpoint_store(cfg: TrainConfig) -> CheckpointStore:
    """The checkpoint folder of ``cfg``: ``checkpoint.dir``, else ``{out_dir}/checkpoints``."""
    return CheckpointStore(cfg.checkpoint.dir or str(Path(cfg.out_dir) / "checkpoints"), cfg.checkpoint.storage_options)


def _separate(cfg: TrainConfig, store: CheckpointStore) -> bool:
    """Whether the checkpoint folder lies outside ``out_dir`` (and so needs a lock of its own)."""
    if store.remote:
        return True
    out = Path(cfg.out_dir).absolute()
    return out not in store.folder.path.absolute().parents and store.folder.path.absolute() != out


def take_locks(cfg: TrainConfig, store: CheckpointStore, launch_id: str) -> list[OutputLock]:
    """Lock ``out_dir`` and a separate checkpoint folder for this launch; :class:`UserError` if held."""
    out = Path(cfg.out_dir)
    resume_checks.check_out_dir_is_a_folder(out)
    with writing(out, "the run's lock file"):
        out.mkdir(parents=True, exist_ok=True)
    folders: list[Any] = [out]
    if _separate(cfg, store):
        try:
            store.folder.ensure()
        except FileNotFoundError as exc:
            raise UserError(f"checkpoint.dir={store}: {exc}; create it or choose another location") from None
        folders.append(store.folder)
    locks: list[OutputLock] = []
    try:
        for folder in folders:
            lock = OutputLock(folder, stale_after_s=cfg.lock_stale_s, job=launch_id,
                              log=lambda message: log.warning("%s", message))
            with writing(lock.path, "the run's lock file"):
                lock.acquire()
            locks.append(lock)
    except BaseException:
        release_locks(locks)
        raise
    return locks


def release_locks(locks: list[OutputLock]) -> None:
    for lock in reversed(locks):
        try:
            lock.release()
        except OSError as exc:  # the run's outcome matters more than a lock it could not remove
            log.warning("could not remove the lock %s (%s); it turns stale on its own", lock.path, exc)
    locks.clear()


def check_locks(locks: list[OutputLock]) -> None:
    """Raise ``LockLost`` (a one-line user error) if another launch took a lock over."""
    for lock in locks:
        lock.check()


def _set_aside(store: CheckpointStore, ref: CheckpointRef, exc: DamagedCheckpoint, damaged: list[str]) -> None:
    aside = store.set_aside(ref)
    damaged.append(f"{ref.name} ({exc.file}: {exc.reason})")
    log.warning("checkpoint %s is damaged (%s: %s): set aside as %s; trying the one before it", ref.url, exc.file, exc.reason, aside)


def choose_checkpoint(store: CheckpointStore, run_id: str | None = None) -> tuple[CheckpointRef, dict[str, Any]] | None:
    """The newest intact checkpoint (of ``run_id`` if given), decoded; damaged ones on the way are set aside.

    With ``run_id`` (a restart), checkpoints of other runs are neither chosen nor touched, and one
    whose marker cannot be read (so whose run is unknown) is passed over, not set aside.
    :class:`UserError` when checkpoints were damaged and none is intact, and (without ``run_id``)
    when only checkpoints set aside earlier remain: never a silent fresh start.
    """
    damaged: list[str] = []
    for ref in reversed(store.list()):
        try:
            state = store.read_state(ref)
        except DamagedCheckpoint as exc:
            if run_id is not None:
                log.warning("checkpoint %s cannot be told apart (%s: %s): passed over", ref.url, exc.file, exc.reason)
                continue
            _set_aside(store, ref, exc, damaged)
            continue
        if run_id is not None and state.get("run_id") != run_id:
            continue
        try:
            loaded = ckpt.load_checkpoint(store, ref)  # every size, digest and header
        except DamagedCheckpoint as exc:
            _set_aside(store, ref, exc, damaged)
            continue
        return ref, loaded
    earlier = store.set_aside_names() if run_id is None else []
    if damaged or earlier:
        found = "; ".join(damaged) if damaged else f"only checkpoints set aside as damaged ({', '.join(earlier)})"
        raise UserError(
            f"{store} holds no intact checkpoint to continue: {found}; "
            "pass --overwrite (or a new out_dir) to start afresh, or restore a checkpoint from a backup"
        )
    return None


def plan_start(cfg: TrainConfig, store: CheckpointStore, launch_id: str, world_size: int, device_type: str) -> StartPlan:
    """Rank 0's decision under the locks (see the module docstring); :class:`UserError` for refusals."""
    out = Path(cfg.out_dir)
    store.sweep()  # leftovers of saves killed earlier (the lock is ours)
    previous = launches.read_run_state(store.folder)
    if previous is not None and previous.get("launch") == launch_id and previous.get("run_id"):
        run_id = str(previous["run_id"])
        chosen = choose_checkpoint(store, run_id)
        saved = int(previous.get("checkpoint_step") or 0)
        if chosen is None and saved:
            raise UserError(f"run {run_id} saved a checkpoint at step {saved}, but {store} holds no intact checkpoint "
                            "of it; restore it, or pass --overwrite (or a new out_dir) to start afresh")
        plan = StartPlan(mode="restart", run_id=run_id, attempt=int(previous.get("attempt", 0)) + 1,
                         wandb_run_id=previous.get("wandb_run_id"))
        where = f"from {chosen[0].url}" if chosen else "from step 0 (it had saved no checkpoint)"
        log.warning("restart %d of this launch: continuing run %s %s", plan.attempt, run_id, where)
    else:
        replaced = resume_checks.check_out_dir(out, store, cfg.resume, cfg.overwrite)
        chosen = choose_checkpoint(store) if cfg.resume else None
        if cfg.resume and chosen is None:
            log.info("resume requested but %s holds no checkpoint: starting fresh", store)
        plan = StartPlan(mode="resume" if chosen else "fresh", run_id=uuid.uuid4().hex,
                         replaced=replaced if cfg.overwrite else [])
    if chosen is not None:
        ref, loaded = chosen
        state = loaded["state"]
        plan.checkpoint, plan.step, plan.loaded = ref.name, ref.step, loaded
        plan.run_id = str(state.get("run_id") or plan.run_id)
        plan.dependencies = state.get("dependencies")
        plan.wandb_run_id = state.get("wandb_run_id") or plan.wandb_run_id
        check_dependencies(cfg, plan, ref.url, world_size, device_type, model_digest=None)
    if previous is not None and plan.wandb_run_id and previous.get("wandb_run_id") == plan.wandb_run_id:
        plan.logged_step = int(previous.get("wandb_logged_step", 0))
    return plan


def check_dependencies(cfg: TrainConfig, plan: StartPlan, where: str, world_size: int, device_type: str,
                       model_digest: str | None) -> list[str]:
    """Compare the chosen checkpoint's dependencies with this run's; the accepted changes, for the log.

    Called before the base model loads (everything but its config digest) and after (everything).
    """
    current = resume_checks.training_dependencies(cfg, world_size, device_type, model_digest or "")
    ignore = () if model_digest else ("base_model_config",)
    return resume_checks.check_resume(plan.dependencies, current, where, cfg.resume_allow_changes, ignore=ignore)


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
    plan_start(cfg, checkpoint_store(cfg), launch_id, world_size, device_type)
    training_shards(cfg)
