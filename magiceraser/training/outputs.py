"""What rank 0 writes into ``out_dir`` besides checkpoints: the run's config before the first step,
the export (v* and LoRA) after the last, and, with ``--overwrite``, the removal of the run it replaces.

The export's ``magiceraser.json`` records the run's ``lineage`` (:func:`data_lineage`,
:mod:`magiceraser.lineage`): the OLRD job fingerprints of the shards, their dataset artifacts and
every shard's URI and sha256, so the data a model was trained on is known without W&B.

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
from magiceraser.lineage import LINEAGE_KEY, DatasetLineage, dataset_lineage
from magiceraser.training import resume as resume_checks
from magiceraser.training import startup
from magiceraser.training.checkpoint_store import CheckpointStore
from magiceraser.training.config import TrainConfig, public_train_config
from magiceraser.training.export import export_trained, sweep_incomplete_export
from magiceraser.training.model import PromptTuner
from magiceraser.training.model_card import write_model_card
from magiceraser.training.validation import latest_validation_grid
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


def data_lineage(cfg: TrainConfig, urls: list[str]) -> DatasetLineage:
    """The shards the run reads (``urls``, ``data.urls`` expanded) and the OLRD jobs that built them.

    A shard's sha256 comes from its sidecar; shards without one are read once to hash them. A run
    on a latent cache names the cache only (its shards are not OLRD shards).
    """
    if cfg.data.latent_cache:
        return DatasetLineage(latent_cache=cfg.data.latent_cache)
    return dataset_lineage(urls)


def export_run(cfg: TrainConfig, out_dir: Path, model: PromptTuner, step: int, world_size: int, locks: list[Any],
               lineage: DatasetLineage | None = None) -> None:
    """Write v* and the LoRA weights for stock diffusers, with the run's steps, world size, settings and data lineage."""
    startup.check_locks(locks)
    extra = {"steps": step, "world_size": world_size,
             "training_config": {k: v for k, v in config_to_dict(public_train_config(cfg)).items() if k not in resume_checks.LAUNCH_KEYS}}
    if lineage is not None:
        extra[LINEAGE_KEY] = lineage.record()
    with writing(out_dir, "the export (v* and LoRA)"):
        export_trained(out_dir, model.unet, model.placeholder.vector, cfg.model.token, cfg.model.base_model, extra=extra)
    # The model card reads the export's magiceraser.json, so it comes after it (and before W&B logs the model).
    write_model_card(out_dir, validation_grid=latest_validation_grid(out_dir, step))
    log.info("exported v* and LoRA to %s, with its model card (README.md)", out_dir)
