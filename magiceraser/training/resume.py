"""What a training run's weights depend on, and the checks a run makes on its ``out_dir`` first.

Every checkpoint records :func:`training_dependencies` (the base model and a digest of its
component configs, the data, resolution, seeds, per-rank batch and world size, optimizer and
schedule, LoRA, placeholder, phases, precision, device type). ``--resume`` compares the newest
checkpoint's record with the current run's and refuses, naming the changed keys, unless every
change is one of :data:`RESUMABLE_KEYS` or the user allowed it (``--allow-change KEY``).

A run without ``--resume`` refuses an ``out_dir`` (or checkpoint folder) that already holds
checkpoints or an export (:func:`check_out_dir`), so one run never prunes, overwrites or
continues another's. A process restarted by its launcher is the same run (``launch.py``) and
keeps every one of these refusals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME
from magiceraser.config import config_to_dict
from magiceraser.errors import UserError
from magiceraser.fingerprint import changed, config_digest, describe_changes, digest, matches
from magiceraser.training.checkpoint_store import CheckpointStore
from magiceraser.training.config import public_train_config

#: Config keys that do not change what the weights become and may differ on ``--resume``.
#: ``phases.total_steps`` extends or shortens the run (a decaying schedule then follows the new total).
RESUMABLE_KEYS: tuple[str, ...] = (
    "phases.total_steps",
    "log_every",
    "num_threads",
    "wandb",
    "checkpoint",
    "validation",
)

#: Config keys that are not part of the weights' dependencies at all (where and how the run is launched).
LAUNCH_KEYS = ("out_dir", "resume", "overwrite", "resume_allow_changes", "ray", "device", "preemption", "lock_stale_s")


def base_model_digest(components: Mapping[str, Any]) -> str:
    """Digest of the base model's component configs (UNet, VAE, text encoder, scheduler, tokenizer).

    Computed from the loaded components, so it is the same for a Hub id and a local copy of it
    and needs no access to the files again. Private keys (``_name_or_path``, library versions)
    are left out: they say where a model came from, not what it is.
    """

    tokenizer = components["tokenizer"]
    return digest({
        "unet": config_digest(components["unet"].config),
        "vae": config_digest(components["vae"].config),
        "text_encoder": config_digest(components["text_encoder"].config.to_dict()),
        "scheduler": config_digest(components["noise_scheduler"].config),
        "tokenizer": {"vocab": len(tokenizer), "max_length": tokenizer.model_max_length},
    })


def training_dependencies(cfg: Any, world_size: int, device_type: str, model_digest: str) -> dict[str, Any]:
    """Everything the trained weights depend on, as nested JSON values (see the module docstring)."""
    settings = {k: v for k, v in config_to_dict(public_train_config(cfg)).items() if k not in LAUNCH_KEYS}
    return {
        **settings,
        "base_model_config": model_digest,
        "world_size": world_size,
        "global_batch": cfg.data.batch_size * world_size * cfg.optim.grad_accumulation,
        "device_type": device_type,
    }


def check_resume(
    saved: Mapping[str, Any] | None, current: Mapping[str, Any], checkpoint: str | Path, allowed: Iterable[str], ignore: Iterable[str] = ()
) -> list[str]:
    """Refuse to continue ``checkpoint`` (recorded ``saved``) as the run ``current`` if they differ.

    Returns the changed keys that were accepted (resumable or allowed), for the log. Keys under
    ``ignore`` are not compared (the first, cheap check before the base model is loaded leaves
    out its config digest).
    """
    if saved is None:
        raise UserError(
            f"{checkpoint} records no fingerprint of what it was trained with (written by an older version); "
            "start a new run in a new out_dir, or pass --overwrite to discard it"
        )
    diff = changed(saved, current, ignore=ignore)
    allowed = tuple(allowed)
    refused = {k: v for k, v in diff.items() if not matches(k, RESUMABLE_KEYS + allowed)}
    if refused:
        keys = ",".join(refused)
        raise UserError(
            f"cannot resume {checkpoint}: it was trained with other settings ({describe_changes(refused)}); "
            f"use the same settings, a new out_dir, or --allow-change {keys} to continue anyway"
        )
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()]


def previous_run_files(out_dir: Path, store: CheckpointStore) -> list[str]:
    """What in ``out_dir`` and the checkpoint folder belongs to a training run: checkpoints and export files."""
    found = []
    if store.list():
        found.append(f"checkpoints in {store}")
    found += [n for n in (META_NAME, LORA_WEIGHTS_NAME, EMBEDS_NAME) if (out_dir / n).exists()]
    return found


def check_out_dir_is_a_folder(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that names a file (one line, before anything loads)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir={out_dir} is a file, not a folder: choose a folder for the run's outputs")


def check_out_dir(out_dir: Path, store: CheckpointStore, resume: bool, overwrite: bool) -> list[str]:
    """Refuse a fresh run into an ``out_dir`` that holds another run; returns what would be replaced."""
    check_out_dir_is_a_folder(out_dir)
    found = previous_run_files(out_dir, store)
    if found and not resume and not overwrite:
        raise UserError(
            f"out_dir={out_dir} already holds a training run ({', '.join(found)}); "
            "pass --resume to continue it, choose a new out_dir, or pass --overwrite to replace it"
        )
    return found
