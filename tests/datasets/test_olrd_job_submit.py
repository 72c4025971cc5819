"""``ray job submit --working-dir . -- magiceraser olrd ...`` against a local head, as cluster/README.md shows.

The head is started with ``ray start --head`` under its own temporary folder, so its processes are
found (and stopped) by that folder alone: ``ray stop`` would stop every Ray on this shared machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NO_AGENT_YET = "No available agent to submit job, please try again later"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_head(temp_dir: str) -> None:
    """Kill the processes of the head started under ``temp_dir`` (their command lines name it), then their workers."""
    import psutil

    mine = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    children = [c for p in mine for c in _children(p)]
    for p in mine + children:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(mine + children, timeout=30)


def _children(p):
    import psutil

    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture(scope="module")
def reference(olrd_reference) -> Path:
    """The same job run in this process on the shared local Ray (tests/datasets/conftest.py)."""
    out, _ = olrd_reference
    return out


@pytest.fixture
def local_head(reference, shared_ray):
    """``ray start --head`` with 2 CPUs and the job server (dashboard) on free ports; stopped however the test ends."""
    shared_ray.down()  # one cluster at a time
    temp_dir = tempfile.mkdtemp(prefix="ray-head-", dir="/tmp")  # short: Ray's socket paths are length-limited
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = "token"  # as cluster/README.md says: the head turns token auth on, clients follow
    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp_dir}",
                        "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=240)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_head(temp_dir)


@pytest.mark.slow
def test_ray_job_submit_runs_olrd_on_a_local_head(local_head, job_config, reference, tmp_path):
    """The README's command: the driver joins the head through RAY_ADDRESS (no address in the config)."""
    address, env = local_head
    full = reference
    cfg = {k: v for k, v in yaml.safe_load(job_config.read_text()).items() if k not in ("ray_address", "num_cpus")}
    config = tmp_path / "olrd.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    t0 = time.monotonic()
    while True:
        proc = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
             "magiceraser", "olrd", "--config", str(config), f"output={out}"],
            cwd=str(REPO), env=env, capture_output=True, text=True, timeout=400)
        # A head just started may not have its job agent up yet (on a loaded machine it can take
        # longer than the 10 s the job server waits for it): nothing was submitted, so submit again.
        if NO_AGENT_YET not in proc.stdout + proc.stderr or time.monotonic() - t0 > 120:
            break
        time.sleep(2)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout, proc.stdout[-3000:]
    assert "[olrd] done:" in proc.stdout  # the driver's log streamed back by ray job submit
    tars = sorted(p.name for p in full.glob("olrd-*.tar"))
    assert sorted(p.name for p in out.glob("olrd-*.tar")) == tars
    for name in tars:
        assert (out / name).read_bytes() == (full / name).read_bytes(), name
    assert (out / "skipped.jsonl").read_bytes() == (full / "skipped.jsonl").read_bytes()
    assert time.monotonic() - t0 < 400
