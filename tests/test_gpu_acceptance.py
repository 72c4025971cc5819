"""benchmarks/gpu_acceptance.py --cpu-smoke: the GPU acceptance run's code paths on CPU, so the
script cannot rot between the rare GPU runs (issue 14).

The smoke run is a subprocess whose imports of ray, wandb and vllm fail (a sitecustomize hides
them from the path finder, as on the GPU machine where they are not installed), so a section
that needs one of them fails here as it would there.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"
SECTIONS = ("env", "refocus", "erase", "train", "mask2former", "llava", "tests")

# Hides the packages the GPU machine does not have: find_spec answers None and import raises
# ModuleNotFoundError, exactly as for a package that is not installed.
BLOCKER = textwrap.dedent(
    """
    import importlib.machinery

    _BLOCKED = {"ray", "wandb", "vllm"}
    _find_spec = importlib.machinery.PathFinder.find_spec

    def _hiding_find_spec(name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            return None
        return _find_spec(name, path, target)

    importlib.machinery.PathFinder.find_spec = staticmethod(_hiding_find_spec)
    """
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    site = tmp_path_factory.mktemp("block-site")
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    # Another sitecustomize earlier on the path would shadow ours: prove it is active first.
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('wandb'))"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "None", probe.stdout + probe.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--total-limit", "900"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=960)
    return proc


def _table_rows(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("section") and "measurement" in line)
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        rows.append([cell.strip() for cell in line.split(" | ")])
    return rows


@pytest.mark.slow
def test_cpu_smoke_prints_every_section_and_exits_0(smoke_run):
    assert smoke_run.returncode == 0, smoke_run.stdout[-4000:] + smoke_run.stderr[-4000:]
    rows = _table_rows(smoke_run.stdout)
    sections = {row[0] for row in rows}
    assert set(SECTIONS) <= sections, sections
    assert not [row for row in rows if row[-1] == "FAILED"]
    for section in SECTIONS:
        assert any(row[0] == section and row[2] for row in rows), f"section {section} printed no measurement"
    text = smoke_run.stdout
    for needle in ("eraser, refocus on", "stock diffusers inpainting", "refocus / SDPA", "max |error| vs float64",
                   "latent cache", "pixels (VAE each step)", "batch 1, post-processing included", "captions/s",
                   "vLLM not measured", "pytest -m gpu"):
        assert needle in text, f"{needle!r} missing from the table"
    assert re.search(r"sections: 7 run, 0 failed", text)


@pytest.mark.slow
def test_cpu_smoke_never_imports_ray_wandb_vllm(smoke_run):
    rows = _table_rows(smoke_run.stdout)
    [leak] = [row for row in rows if row[1] == "ray / wandb / vllm imported by any section"]
    assert leak[2] == "none" and leak[-1] == "ok"
    assert "ModuleNotFoundError: No module named 'ray'" not in smoke_run.stderr
    assert "No module named 'wandb'" not in smoke_run.stdout


def _import(name: str):
    """A module of benchmarks/ (its scripts import each other as top-level modules)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_failing_section_is_reported_and_the_rest_still_run(monkeypatch, capsys):
    """A section that raises becomes a FAILED row with the error; the run goes on and exits 1."""
    ga = _import("gpu_acceptance")
    rows, status = ga.run_section_child("env", smoke=True, limit=120)
    assert status == "" and any(r.what == "versions" for r in rows)
    rows, status = ga.run_section_child("no-such-section", smoke=True, limit=120)
    assert status.startswith("exit code") and any(r.ok is False for r in rows)
    table = ga.format_table([ga.Row("erase", "FAILED", "RuntimeError: boom", ok=False), ga.Row("train", "x", "1", "<= 2", True)])
    assert "FAILED" in table and "boom" in table and "ok" in table


def test_goal_numbers_live_in_goals_py_and_the_readme_shows_them():
    """Every script reads its goals from goals.py (no number after a "goal" elsewhere), and the goal
    table of benchmarks/README.md is goals.py's own."""
    goals = _import("goals")
    stray = re.compile(r"goal[^\n]{0,40}?(<=|>=|≤|≥|<|>)\s*[0-9]", re.IGNORECASE)
    for path in sorted(SCRIPT.parent.glob("*.py")):
        if path.name != "goals.py":
            hits = [line for line in path.read_text().splitlines() if stray.search(line)]
            assert not hits, f"{path.name} writes a goal number: {hits}"
    readme = (SCRIPT.parent / "README.md").read_text()
    assert goals.markdown() in readme, "benchmarks/README.md: paste the output of `python benchmarks/goals.py`"
    assert goals.GOALS["erase_refocus_overhead"].met(1.2) and not goals.GOALS["train_images_per_s_gpu"].met(79.9)
