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

from .job_helpers import run_job

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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
def reference(job_config, tmp_path_factory) -> Path:  # noqa: F811
    """The same job run here on a local Ray of its own, stopped before the head starts (one cluster at a time)."""
    out = tmp_path_factory.mktemp("olrd-submit-ref") / "out"
    run_job(job_config, out)
    return out


@pytest.fixture
def local_head(reference):
    """``ray start --head`` with 2 CPUs and the job server (dashboard) on free ports; stopped however the test ends."""
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
def test_ray_job_submit_runs_olrd_on_a_local_head(local_head, job_config, reference, tmp_path):  # noqa: F811
    """The README's command: the driver joins the head through RAY_ADDRESS (no address in the config)."""
    address, env = local_head
    full = reference
    cfg = {k: v for k, v in yaml.safe_load(job_config.read_text()).items() if k not in ("ray_address", "num_cpus")}
    config = tmp_path / "olrd.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
         "magiceraser", "olrd", "--config", str(config), f"output={out}"],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout, proc.stdout[-3000:]
    assert "[olrd] done:" in proc.stdout  # the driver's log streamed back by ray job submit
    tars = sorted(p.name for p in full.glob("olrd-*.tar"))
    assert sorted(p.name for p in out.glob("olrd-*.tar")) == tars
    for name in tars:
        assert (out / name).read_bytes() == (full / name).read_bytes(), name
    assert (out / "skipped.jsonl").read_bytes() == (full / "skipped.jsonl").read_bytes()
    assert time.monotonic() - t0 < 400
