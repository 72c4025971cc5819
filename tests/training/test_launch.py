"""The small rules under restarts and preemption: launch ids, paths for Ray workers, signal names, write errors."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import torch

from magiceraser.config import ConfigError
from magiceraser.training.checkpoint_store import CheckpointStore
from magiceraser.training.distributed import StepFlags
from magiceraser.training.launch import launch_id
from magiceraser.training.preemption import PreemptionWatcher
from magiceraser.training.ray_launch import absolute_paths
from magiceraser.write_errors import WriteError, as_write_error, free_space, writing

from .run_config import tiny_train_config


def test_launch_ids_name_one_launch_across_its_restarts_and_nothing_else():
    assert launch_id({"MAGICERASER_LAUNCH_ID": "slurm-77", "TORCHELASTIC_RUN_ID": "x"}) == "env:slurm-77"
    assert launch_id({"TORCHELASTIC_RUN_ID": "job-3", "TORCHELASTIC_RESTART_COUNT": "2"}) == "rdzv:job-3"
    # torchrun's static rendezvous says "none": the agent (this process's parent here) is the launch.
    agent = launch_id({"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "0"})
    assert agent.startswith(f"agent:{os.uname().nodename}:{os.getppid()}:") and agent == launch_id(
        {"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert agent.split(":")[-1].isdigit()  # the agent's start time: a recycled pid is another launch
    plain = {launch_id({}) for _ in range(3)}  # a plain process: never restarted by a launcher
    assert len(plain) == 3 and all(p.startswith("process:") for p in plain)


def test_ray_workers_get_absolute_paths_and_urls_stay_as_they_are(tiny_sd, tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "sd").symlink_to(tiny_sd)
    cfg = tiny_train_config("models/sd", ["data/olrd-*.tar", "s3://bucket/olrd-{000000..000009}.tar"], "runs/a",
                            **{"validation.urls": ["data/olrd-000000.tar"], "data.latent_cache": "cache",
                               "checkpoint.dir": "ckpt", "ray.storage_path": "~/ray"})
    out = absolute_paths(cfg, tmp_path)
    assert out.out_dir == str(tmp_path / "runs/a") and out.model.base_model == str(tmp_path / "models/sd")
    assert out.data.urls == [str(tmp_path / "data/olrd-*.tar"), "s3://bucket/olrd-{000000..000009}.tar"]
    assert out.validation.urls == [str(tmp_path / "data/olrd-000000.tar")] and out.data.latent_cache == str(tmp_path / "cache")
    assert out.checkpoint.dir == str(tmp_path / "ckpt") and out.ray.storage_path == os.path.expanduser("~/ray")
    hub = tiny_train_config("stable-diffusion-v1-5/stable-diffusion-inpainting", ["/abs/olrd.tar"], "/abs/run",
                            **{"checkpoint.dir": "s3://b/ckpt"})
    same = absolute_paths(hub, tmp_path)  # a Hub id (no such folder here), absolute paths and URLs: untouched
    assert same.model.base_model == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert same.data.urls == ["/abs/olrd.tar"] and same.out_dir == "/abs/run" and same.checkpoint.dir == "s3://b/ckpt"


def test_preemption_signals_are_checked_when_the_config_loads(tiny_sd, tmp_path):
    with pytest.raises(ConfigError, match="SIGKILL cannot be caught"):
        tiny_train_config(tiny_sd, [], tmp_path, **{"preemption.signals": ["SIGTERM", "SIGKILL"]})
    with pytest.raises(ConfigError, match="'TERM' is not a signal name"):
        tiny_train_config(tiny_sd, [], tmp_path, **{"preemption.signals": ["TERM"]})
    assert tiny_train_config(tiny_sd, [], tmp_path, **{"preemption.signals": []}).preemption.signals == []


def test_the_watcher_sets_a_flag_only_and_gives_the_handler_back():
    before = signal.getsignal(signal.SIGUSR2)
    with PreemptionWatcher(["SIGUSR2"]) as watcher:
        assert not watcher.requested
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)  # a second one: the first reason stays
        assert watcher.received == "SIGUSR2"
    assert signal.getsignal(signal.SIGUSR2) is before


def test_step_flags_on_the_cpu_decide_in_the_same_step():
    flags = StepFlags()
    assert flags.push(torch.tensor([0.0])) == [0.0]
    assert flags.push(torch.tensor([1.0])) == [1.0]


def test_a_refused_write_names_the_path_what_and_free_space(tmp_path):
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.tmp"))
    error = as_write_error(exc, tmp_path / "x", "a thing")
    assert isinstance(error, WriteError)
    text = str(error)
    assert text.startswith(f"cannot write a thing to {tmp_path / 'x'}: no space left on the device (")
    assert free_space(tmp_path) in text and "free of" in text and "never taken for complete" in text
    assert as_write_error(OSError(errno.ENOENT, "gone")) is None  # not a refused write: stays a bug's traceback
    # A permission error can be a read's: the last resort leaves it alone; a writer's own block names it.
    assert as_write_error(OSError(errno.EACCES, "Permission denied")) is None
    with pytest.raises(WriteError, match="cannot write a third thing to .*: permission denied"):
        with writing(tmp_path / "z", "a third thing"):
            raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(WriteError, match="the file system is read-only"):
        with writing(tmp_path / "y", "another thing"):
            raise OSError(errno.EROFS, "Read-only file system")
    assert free_space("s3://bucket/key") == "free space unknown (object store)"
    assert "free of" in free_space(tmp_path / "not" / "yet" / "made")  # its nearest existing parent


def test_a_checkpoint_folder_without_its_marker_is_not_a_checkpoint_and_set_aside_keeps_everything(tmp_path):
    store = CheckpointStore(tmp_path)
    store.write(1, {"a.bin": b"1" * 10}, {"step": 1})
    store.write(2, {"a.bin": b"2" * 10}, {"step": 2})
    (tmp_path / "checkpoint-00000003").mkdir()
    (tmp_path / "checkpoint-00000003" / "a.bin").write_bytes(b"3")  # a save killed before its marker
    refs = store.list()
    assert [r.step for r in refs] == [1, 2]
    state, files = store.load(refs[-1])
    assert files == {"a.bin": b"2" * 10} and state["files"]["a.bin"]["size"] == 10
    aside = Path(store.set_aside(refs[-1]))
    assert aside.name.startswith("damaged-checkpoint-00000002-") and (aside / "a.bin").read_bytes() == b"2" * 10
    assert [r.step for r in store.list()] == [1] and store.set_aside_names() == [aside.name]
    store.remove(store.list()[0])
    assert store.list() == [] and sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint-00000003", aside.name])


def test_what_torchrun_starts_reports_a_user_error_in_one_line(tmp_path):
    """``python -m magiceraser.training.train`` (what torchrun and accelerate run) goes through the
    command line's dispatcher: an out_dir that is a file is one line and exit 2, before any model loads."""
    import subprocess
    import sys

    (tmp_path / "a-file").write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "magiceraser.training.train", f"out_dir={tmp_path / 'a-file'}"],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0] == f"magiceraser train: out_dir={tmp_path / 'a-file'} is a file, not a folder: choose a folder for the run's outputs"


