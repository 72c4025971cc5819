"""What clusters do to a trainer: preemption signals, a second run on the folder, a killed process restarted.

Every signal here is a real one (``os.kill``), every launcher the real one (the command line,
``accelerate launch`` as ``cluster/launch_train_multinode.sh`` runs it, torchrun's agent with
``--max_restarts``), and every comparison is against an uninterrupted run of the same config:
the weights must be equal bit for bit, the exported files byte for byte.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME
from magiceraser.config import save_config
from magiceraser.storage import Folder
from magiceraser.training import checkpoint as ckpt
from magiceraser.training import checkpoint_store
from magiceraser.training.checkpoint_store import CheckpointStore
from magiceraser.training.launch import read_run_state
from magiceraser.training.loop import Trainer, run_training
from magiceraser.training.preemption import PREEMPTED_EXIT_CODE, Preempted

from .run_config import tiny_train_config
from .wandb_records import history_steps, run_files

REPO = Path(__file__).resolve().parents[2]
EXPORT = (LORA_WEIGHTS_NAME, EMBEDS_NAME, META_NAME)


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _same_export(a: Path, b: Path) -> None:
    for name in EXPORT:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# -- one process, in this process ------------------------------------------------------------------


@pytest.mark.numeric
def test_a_signal_stops_after_its_step_a_second_one_during_the_save_changes_nothing_and_resume_is_exact(
        tiny_sd, olrd_shards, tmp_path, monkeypatch):
    over = {"phases.total_steps": 7, "phases.textual_inversion_steps": 2, "optim.grad_accumulation": 2,
            "data.num_workers": 2, "optim.scheduler": "cosine", "optim.warmup_steps": 2}
    urls = [olrd_shards / "olrd-*.tar"]
    full = run_training(tiny_train_config(tiny_sd, urls, tmp_path / "full", **over))

    trainer = Trainer(tiny_train_config(tiny_sd, urls, tmp_path / "part", **over))

    def loader(phase):  # SIGTERM arrives while step 4 reads its first micro-batch
        for batch in Trainer._loader(trainer, phase):
            if trainer.step == 3 and not trainer.preemption.requested:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    trainer._loader = loader
    real_write, during_save = checkpoint_store.write_synced, []

    def write_and_signal(path, data):  # ... and another one in the middle of writing the checkpoint
        if path.name == "rng.safetensors":
            os.kill(os.getpid(), signal.SIGTERM)
            during_save.append(path)
        real_write(path, data)

    monkeypatch.setattr(checkpoint_store, "write_synced", write_and_signal)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        trainer.train()
    monkeypatch.undo()
    assert stopped.value.step == 4 and stopped.value.signal_name == "SIGTERM" and during_save
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the caller's again
    store = CheckpointStore(tmp_path / "part" / "checkpoints")
    [ref] = store.list()
    assert ref.step == 4 and ckpt.load_checkpoint(store, ref)["state"]["step"] == 4  # whole, every digest right
    assert not (tmp_path / "part" / "job.lock").exists() and not (tmp_path / "part" / META_NAME).exists()

    resumed = run_training(tiny_train_config(tiny_sd, urls, tmp_path / "part", resume=True, **over))
    assert resumed.steps == 7
    _same_tensors(full.model.trainable_state(), resumed.model.trainable_state())
    _same_export(tmp_path / "full", tmp_path / "part")


# -- the command line ---------------------------------------------------------------------------------


def _train_cli(config: Path, logs: Path, *extra: str, hashseed: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": str(hashseed), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    out, err = open(logs.with_suffix(".out"), "w"), open(logs.with_suffix(".err"), "w")  # noqa: SIM115 - closed by the process's end
    return subprocess.Popen([sys.executable, "-m", "magiceraser", "train", "--config", str(config), *extra],
                            stdout=out, stderr=err, env=env, cwd=str(REPO))


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout: float = 180) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if m := re.search(pattern, text):
            return m
        assert proc.poll() is None, f"ended (status {proc.returncode}) before {pattern!r}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} in time:\n{text[-3000:]}"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_saves_exits_75_in_one_line_a_second_run_is_refused_and_resume_ends_byte_identical(
        tiny_sd, olrd_shards, tmp_path):
    """``magiceraser train`` as Kubernetes stops it; the export equals an uninterrupted run's byte for byte.

    The runs use different hash seeds: PEFT's target_modules is a set, whose order follows the seed,
    and it once made two identical runs write different LoRA files.
    """
    over = {"phases.total_steps": 60, "phases.textual_inversion_steps": 3, "checkpoint.every": 1000, "num_threads": 1,
            "wandb.mode": "offline", "wandb.log_every": 1}
    urls = [olrd_shards / "olrd-*.tar"]
    for name in ("reference", "run"):
        save_config(tiny_train_config(tiny_sd, urls, tmp_path / name, **over), tmp_path / f"{name}.yaml")
    reference = _train_cli(tmp_path / "reference.yaml", tmp_path / "reference", hashseed=1)
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.err").read_text()[-3000:]

    run = _train_cli(tmp_path / "run.yaml", tmp_path / "run", hashseed=2)
    _wait_for(tmp_path / "run.out", r"step 3/60", run)
    # A second launch on the same out_dir while the first trains: refused at once, naming the owner.
    second = subprocess.run([sys.executable, "-m", "magiceraser", "train", "--config", str(tmp_path / "run.yaml"), "--resume"],
                            capture_output=True, text=True, cwd=str(REPO), timeout=120)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
    assert f"is in use by another job (host {os.uname().nodename}, pid {run.pid}" in lines[0], lines[0]
    assert run.poll() is None  # the first run never noticed

    t0 = time.monotonic()
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == PREEMPTED_EXIT_CODE
    took = time.monotonic() - t0
    err = (tmp_path / "run.err").read_text().strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    line = err[-1]
    m = re.search(r"preempted \(SIGTERM\) after step (\d+); checkpoint (\S+) saved; exit status 75", line)
    assert m and line.rstrip().endswith("--resume"), line
    stopped = int(m.group(1))
    assert 3 <= stopped < 60 and Path(m.group(2)).name == f"checkpoint-{stopped:08d}"
    assert took < 30, f"{took:.1f} s from SIGTERM to exit: more than Kubernetes' grace period"
    assert not (tmp_path / "run" / "job.lock").exists()

    resumed = _train_cli(tmp_path / "run.yaml", tmp_path / "resumed", "--resume", hashseed=2)
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.err").read_text()[-3000:]
    _same_export(tmp_path / "reference", tmp_path / "run")
    # One W&B run across both processes, every step logged once.
    state = read_run_state(Folder(tmp_path / "run" / "checkpoints"))
    files = run_files(tmp_path / "run" / "wandb", state["wandb_run_id"])
    steps = [s for f in files for s in history_steps(f)]
    assert len(files) == 2 and steps == list(range(1, 61)), (len(files), steps)


# -- a group of processes under torchrun's agent ------------------------------------------------------


def _launch_two(config: Path, logs: Path, max_restarts: int, port: int, run_id: str = "") -> subprocess.Popen:
    """``cluster/launch_train_multinode.sh`` as one node of two processes (gloo on CPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO),
           "NUM_NODES": "1", "GPUS_PER_NODE": "2", "NODE_RANK": "0", "MAIN_IP": "127.0.0.1", "MAIN_PORT": str(port),
           "MAX_RESTARTS": str(max_restarts), "CONFIG": str(config), "RUN_ID": run_id,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = open(logs, "w")  # noqa: SIM115 - closed by the process's end
    return subprocess.Popen(["bash", str(REPO / "cluster" / "launch_train_multinode.sh")], env=env, cwd=str(REPO),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _pids(log: Path) -> list[dict[int, int]]:
    """Per attempt, rank -> pid, from the processes' first lines."""
    attempts: list[dict[int, int]] = []
    for rank, pid in re.findall(r"training process (\d) of 2 on \S+ \(pid (\d+)\)", log.read_text()):
        if not attempts or int(rank) in attempts[-1]:
            attempts.append({})
        attempts[-1][int(rank)] = int(pid)
    return attempts


@pytest.mark.slow
def test_two_processes_survive_a_preempted_node_a_preempted_rank_and_a_killed_rank(tiny_sd, olrd_shards, tmp_path):
    """What a multi-node job meets, on one node of two gloo processes under the launch script:

    1. SIGTERM to the launch script (the pod is stopped, SLURM's --signal): both processes save one
       checkpoint and the script exits 75;
    2. the same job launched again (same RUN_ID, as a requeued SLURM job or a new pod of the Job)
       continues by itself; then SIGTERM to rank 1 only (both stop after one step, save, exit 75;
       torchrun's agent restarts the group) and SIGKILL to rank 0 after the next checkpoint (the
       agent restarts it again). The export equals an uninterrupted launch's byte for byte.
    """
    over = {"phases.total_steps": 60, "phases.textual_inversion_steps": 2, "checkpoint.every": 4, "checkpoint.keep_last": 2,
            "num_threads": 1, "wandb.mode": "offline", "wandb.log_every": 1, "data.shuffle_buffer": 0}
    urls = [olrd_shards / "olrd-*.tar"]
    for name in ("reference", "run"):
        save_config(tiny_train_config(tiny_sd, urls, tmp_path / name, **over), tmp_path / f"{name}.yaml")
    port = 29500 + os.getpid() % 1000
    reference = _launch_two(tmp_path / "reference.yaml", tmp_path / "reference.log", 0, port)
    assert reference.wait(timeout=400) == 0, (tmp_path / "reference.log").read_text()[-4000:]

    procs = []
    try:
        log1 = tmp_path / "launch1.log"
        procs.append(first := _launch_two(tmp_path / "run.yaml", log1, 2, port + 1, run_id="job-7"))
        _wait_for(log1, r"step 3/60", first, timeout=300)
        first.send_signal(signal.SIGTERM)  # to the script only, as Kubernetes signals a container's process 1
        assert first.wait(timeout=90) == PREEMPTED_EXIT_CODE, log1.read_text()[-4000:]
        stopped = int(re.search(r"preemption signal \(SIGTERM\): stopped after step (\d+)", log1.read_text()).group(1))
        assert "restart 1" not in log1.read_text()  # a preempted node is not restarted in place

        log2 = tmp_path / "launch2.log"
        procs.append(second := _launch_two(tmp_path / "run.yaml", log2, 2, port + 2, run_id="job-7"))
        _wait_for(log2, rf"restart 1 of this launch: continuing run \w+ from \S+checkpoint-0*{stopped}\b", second)
        _wait_for(log2, rf"step {stopped + 2}/60", second)
        os.kill(_pids(log2)[0][1], signal.SIGTERM)  # rank 1 only: rank 0 learns of it in the step's all-reduce
        again = int(_wait_for(log2, r"preemption signal \(another process\): stopped after step (\d+)", second).group(1))
        _wait_for(log2, rf"restart 2 of this launch: continuing run \w+ from \S+checkpoint-0*{again}\b", second)
        saved_after = (again // 4 + 1) * 4  # the next periodic checkpoint of the restarted group
        _wait_for(log2, rf"saved \S+checkpoint-0*{saved_after}\b", second)
        os.kill(_pids(log2)[1][0], signal.SIGKILL)  # rank 0 dies holding the lock and the W&B run
        assert second.wait(timeout=400) == 0, log2.read_text()[-4000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log2.read_text()
    assert "restart 3 of this launch: continuing run" in text and len(_pids(log2)) == 3, text[-4000:]
    assert "taking over the stale lock" in text  # the killed rank 0's
    _same_export(tmp_path / "reference", tmp_path / "run")
    for name in (LORA_WEIGHTS_NAME, EMBEDS_NAME):  # and the tensors, for a readable failure
        _same_tensors(load_file(str(tmp_path / "reference" / name)), load_file(str(tmp_path / "run" / name)))
    # Four attempts, one W&B run, no step logged twice (the killed attempt logged past its last checkpoint).
    state = read_run_state(Folder(tmp_path / "run" / "checkpoints"))
    assert state["attempt"] == 3 and state["launch"] == "env:job-7"
    files = run_files(tmp_path / "run" / "wandb", state["wandb_run_id"])
    steps = [s for f in files for s in history_steps(f)]
    assert len(files) == 4 and steps == sorted(set(steps)) and steps[-1] == 60, (len(files), steps)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_saves_exits_130_in_one_line_and_a_second_one_leaves_at_once(
        tiny_sd, olrd_shards, tmp_path):
    """Ctrl-C in a terminal: SIGINT to the whole process group (the trainer and its loader workers).

    The first stops after the step, saves, and says how to continue, exit 130; the command it names
    continues to the end. A double Ctrl-C leaves without waiting for the step, naming the newest
    checkpoint there is. No traceback either way.
    """
    import json

    over = {"phases.total_steps": 60, "phases.textual_inversion_steps": 3, "checkpoint.every": 5, "num_threads": 1,
            "data.num_workers": 2}
    urls = [olrd_shards / "olrd-*.tar"]
    for name in ("once", "twice", "late"):
        save_config(tiny_train_config(tiny_sd, urls, tmp_path / name, **over), tmp_path / f"{name}.yaml")

    def interrupt(name: str, times: int, second_after: str = "") -> tuple[int, list[str]]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "magiceraser", "train", "--config", str(tmp_path / f"{name}.yaml")],
                                    stdout=out, stderr=err, env=env, cwd=str(REPO), start_new_session=True)
        _wait_for(tmp_path / f"{name}.out", r"step 7/60", proc)
        for i in range(times):
            if i and second_after:  # the second Ctrl-C only once the run has saved and is cleaning up
                _wait_for(tmp_path / f"{name}.out", second_after, proc)
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.05)
        code = proc.wait(timeout=60)
        return code, (tmp_path / f"{name}.err").read_text().strip().splitlines()

    code, err = interrupt("once", 1)
    assert code == 130 and "Traceback" not in "\n".join(err) and "KeyboardInterrupt" not in "\n".join(err), err[-30:]
    m = re.fullmatch(r"magiceraser train: interrupted \(SIGINT\) after step (\d+); checkpoint (\S+) saved; "
                     r"to continue: magiceraser train --config (\S+) --resume", err[-1])
    assert m and m.group(3) == str(tmp_path / "once.yaml"), err[-1]
    assert Path(m.group(2)).name == f"checkpoint-{int(m.group(1)):08d}" and (Path(m.group(2)) / "state.json").exists()
    assert not (tmp_path / "once" / "job.lock").exists()
    resumed = subprocess.run([sys.executable, "-m", "magiceraser", "train", "--config", m.group(3), "--resume"],
                             capture_output=True, text=True, cwd=str(REPO), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "once" / META_NAME).read_text())["steps"] == 60

    code, err = interrupt("twice", 2)
    assert code == 130 and "Traceback" not in "\n".join(err), err[-30:]
    m = re.fullmatch(r"magiceraser train: interrupted(?: \(SIGINT\) after step \d+)?; (.*); to continue: "
                     r"magiceraser train --config \S+ --resume", err[-1])
    assert m, err[-1]
    assert not (tmp_path / "twice" / "job.lock").exists()
    newest = CheckpointStore(tmp_path / "twice" / "checkpoints").list()[-1]
    assert newest.url in m.group(1) or f"checkpoint {newest.url}" in err[-1], (err[-1], newest)

    # A second Ctrl-C while the run that already saved cleans up (loader, W&B, lock): it cannot stop the
    # run sooner and must not cut the cleanup short (the lock was once left behind) or print a traceback.
    code, err = interrupt("late", 2, second_after=r"interrupt \(SIGINT\): stopped after step")
    assert code == 130 and "Traceback" not in "\n".join(err), err[-30:]
    assert err[-1].startswith("magiceraser train: interrupted (SIGINT) after step"), err[-1]
    assert not (tmp_path / "late" / "job.lock").exists()
