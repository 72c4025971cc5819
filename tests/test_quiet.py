"""The known, expected library messages are silenced at their source, and only those; --debug shows them.

The end-to-end check (none of them in the output of the real commands) is
``test_the_demo_prints_none_of_the_known_alarms`` at the bottom: ``magiceraser demo`` runs every
README step (tiny-models, olrd, train, erase, evaluate) as the user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from demo_alarms import alarms_in, image_test_runs_the_demo

REPO = Path(__file__).resolve().parents[1]

FILTER_SCRIPT = """
import os, sys
from magiceraser.quiet import filtered_stderr
print("before", file=sys.stderr, flush=True)
with filtered_stderr(["NOISE"]):
    os.write(2, b"keep 1\\nthe NOISE line\\nkeep")   # lines split across writes are whole again
    os.write(2, b" 2\\n")
    print("python keep 3", file=sys.stderr, flush=True)
    os.write(2, b"unterminated NOISE")
print("after", file=sys.stderr)
"""

LOG_SCRIPT = """
import logging
from magiceraser.quiet import silence_known_warnings
silence_known_warnings()
logging.basicConfig(format="%(name)s: %(message)s")
logging.getLogger("transformers.utils.import_utils").warning(
    "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`")
logging.getLogger("transformers.modeling_utils").warning(
    "The new embeddings will be initialized from a multivariate normal distribution")
logging.getLogger("transformers.utils.import_utils").warning("another warning of that logger")
logging.getLogger("somewhere.else").warning("requires torchvision (not installed)")
"""


def _run(script: str, debug: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MAGICERASER_DEBUG"}
    if debug:
        env["MAGICERASER_DEBUG"] = "1"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_a_known_line_below_python_is_dropped_and_every_other_line_kept_in_order():
    assert _run(FILTER_SCRIPT).splitlines() == ["before", "keep 1", "keep 2", "python keep 3", "after"]
    assert "the NOISE line" in _run(FILTER_SCRIPT, debug=True)


def test_known_log_records_are_dropped_on_their_own_logger_only():
    lines = _run(LOG_SCRIPT).splitlines()
    assert lines == ["transformers.utils.import_utils: another warning of that logger",
                     "somewhere.else: requires torchvision (not installed)"]
    assert len(_run(LOG_SCRIPT, debug=True).splitlines()) == 4


@pytest.mark.slow
def test_the_demo_prints_none_of_the_known_alarms(tmp_path):
    """``magiceraser demo`` in a folder of its own: every step of the README, the output read as a user would.

    Where buildah can build the image, the image test runs the same demo inside it and checks these alarms
    there (one demo run in the suite, not two)."""
    if image_test_runs_the_demo():
        pytest.skip("tests/test_image.py runs the demo in the built image and checks the same alarms there")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    env = {k: v for k, v in os.environ.items() if k not in ("MAGICERASER_DEBUG", "RAY_ADDRESS")}
    env.update({"PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "RAY_worker_niceness": "0"})
    proc = subprocess.run([sys.executable, "-m", "magiceraser", "demo"], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert (tmp_path / "demo" / "eval" / "results.md").exists()
    assert not alarms_in(output)
