"""A training run's out_dir: resume keyed on what the weights depend on, no pickle, one-unit exports.

Each test reproduces a way today's users lost or mixed work: a fresh run into another run's
folder, ``--resume`` with other settings, a crafted checkpoint file, a killed export, files the
team cannot read.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat
from pathlib import Path

import pytest
import torch

from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME, read_trained_output
from magiceraser.errors import UserError
from magiceraser.training import checkpoint as ckpt
from magiceraser.training.export import sweep_incomplete_export
from magiceraser.training.loop import Trainer, run_training
from magiceraser.training.resume import RESUMABLE_KEYS, check_resume

from .run_config import tiny_train_config

RUN = {"phases.total_steps": 2, "phases.textual_inversion_steps": 1, "checkpoint.every": 1, "checkpoint.keep_last": 2}


@pytest.fixture(scope="module")
def finished_run(tiny_sd, olrd_shards, tmp_path_factory):
    """A 2-step run with checkpoints at steps 1 and 2 and an export (copied by each test)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    old_umask = os.umask(0o022)
    try:
        run_training(tiny_train_config(tiny_sd, [olrd_shards / "olrd-*.tar"], out, **RUN))
    finally:
        os.umask(old_umask)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _cfg(tiny_sd, olrd_shards, out, **over):
    return tiny_train_config(tiny_sd, [olrd_shards / "olrd-*.tar"], out, **{**RUN, **over})


