"""A job's W&B run, as the data engine, the trainer's lineage and the evaluation open and link it.

``WandbSettings`` is the ``wandb:`` section of ``magiceraser olrd`` and ``magiceraser evaluate`` (the
trainer's has more keys); :func:`start_run` opens the run; :func:`use_artifact` declares an artifact
an input of a run, online and offline (:mod:`magiceraser.lineage` builds the artifacts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["WandbSettings", "start_run", "use_artifact"]


@dataclass
class WandbSettings:
    """A job's W&B run: the data engine's and the evaluation's ``wandb:`` section (the trainer's has more keys)."""

    enabled: bool = False
    """Log this job as a W&B run, linked to the data job, training run and evaluation by artifacts (README, Trainer, "Lineage")."""
    project: str = "magiceraser"
    """W&B project; the data job, the training run and the evaluation link in W&B only within one project."""
    entity: str | None = None
    """W&B entity (team/user); None = the default of the logged-in account."""
    mode: Literal["online", "offline", "disabled"] = "offline"
    """W&B mode; offline writes the run under the output folder with no network (upload later with `wandb sync`)."""
    run_name: str = ""
    """W&B run name (default: the output folder's name)."""

    @property
    def active(self) -> bool:
        """Whether the job logs a run (``enabled`` and a mode other than ``disabled``)."""
        return self.enabled and self.mode != "disabled"


def start_run(settings: WandbSettings, run_dir: str | Path, job_type: str, default_name: str, config: Mapping[str, Any]) -> Any:
    """``wandb.init`` for a job's run, written under ``run_dir/wandb``."""
    import wandb

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode, job_type=job_type,
                      name=settings.run_name or default_name, dir=str(run_dir), config=dict(config),
                      settings=wandb.Settings(silent=True, console="off"))


def use_artifact(run: Any, artifact: Any) -> None:
    """Declare ``artifact`` (built here from the files, not fetched) an input of ``run``.

    Online this is ``run.use_artifact``: W&B links the run to the version with the same name and
    digest, or creates it. Offline, where ``use_artifact`` refuses, the same artifact record
    ``use_artifact`` sends for a new artifact (``use_after_commit``) is written to the run's file;
    ``wandb sync`` replays it.
    """
    if run is None or getattr(run, "disabled", False):
        return
    if getattr(run, "offline", False):
        run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(artifact)
