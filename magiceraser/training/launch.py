"""Which launch a training process belongs to, so a restarted process finds its run again by itself.

A *launch* is one command a person (or a scheduler) started: ``magiceraser train``, an
``accelerate launch``/torchrun of it, or a ``--ray`` driver. Launchers restart the processes of
a launch after a failure (torchrun ``--max_restarts``, Ray Train's ``FailureConfig``) with the
same arguments; the restarted processes must then continue *this* run from its newest intact
checkpoint, without a person adding ``--resume``, and without ever continuing another run.

:func:`launch_id` names the launch, the same in every attempt and different for every new
command:

* ``MAGICERASER_LAUNCH_ID`` when set (a Kubernetes Job's uid, a SLURM job id across requeues);
* a ``--ray`` driver's own id, passed to its workers (``ray_launch.py``);
* torchrun's rendezvous id (``--rdzv_id``, ``TORCHELASTIC_RUN_ID``) when one was given;
* otherwise, under an elastic agent (torchrun, ``accelerate launch``), the agent process itself:
  its host, pid and start time (the agent lives through every restart of its workers);
* otherwise a fresh random id (a plain process is never restarted by a launcher).

Rank 0 records the launch in ``run_state.json`` (:data:`RUN_STATE_NAME`) in the checkpoint folder,
which is what must outlive a node (``out_dir/checkpoints``, or ``checkpoint.dir`` on an object
store), together with the run it is training (``run_id``, the step of its newest checkpoint, the
W&B run and the last step logged to it, the attempt number). A process whose launch id equals the
recorded one is a restart: it continues that run (``startup.py``); any other process behaves as its
command line says. A torchrun rendezvous id (``--rdzv_id``) means one job by torchrun's own
definition: a new command reusing one is taken for a restart of the job that used it before.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from magiceraser.storage import Folder

RUN_STATE_NAME = "run_state.json"
LAUNCH_ENV = "MAGICERASER_LAUNCH_ID"


def _process_start_ticks(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot (Linux), '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def launch_id(env: dict[str, str] | None = None) -> str:
    """The id of the launch this process belongs to (see the module docstring)."""
    env = dict(os.environ if env is None else env)
    if env.get(LAUNCH_ENV):
        return f"env:{env[LAUNCH_ENV]}"
    rdzv = env.get("TORCHELASTIC_RUN_ID", "")
    if rdzv and rdzv != "none":
        return f"rdzv:{rdzv}"
    if "TORCHELASTIC_RESTART_COUNT" in env:
        agent = os.getppid()
        return f"agent:{socket.gethostname()}:{agent}:{_process_start_ticks(agent)}"
    return f"process:{uuid.uuid4().hex}"


def read_run_state(folder: Folder) -> dict[str, Any] | None:
    """The recorded launch and run of a checkpoint folder; None if there is none (or it cannot be read)."""
    try:
        state = json.loads(folder.read_bytes(RUN_STATE_NAME))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def write_run_state(folder: Folder, state: dict[str, Any]) -> None:
    """Replace the record (a rename on a filesystem, one PUT on an object store)."""
    folder.ensure()
    folder.write_json(RUN_STATE_NAME, state)
