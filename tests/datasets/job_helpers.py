"""What the data engine's job tests share: the inputs of the small job, running it, reading its shards."""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
from pathlib import Path

BAD = ("bomb.png", "cmyk.jpg", "empty.jpg", "text.jpg", "tiny.png", "truncated.jpg")
EXPECTED_SKIPS = {"bomb.png": "too_large", "cmyk.jpg": "no_annotation", "empty.jpg": "empty_file",
                  "text.jpg": "not_an_image", "tiny.png": "too_small", "truncated.jpg": "truncated"}
NUM_SCENES = 6

# Ray starts workers at niceness 15: on a busy shared test machine they would starve. Its agent may
# also need more than the default 60 s to come up there.
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")


def run_job(config: Path, output: Path, *overrides: str):
    from magiceraser.config import load_config
    from magiceraser.datasets.config import OLRDConfig
    from magiceraser.datasets.olrd_job import run_olrd

    return run_olrd(load_config(OLRDConfig, config, [f"output={output}", *overrides]))


def tar_keys(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        names = tar.getnames()
    return sorted({n.split(".", 1)[0] for n in names})


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the job's process group and every descendant (its local Ray) that we started."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