def test_fresh_run_into_a_folder_with_another_run_refuses_and_deletes_nothing(finished_run, tiny_sd, olrd_shards, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(UserError, match=r"already holds a training run .*--resume.*new out_dir.*--overwrite"):
        Trainer(_cfg(tiny_sd, olrd_shards, out, seed=5))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_overwrite_replaces_the_previous_run(finished_run, tiny_sd, olrd_shards, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    old_id = ckpt.read_state(ckpt.latest_checkpoint(out / "checkpoints"))["run_id"]
    run_training(_cfg(tiny_sd, olrd_shards, out, seed=5, overwrite=True, **{"checkpoint.every": 2}))
    found = ckpt.list_checkpoints(out / "checkpoints")
    assert [p.name for p in found] == ["checkpoint-00000002"]
    assert ckpt.read_state(found[0])["run_id"] != old_id
    assert read_trained_output(out).meta["training_config"]["seed"] == 5


def test_resume_with_other_settings_is_refused_naming_the_changed_keys(finished_run, tiny_sd, olrd_shards, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    with pytest.raises(UserError, match=r"data\.resolution: 64 -> 128.*seed: 0 -> 7.*--allow-change data\.resolution,seed"):
        Trainer(_cfg(tiny_sd, olrd_shards, out, seed=7, resume=True, **{"data.resolution": 128})).train()
    with pytest.raises(UserError, match=r"model\.lora\.rank: 4 -> 8"):
        Trainer(_cfg(tiny_sd, olrd_shards, out, resume=True, **{"model.lora.rank": 8})).train()
    with pytest.raises(UserError, match=r"global_batch: 2 -> 4.*optim\.grad_accumulation: 1 -> 2"):
        Trainer(_cfg(tiny_sd, olrd_shards, out, resume=True, **{"optim.grad_accumulation": 2})).train()
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "checkpoint-00000002"  # nothing written


def test_resume_accepts_resumable_and_explicitly_allowed_changes(finished_run, tiny_sd, olrd_shards, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    # more steps, other logging and checkpoint cadence: always allowed
    res = run_training(_cfg(tiny_sd, olrd_shards, out, resume=True, log_every=3,
                            **{"phases.total_steps": 3, "checkpoint.keep_last": 5, "wandb.log_every": 7}))
    assert res.steps == 3
    # another seed only with --allow-change seed
    res = run_training(_cfg(tiny_sd, olrd_shards, out, resume=True, seed=9, resume_allow_changes=["seed"],
                            **{"phases.total_steps": 4}))
    assert res.steps == 4


def test_check_resume_rules():
    saved = {"seed": 0, "data": {"resolution": 64, "urls": ["a"]}, "phases": {"total_steps": 10}, "wandb": {"mode": "offline"}}
    same = json.loads(json.dumps(saved))
    assert check_resume(saved, same, Path("c"), []) == []
    longer = {**same, "phases": {"total_steps": 20}, "wandb": {"mode": "disabled"}}
    assert len(check_resume(saved, longer, Path("c"), [])) == 2
    moved = {**same, "data": {"resolution": 64, "urls": ["b"]}}
    with pytest.raises(UserError, match=r'data\.urls: \["a"\] -> \["b"\]'):
        check_resume(saved, moved, Path("c"), [])
    assert check_resume(saved, moved, Path("c"), ["data.urls"])  # allowed by exact key
    assert check_resume(saved, moved, Path("c"), ["data"])  # ... or by a prefix
    with pytest.raises(UserError, match="records no fingerprint"):
        check_resume(None, same, Path("c"), [])
    assert "phases.total_steps" in RESUMABLE_KEYS and "seed" not in RESUMABLE_KEYS


class _Payload:
    """Unpickling this runs code: it creates the file named ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("victim", ["optimizer.pt", "rng.pt"])
def test_a_crafted_pickle_in_a_checkpoint_is_never_executed(finished_run, tiny_sd, olrd_shards, tmp_path, victim):
    out = _copy(finished_run, tmp_path / "run")
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    marker = tmp_path / "pwned"
    # rng.pt is where the RNG states lived before (loaded with weights_only=False); no file of a
    # checkpoint may be unpickled, under any name the loader reads.
    with open(latest / victim, "wb") as fh:
        pickle.dump({"state": _Payload(str(marker))}, fh)
    # The crafter also rewrote the marker's record of the file, so its size and digest check out.
    state = json.loads((latest / "state.json").read_text())
    if victim in state["files"]:
        data = (latest / victim).read_bytes()
        state["files"][victim] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (latest / "state.json").write_text(json.dumps(state))
    cfg = _cfg(tiny_sd, olrd_shards, out, resume=True, **{"phases.total_steps": 3})
    if victim == "optimizer.pt":  # a file the loader reads: refused when the run starts, naming it
        with pytest.raises(UserError, match=r"optimizer\.pt holds pickled Python objects"):
            Trainer(cfg)
    else:  # a file it no longer reads at all
        assert Trainer(cfg).train().steps == 3
    assert not marker.exists()


def test_checkpoints_hold_no_pickle_and_resume_restores_every_rng():
    # The files a checkpoint consists of, read back by libraries that cannot unpickle.
    import random

    import numpy as np

    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state = ckpt.rng_state()
    json.dumps({k: v for k, v in state.items() if k in ("python", "numpy")})  # plain JSON
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    ckpt.set_rng_state(json.loads(json.dumps({k: v for k, v in state.items() if k != "torch"})) | {"torch": state["torch"]})
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_checkpoint_and_export_files_are_team_readable(finished_run):
    files = [finished_run / n for n in (LORA_WEIGHTS_NAME, EMBEDS_NAME, META_NAME)]
    files += list(ckpt.latest_checkpoint(finished_run / "checkpoints").iterdir())
    assert len(files) >= 8
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    for name in ("optimizer.pt", "scheduler.json", "rng.safetensors", "trainable.safetensors", "state.json"):
        assert (ckpt.latest_checkpoint(finished_run / "checkpoints") / name).is_file()
    assert not (ckpt.latest_checkpoint(finished_run / "checkpoints") / "rng.pt").exists()


def test_keep_last_prunes_only_this_runs_checkpoints(finished_run, tiny_sd, olrd_shards, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    # A checkpoint another run left in the folder (an older lineage, copied in by hand).
    foreign = out / "checkpoints" / "checkpoint-00000001"
    state = json.loads((foreign / "state.json").read_text())
    (foreign / "state.json").write_text(json.dumps({**state, "run_id": "another-run"}))
    run_training(_cfg(tiny_sd, olrd_shards, out, resume=True, **{"phases.total_steps": 5, "checkpoint.keep_last": 1}))
    names = [p.name for p in ckpt.list_checkpoints(out / "checkpoints")]
    assert names == ["checkpoint-00000001", "checkpoint-00000005"]


def test_killed_export_leaves_no_marker_and_its_leftovers_are_swept(finished_run, tiny_sd, olrd_shards, tmp_path, monkeypatch):
    out = _copy(finished_run, tmp_path / "run")
    trainer = Trainer(_cfg(tiny_sd, olrd_shards, out, resume=True, **{"phases.total_steps": 3}))
    real_replace = os.replace
    calls = []

    def killed_after_first(src, dst):
        calls.append(dst)
        if Path(dst).name == EMBEDS_NAME:
            raise KeyboardInterrupt("killed between the two weight files")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.undo()
    # The new LoRA file is in place next to the old v*: no marker may vouch for that mix.
    assert (out / LORA_WEIGHTS_NAME).exists() and not (out / META_NAME).exists()
    with pytest.raises(FileNotFoundError):
        read_trained_output(out)
    removed = {p.name for p in sweep_incomplete_export(out)}
    assert LORA_WEIGHTS_NAME in removed and EMBEDS_NAME in removed
    # ... and the resumed run exports a complete unit again.
    run_training(_cfg(tiny_sd, olrd_shards, out, resume=True, **{"phases.total_steps": 3}))
    assert read_trained_output(out).meta["steps"] == 3


def test_an_export_mixed_with_another_runs_weights_is_refused(finished_run, tmp_path):
    out = _copy(finished_run, tmp_path / "run")
    other = torch.zeros(1, 32)
    from safetensors.torch import save_file

    token = json.loads((out / META_NAME).read_text())["token"]
    save_file({token: other}, str(out / EMBEDS_NAME))
    with pytest.raises(ValueError, match="sha256 differs"):
        read_trained_output(out)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_and_checkpoints_the_text_encoder(tiny_sd, olrd_shards, tmp_path):
    import contextlib

    from magiceraser.training.model import diffusion_loss, draw_step_noise

    def loss_and_grads(checkpointing: bool):
        trainer = Trainer(_cfg(tiny_sd, olrd_shards, tmp_path / f"gc{checkpointing}", **{"model.gradient_checkpointing": checkpointing}))
        model = trainer.model
        model.set_phase(2)
        batch = next(trainer._loader(2))
        # What the text encoder's forward keeps for the backward pass: checkpointing keeps only
        # each layer's input and recomputes the rest.
        saved = [0]

        def pack(t):
            saved[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.text_encoder(batch["input_ids"])
        draws = draw_step_noise(torch.Generator().manual_seed(0), 2, 0, 2, (4, 8, 8), 1000, torch.device("cpu"))
        loss = diffusion_loss(model, batch, draws, contextlib.nullcontext)
        loss.backward()
        params = [model.placeholder.vector] + model.lora_parameters()
        return float(loss), [p.grad.clone() for p in params], saved[0]

    loss_a, grads_a, saved_a = loss_and_grads(False)
    loss_b, grads_b, saved_b = loss_and_grads(True)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert grads_a[0].abs().sum() > 0  # v* receives its gradient through the text encoder
    assert saved_b < 0.5 * saved_a, (saved_a, saved_b)  # measured: ~8x fewer elements kept


def test_train_command_answers_user_errors_with_one_line_and_exit_2(finished_run, tiny_sd, olrd_shards, tmp_path, capsys):
    from magiceraser.cli import main
    from magiceraser.config import save_config

    out = _copy(finished_run, tmp_path / "run")
    save_config(_cfg(tiny_sd, olrd_shards, out), tmp_path / "train.yaml")
    cases = {
        "existing run": ["--config", str(tmp_path / "train.yaml")],
        "no shard": ["--config", str(tmp_path / "train.yaml"), "--overwrite", f"data.urls=[{tmp_path}/none-*.tar]"],
        "missing shards": ["--config", str(tmp_path / "train.yaml"), "--overwrite", f"data.urls=[{olrd_shards}/olrd-00000{{0..3}}.tar]"],
        "other seed": ["--config", str(tmp_path / "train.yaml"), "--resume", "seed=3"],
    }
    expected = {"existing run": "already holds a training run", "no shard": "matched no shard",
                "missing shards": "2 of 4 shards do not exist", "other seed": "seed: 0 -> 3"}
    for name, argv in cases.items():
        capsys.readouterr()
        assert main(["train", *argv]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("magiceraser train: ") and expected[name] in err[0], (name, err)
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "checkpoint-00000002"  # nothing was overwritten


def test_train_on_ray_checks_out_dir_and_data_before_starting_ray(finished_run, tiny_sd, olrd_shards, tmp_path, capsys):
    import ray

    from magiceraser.cli import main
    from magiceraser.config import save_config

    out = _copy(finished_run, tmp_path / "run")
    save_config(_cfg(tiny_sd, olrd_shards, out), tmp_path / "train.yaml")
    assert main(["train", "--config", str(tmp_path / "train.yaml"), "--ray"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "train.yaml"), "--ray", f"out_dir={tmp_path}/new",
                 f"data.urls=[{tmp_path}/none-*.tar]"]) == 2
    assert "matched no shard" in capsys.readouterr().err
    assert not ray.is_initialized()
