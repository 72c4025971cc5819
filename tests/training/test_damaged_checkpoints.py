"""A damaged checkpoint (a node died while shared storage flushed, a disk went bad) never stops a resume
with a traceback and never starts a run afresh silently: it is set aside, named in one line, and
the checkpoint before it is used; with none intact the run stops with one line naming what it found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from magiceraser.config import save_config
from magiceraser.errors import UserError
from magiceraser.storage import Folder
from magiceraser.training.checkpoint_store import CheckpointStore
from magiceraser.training.loop import Trainer, run_training

from .run_config import tiny_train_config

REPO = Path(__file__).resolve().parents[2]
RUN = {"phases.total_steps": 3, "phases.textual_inversion_steps": 1, "checkpoint.every": 1, "checkpoint.keep_last": 3}


@pytest.fixture(scope="module")
def three_checkpoints(tiny_sd, olrd_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged") / "run"
    run_training(tiny_train_config(tiny_sd, [olrd_shards / "olrd-*.tar"], out, **RUN))
    return out


def _cfg(tiny_sd, olrd_shards, out, **over):
    return tiny_train_config(tiny_sd, [olrd_shards / "olrd-*.tar"], out, **{**RUN, "resume": True, **over})


def _halve(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _old_format_and_halved(ckpt: Path) -> None:
    """A checkpoint written before digests were recorded, with a cut-off file: its header cannot be read."""
    state = json.loads((ckpt / "state.json").read_text())
    del state["files"]
    (ckpt / "state.json").write_text(json.dumps(state))
    _halve(ckpt / "trainable.safetensors")


DAMAGES = {
    "halved weights": (lambda c: _halve(c / "trainable.safetensors"), r"trainable\.safetensors: \d+ bytes where \d+ were written"),
    "missing optimizer": (lambda c: (c / "optimizer.pt").unlink(), r"optimizer\.pt: missing"),
    "one byte changed": (lambda c: _flip_a_byte(c / "rng.safetensors"), r"rng\.safetensors: its sha256 differs"),
    "garbage marker": (lambda c: (c / "state.json").write_text("{\"step\": 3, "), r"state\.json: not readable JSON"),
    "old format, cut off": (_old_format_and_halved, r"trainable\.safetensors: cannot be read"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_is_set_aside_named_and_the_one_before_is_used(
        three_checkpoints, tiny_sd, olrd_shards, tmp_path, caplog, damage):
    out = tmp_path / "run"
    shutil.copytree(three_checkpoints, out)
    harm, why = DAMAGES[damage]
    newest = out / "checkpoints" / "checkpoint-00000003"
    harm(newest)
    before = {p.name: p.read_bytes() for p in newest.iterdir()}
    with caplog.at_level("WARNING", logger="magiceraser"):
        trainer = Trainer(_cfg(tiny_sd, olrd_shards, out, **{"phases.total_steps": 4}))
    assert trainer.plan.checkpoint == "checkpoint-00000002"
    [line] = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert "checkpoint-00000003 is damaged" in line and "set aside as" in line, line
    assert re.search(why, line), line
    [aside] = [p for p in (out / "checkpoints").iterdir() if p.name.startswith("damaged-checkpoint-00000003-")]
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == before  # renamed, nothing deleted or changed
    assert trainer.train().steps == 4
    assert [r.name for r in CheckpointStore(out / "checkpoints").list()][-1] == "checkpoint-00000004"


def test_with_no_intact_checkpoint_the_command_says_so_in_one_line_also_on_a_second_try(
        three_checkpoints, tiny_sd, olrd_shards, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(three_checkpoints, out)
    for ckpt in (out / "checkpoints").glob("checkpoint-*"):
        _halve(ckpt / "trainable.safetensors")
    save_config(_cfg(tiny_sd, olrd_shards, out, **{"phases.total_steps": 4}), tmp_path / "run.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in (1, 2):
        proc = subprocess.run([sys.executable, "-m", "magiceraser", "train", "--config", str(tmp_path / "run.yaml")],
                              capture_output=True, text=True, cwd=str(REPO), env=env, timeout=180)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("magiceraser train:")]
        assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "holds no intact checkpoint" in errors[0] and "--overwrite" in errors[0], errors[0]
        if attempt == 1:  # every one named with its damage
            for step in (1, 2, 3):
                assert f"checkpoint-0000000{step} (trainable.safetensors:" in errors[0], errors[0]
        else:  # they are set aside now; still no silent fresh start
            assert "only checkpoints set aside as damaged" in errors[0], errors[0]
    assert (out / "magiceraser.json").read_bytes() == (three_checkpoints / "magiceraser.json").read_bytes()  # untouched
    assert len([p for p in (out / "checkpoints").iterdir() if p.name.startswith("damaged-")]) == 3


def test_a_checkpoint_of_another_run_is_never_chosen_by_a_restart(three_checkpoints, tiny_sd, olrd_shards, tmp_path):
    """A restarted launch continues its own run only: the newest checkpoint of another run is passed over untouched."""
    from magiceraser.training.launch import write_run_state

    out = tmp_path / "run"
    shutil.copytree(three_checkpoints, out)
    newest = out / "checkpoints" / "checkpoint-00000003"
    state = json.loads((newest / "state.json").read_text())
    (newest / "state.json").write_text(json.dumps({**state, "run_id": "another-run"}))
    mine = state["run_id"]
    write_run_state(Folder(out / "checkpoints"), {"launch": "env:my-job", "attempt": 0, "run_id": mine, "checkpoint_step": 3})
    trainer = Trainer(tiny_train_config(tiny_sd, [olrd_shards / "olrd-*.tar"], out, **RUN), launch_id="env:my-job")
    try:
        assert trainer.plan.mode == "restart" and trainer.plan.checkpoint == "checkpoint-00000002" and trainer.plan.attempt == 1
    finally:
        trainer.close()
    assert json.loads((newest / "state.json").read_text())["run_id"] == "another-run"
    with pytest.raises(UserError, match="already holds a training run"):  # a new launch with the same command is refused
        Trainer(tiny_train_config(tiny_sd, [olrd_shards / "olrd-*.tar"], out, **RUN), launch_id="env:another-job")
    with pytest.raises(UserError, match=r"cannot resume .*checkpoint-00000002.*seed: 0 -> 3"):  # a restart keeps the refusals
        Trainer(tiny_train_config(tiny_sd, [olrd_shards / "olrd-*.tar"], out, seed=3, **RUN), launch_id="env:my-job")
