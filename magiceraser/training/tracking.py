"""Rank-0 reporting: W&B scalars, run config, validation image grids (and a console line).

Grids are tiled by ``magiceraser.imaging.image_grid``, the layout the evaluation and the preview use.

Only the main process constructs a :class:`RunLogger`; the others get :class:`NullLogger`, so the
training loop calls ``logger.log(...)`` unconditionally. ``mode=offline`` writes the run under
``{out_dir}/wandb`` without any network access; ``disabled`` turns W&B off.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from magiceraser.imaging import image_grid  # noqa: F401  (validation.py imports it from here)
from magiceraser.training.config import WandbConfig

log = logging.getLogger(__name__)


class NullLogger:
    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_image(self, name: str, image: np.ndarray, caption: str, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class RunLogger(NullLogger):
    """W&B run of the main process."""

    def __init__(self, cfg: WandbConfig, out_dir: str | Path, run_config: dict[str, Any], resume_id: str | None = None):
        self.run = None
        if cfg.mode == "disabled":
            return
        import wandb

        wandb_dir = Path(out_dir) / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.run_name,
            mode=cfg.mode,
            tags=list(cfg.tags),
            config=run_config,
            dir=str(wandb_dir.parent),
            id=resume_id,
            resume="allow" if resume_id else None,
            settings=wandb.Settings(silent=True, console="off"),
        )

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_image(self, name: str, image: np.ndarray, caption: str, step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Image(image, caption=caption)}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
