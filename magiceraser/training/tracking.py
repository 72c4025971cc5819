"""Rank-0 reporting: W&B scalars, run config, validation image grids (and a console line).

Grids are tiled by ``magiceraser.imaging.image_grid``, the layout the evaluation and the preview use.

Only the main process constructs a :class:`RunLogger`; the others get :class:`NullLogger`, so the
training loop calls ``logger.log(...)`` unconditionally. ``mode=offline`` writes the run under
``{out_dir}/wandb`` without any network access; ``disabled`` turns W&B off.

A resumed or restarted run continues its W&B run (same id) and logs no step twice: steps up to
``logged_step`` (recorded in ``run_state.json`` just before each log) were logged by the attempt
before, and a resumed run recomputes them bit for bit, so they are skipped.

Lineage (:mod:`magiceraser.lineage`): the run uses the dataset artifact of every OLRD job whose
shards it reads (:meth:`RunLogger.use_datasets`, built again from the shards: the digest the data
job logged), its config holds the jobs' fingerprints and every shard no ``job.json`` vouches for,
and at the end it logs the export as the model artifact (:meth:`RunLogger.log_model`). A W&B
failure in either is a warning: training and the export do not depend on W&B.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from magiceraser.imaging import image_grid  # noqa: F401  (validation.py imports it from here)
from magiceraser.lineage import DatasetLineage, model_artifact
from magiceraser.training.config import WandbConfig
from magiceraser.training.preemption import PREEMPTED_EXIT_CODE
from magiceraser.wandb_runs import use_artifact

log = logging.getLogger(__name__)


class NullLogger:
    run_id: str | None = None
    logged_step = 0

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_image(self, name: str, image: np.ndarray, caption: str, step: int) -> None:
        pass

    def use_datasets(self, lineage: DatasetLineage) -> None:
        pass

    def log_model(self, export_dir: str | Path) -> None:
        pass

    def finish(self, preempted: bool = False) -> None:
        pass


class RunLogger(NullLogger):
    """W&B run of the main process."""

    def __init__(self, cfg: WandbConfig, out_dir: str | Path, run_config: dict[str, Any], resume_id: str | None = None,
                 logged_step: int = 0, on_logged: Callable[[], None] | None = None, lineage: DatasetLineage | None = None):
        """``lineage``: the shards the run reads; recorded in the run config and its datasets used (:meth:`use_datasets`)."""
        self.run = None
        if lineage is not None:
            run_config = {**run_config, "lineage": lineage.run_config()}
        self.logged_step = logged_step
        self.skip_through = logged_step  # logged by an earlier attempt of this run
        self.on_logged = on_logged
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
            job_type="train",
            tags=list(cfg.tags),
            config=run_config,
            dir=str(wandb_dir.parent),
            id=resume_id,
            resume="allow" if resume_id else None,
            settings=wandb.Settings(silent=True, console="off"),
        )
        if lineage is not None:
            self.use_datasets(lineage)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def _logging(self, step: int) -> None:
        """Record ``step`` as logged *before* it is: a process killed in between loses that step
        from W&B rather than logging it twice after the restart."""
        if step > self.logged_step:
            self.logged_step = step
            if self.on_logged is not None:
                self.on_logged()

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None and step > self.skip_through:
            self._logging(step)
            self.run.log(metrics, step=step)

    def log_image(self, name: str, image: np.ndarray, caption: str, step: int) -> None:
        if self.run is not None and step > self.skip_through:
            import wandb

            self._logging(step)
            self.run.log({name: wandb.Image(image, caption=caption)}, step=step)

    def use_datasets(self, lineage: DatasetLineage) -> None:
        """Declare the dataset artifact of every OLRD job the run reads an input of the run."""
        if self.run is None:
            return
        for version in lineage.datasets:
            try:
                use_artifact(self.run, version.artifact())
            except Exception as exc:  # W&B is a record of the run, not a part of it
                log.warning("W&B: could not record the use of dataset %s (%s: %s)", version.artifact_name,
                            type(exc).__name__, exc)

    def log_model(self, export_dir: str | Path) -> None:
        """Log the export in ``export_dir`` as the run's model artifact."""
        if self.run is None:
            return
        try:
            self.run.log_artifact(model_artifact(export_dir))
        except Exception as exc:  # the export is written; W&B only records it
            log.warning("W&B: could not log the export in %s as a model artifact (%s: %s)", export_dir,
                        type(exc).__name__, exc)

    def finish(self, preempted: bool = False) -> None:
        """Close the W&B run; ``preempted`` marks it so (W&B shows it as preempted, to be resumed)."""
        if self.run is not None:
            if preempted:
                self.run.mark_preempting()
            self.run.finish(exit_code=PREEMPTED_EXIT_CODE if preempted else None)
            self.run = None
