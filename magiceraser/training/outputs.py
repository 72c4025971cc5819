"""What rank 0 writes into ``out_dir`` besides checkpoints: the run's config before the first step,
the export (v* and LoRA) after the last, and, with ``--overwrite``, the removal of the run it replaces.

Each write is wrapped in :func:`~magiceraser.write_errors.writing`, so a refused write (full disk,
quota, permissions) is one user error naming what could not be written. The export goes through
:func:`~magiceraser.training.export.export_trained` only while this launch still holds its locks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME
from magiceraser.config import config_to_dict, save_config
from magiceraser.training import resume as resume_checks
from magiceraser.training import startup
from magiceraser.training.checkpoint_store import CheckpointStore
from magiceraser.training.config import TrainConfig, public_train_config
from magiceraser.training.export import export_trained, sweep_incomplete_export
from magiceraser.training.model import PromptTuner
from magiceraser.write_errors import writing

# The console lines of a training run name the training loop as their source, wherever the code that writes them lives.
log = logging.getLogger("magiceraser.training.loop")


def remove_replaced_run(out_dir: Path, store: CheckpointStore, replaced: list[str]) -> None:
    """``--overwrite``: delete the previous run's checkpoints and export (``replaced`` names what was found)."""
    log.warning("--overwrite: deleting the previous run in %s (%s)", out_dir, ", ".join(replaced))
    for ref in store.list():
        store.remove(ref)
    for name in (META_NAME, LORA_WEIGHTS_NAME, EMBEDS_NAME):
        (out_dir / name).unlink(missing_ok=True)


def record_config(cfg: TrainConfig, out_dir: Path) -> TrainConfig:
    """Sweep what a killed export left, write ``train_config.yaml``; returns the config as recorded (secrets masked)."""
    sweep_incomplete_export(out_dir)
    public = public_train_config(cfg)
    with writing(out_dir, "the run's config"):
        save_config(public, out_dir / "train_config.yaml")
    return public


def export_run(cfg: TrainConfig, out_dir: Path, model: PromptTuner, step: int, world_size: int, locks: list[Any]) -> None:
    """Write v* and the LoRA weights for stock diffusers, with the run's steps, world size and settings."""
    startup.check_locks(locks)
    with writing(out_dir, "the export (v* and LoRA)"):
        export_trained(
            out_dir, model.unet, model.placeholder.vector, cfg.model.token, cfg.model.base_model,
            extra={"steps": step, "world_size": world_size,
                   "training_config": {k: v for k, v in config_to_dict(public_train_config(cfg)).items() if k not in resume_checks.LAUNCH_KEYS}},
        )
    log.info("exported v* and LoRA to %s", out_dir)
