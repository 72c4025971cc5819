"""Installs that resolve on GPU nodes: the ``vllm`` extra with the project's pins (resolved against the
package registry, nothing downloaded but metadata), and the install check that replaced the old
"torchvision must not be installed" guard: it passes without torchvision and fails, in one line,
only on a torchvision that does not work with the installed torch (PyPI's CUDA-built wheel on this
CPU torch, the real failure the guard exists for)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pip(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _skip_if_offline(proc: subprocess.CompletedProcess) -> None:
    text = proc.stdout + proc.stderr
    if proc.returncode and any(s in text for s in ("Could not fetch URL", "NewConnectionError", "Temporary failure in name resolution",
                                                   "No matching distribution found")):
        pytest.skip(f"the package registry is not reachable here: {text.strip().splitlines()[-1]}")


def test_the_vllm_extra_resolves_with_the_project_pins(tmp_path):
    report = tmp_path / "report.json"
    proc = _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                "-c", "constraints.txt", ".[vllm]")
    _skip_if_offline(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert resolved["torch"].split("+")[0] == "2.13.0"  # the pin; +cpu here, the CUDA build on a GPU node
    assert resolved["vllm"] == "0.32.0" and resolved["ray"] == "2.60.0"
    major, minor, *_ = (int(x) for x in resolved["transformers"].split(".")[:2])
    assert (major, minor) >= (5, 16) and (major, minor) < (5, 20)  # vllm 0.32.0 needs transformers < 5.20
    assert "torchvision" in resolved  # vLLM brings it: why the install check must allow a working one


def _install_check(extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(extra_path)} if extra_path else {}
    return subprocess.run([sys.executable, "-m", "magiceraser.install_check"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_the_install_check_passes_without_torchvision():
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed in this environment")
    proc = _install_check()
    assert proc.returncode == 0 and "ok" in proc.stdout


def test_the_install_check_refuses_a_torchvision_built_for_another_torch(tmp_path):
    import torch

    if torch.version.cuda:
        pytest.skip("a CUDA torch: PyPI's torchvision matches it")
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    proc = _pip("download", "--no-deps", "--quiet", "-d", str(wheels), "torchvision==0.28.0")
    _skip_if_offline(proc)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [wheel] = wheels.glob("torchvision-*.whl")
    assert _pip("install", "--no-deps", "--quiet", "--target", str(target), str(wheel)).returncode == 0
    proc = _install_check(target)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "torchvision is installed but does not work with torch 2.13.0" in lines[0]
    assert "pip uninstall -y torchvision" in lines[0]
