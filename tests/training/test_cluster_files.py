"""The cluster files say what the code does: the exit status of a preemption, valid config keys, valid shell.

No Kubernetes, KubeRay or SLURM runs here; the launch script itself runs in test_preemption.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import yaml

from magiceraser.config import load_config
from magiceraser.training.config import TrainConfig
from magiceraser.training.preemption import PREEMPTED_EXIT_CODE

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def _train_overrides(words: list[str]) -> list[str]:
    return [w for w in words if "=" in w and not w.startswith("-")]


def test_the_kubernetes_job_ignores_exactly_the_preempted_status_and_names_its_launch():
    job = yaml.safe_load((CLUSTER / "train-job.yaml").read_text())
    spec = job["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onExitCodes": {"containerName": "train", "operator": "In", "values": [PREEMPTED_EXIT_CODE]}} in rules
    assert any(r.get("onPodConditions") == [{"type": "DisruptionTarget"}] for r in rules)
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"][0] == "cluster/launch_train_multinode.sh" and "--resume" in container["command"]
    env = {e["name"]: e for e in container["env"]}
    assert "controller-uid" in env["RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"]  # one launch per Job
    assert pod["terminationGracePeriodSeconds"] >= 30
    load_config(TrainConfig, None, _train_overrides(container["command"]))


def test_the_rayjob_resumes_restarts_and_gives_the_driver_time_to_stop():
    job = yaml.safe_load((CLUSTER / "train-rayjob.yaml").read_text())["spec"]
    words = shlex.split(job["entrypoint"])
    assert words[:2] == ["magiceraser", "train"] and "--ray" in words and "--resume" in words
    cfg = load_config(TrainConfig, None, _train_overrides(words))
    assert cfg.ray.max_failures >= 1 and job["backoffLimit"] >= 1
    env = yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30


def test_the_launch_and_slurm_scripts_are_valid_shell_and_agree_on_the_status():
    for name in ("launch_train_multinode.sh", "train.sbatch"):
        subprocess.run(["bash", "-n", str(CLUSTER / name)], check=True)
    launch = (CLUSTER / "launch_train_multinode.sh").read_text()
    assert f"exit {PREEMPTED_EXIT_CODE}" in launch and "--max_restarts" in launch and "--rdzv_backend c10d" in launch
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in launch
    sbatch = (CLUSTER / "train.sbatch").read_text()
    assert re.search(r"#SBATCH --signal=B:USR1@\d+", sbatch) and "#SBATCH --requeue" in sbatch
    assert f"-eq {PREEMPTED_EXIT_CODE}" in sbatch and 'scontrol requeue "$SLURM_JOB_ID"' in sbatch