def test_a_restart_whose_run_saved_checkpoints_never_starts_afresh_without_them(tiny_sd, tmp_path):
    """A restart of a run that had saved a checkpoint, when none of its checkpoints is there any more
    (deleted by hand, or every one damaged earlier): refused, never a silent start from step 0; a
    restart of a run that had saved none starts from step 0, whatever damaged folders lie around."""
    from magiceraser.errors import UserError
    from magiceraser.storage import Folder
    from magiceraser.training import startup
    from magiceraser.training.launch import write_run_state

    cfg = tiny_train_config(tiny_sd, [], tmp_path / "run")
    store = startup.checkpoint_store(cfg)
    (tmp_path / "run" / "checkpoints" / "damaged-checkpoint-00000009-20261201T000000Z").mkdir(parents=True)
    write_run_state(Folder(tmp_path / "run" / "checkpoints"), {"launch": "env:j", "run_id": "r1", "checkpoint_step": 8})
    with pytest.raises(UserError, match=r"run r1 saved a checkpoint at step 8, but .* holds no intact checkpoint of it"):
        startup.plan_start(cfg, store, "env:j", 1, "cpu")
    write_run_state(Folder(tmp_path / "run" / "checkpoints"), {"launch": "env:j", "run_id": "r1", "checkpoint_step": 0})
    plan = startup.plan_start(cfg, store, "env:j", 1, "cpu")
    assert plan.mode == "restart" and plan.checkpoint is None and plan.run_id == "r1" and plan.attempt == 1
