"""The model card of an export: Hub metadata, what it was trained on, and a snippet that runs.

Every card here is written for a real export: a tiny training run (4 steps, 64 px, with a
held-out validation grid) through the trainer, as ``magiceraser train`` writes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME
from magiceraser.prompts import DEFAULT_TOKEN, learned_prompt
from magiceraser.training import model_card
from magiceraser.training.loop import run_training
from magiceraser.training.model_card import write_model_card

from .olrd_fixture import write_olrd_shards
from .run_config import tiny_train_config

SD15_INPAINT = "stable-diffusion-v1-5/stable-diffusion-inpainting"


@pytest.fixture(scope="module")
def trained_run(tiny_sd, tmp_path_factory):
    """A 4-step run (1 textual-inversion step) with distinctive settings; returns (out_dir, final validation grid)."""
    data = tmp_path_factory.mktemp("card-data")
    write_olrd_shards(data, num_shards=1, per_shard=4, seed=3)
    write_olrd_shards(data, num_shards=1, per_shard=2, seed=7, prefix="heldout")
    out = tmp_path_factory.mktemp("card-run")
    cfg = tiny_train_config(
        tiny_sd, [data / "olrd-000000.tar"], out,
        **{"model.lora.rank": 2, "model.lora.alpha": 3.0, "optim.lr": 2e-3, "optim.embedding_lr": 7e-4,
           "data.prompt_learned_prob": 0.7, "validation.urls": [str(data / "heldout-000000.tar")],
           "validation.num_samples": 2, "validation.num_inference_steps": 2},
    )
    run_training(cfg)
    grids = sorted((out / "validation").glob("step-*.png"))
    assert grids, "the run wrote no validation grid"
    return out, grids[-1]


@pytest.fixture
def export(trained_run, tmp_path) -> Path:
    """A copy of the run's export this test may change (``magiceraser.json`` is not among the digested files)."""
    out = tmp_path / "export"
    out.mkdir()
    for name in (LORA_WEIGHTS_NAME, EMBEDS_NAME, META_NAME):
        shutil.copy2(trained_run[0] / name, out / name)
    return out


def _update_meta(export: Path, **changes) -> None:
    meta = json.loads((export / META_NAME).read_text())
    meta.update(changes)
    (export / META_NAME).write_text(json.dumps(meta, indent=2))


def _section(text: str, title: str) -> str:
    """The body of the ``## title`` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no section {title!r} in the card"
    return match.group(1)


def test_card_of_a_local_base_model_has_no_base_model_metadata_and_records_the_run(export, trained_run, tiny_sd):
    path = write_model_card(export, validation_grid=trained_run[1])
    assert path == export / "README.md"
    card = ModelCard.load(path)
    data = card.data.to_dict()

    # A local path is not Hub metadata: the card names it in the text instead.
    assert "base_model" not in data
    assert str(tiny_sd) in card.text and "not a Hugging Face Hub id" in card.text
    assert data["library_name"] == "diffusers"
    assert {"lora", "textual_inversion", "inpainting", "object-removal", "stable-diffusion", "diffusers", "magiceraser"} <= set(data["tags"])
    assert data["pipeline_tag"] == "image-to-image"
    assert data["instance_prompt"] == learned_prompt(DEFAULT_TOKEN, None) == f"A photo of {DEFAULT_TOKEN}"
    # The tiny model has no card of its own: its license is unknown, said in the metadata and the text.
    assert data["license"] == "other" and "License: unknown" in card.text

    # The settings come from magiceraser.json (the run's distinctive values).
    settings = _section(card.text, "Training settings")
    assert "| optimizer steps | 4 (of `phases.total_steps` 4) |" in settings
    assert "| LoRA | rank 2, alpha 3.0 (scale alpha / rank = 1.5), dropout 0.0, on `to_q`, `to_k`, `to_v`, `to_out.0` |" in settings
    assert "| learning rates | LoRA 0.002, v* 0.0007;" in settings
    assert "| batch size | 2 per process × 1 accumulation × 1 process = 2 per optimizer step |" in settings
    assert "| resolution | 64×64 px crops |" in settings
    assert f"learned prompt `A photo of {DEFAULT_TOKEN} {{tag}}` with probability 0.7" in settings
    assert "1: v* alone for 1 steps on 100% of the samples" in settings
    assert f"`{DEFAULT_TOKEN}`" in card.text  # the token in code, never a bare <tag> the Hub would swallow as HTML

    # The grid is copied in and shown; the weight files' digests are listed.
    assert (export / "validation.png").read_bytes() == trained_run[1].read_bytes()
    validation = _section(card.text, "Validation")
    assert "![validation grid](validation.png)" in validation and "at step 4" in validation
    meta = json.loads((export / META_NAME).read_text())
    for name, digest in meta["files"].items():
        assert f"| `{name}` | `{digest}` |" in card.text
    assert "arxiv.org/abs/2410.10207" in card.text
    assert not [p for p in export.iterdir() if p.name.startswith(".tmp-")]


def test_base_model_metadata_only_for_a_hub_id_with_the_license_of_the_table_or_its_card(export, tmp_path, monkeypatch):
    _update_meta(export, base_model=SD15_INPAINT)
    card = ModelCard.load(write_model_card(export))
    assert card.data.base_model == SD15_INPAINT and card.data.license == "creativeml-openrail-m"
    assert f"https://huggingface.co/{SD15_INPAINT}" in card.text
    assert f"BASE_MODEL = {SD15_INPAINT!r}" in card.text

    # A Hub id of unknown license: named as base_model, license "other" with the note.
    _update_meta(export, base_model="someone/sd15-inpaint-finetune")
    card = ModelCard.load(write_model_card(export))
    assert card.data.base_model == "someone/sd15-inpaint-finetune"
    assert card.data.license == "other" and "License: unknown" in card.text

    # "models/sd" could be a Hub id, but a folder of that name exists: the loaders take the folder,
    # so it is no Hub metadata; its own card (a downloaded snapshot keeps the Hub's) gives the license.
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "models" / "sd"
    local.mkdir(parents=True)
    (local / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n\n# SD 1.5 inpainting\n")
    _update_meta(export, base_model="models/sd")
    card = ModelCard.load(write_model_card(export))
    assert "base_model" not in card.data.to_dict()
    assert card.data.license == "creativeml-openrail-m"
    assert "the local folder `models/sd`" in card.text


def test_lineage_is_listed_when_recorded_and_said_not_recorded_otherwise(export):
    # The run's own lineage (magiceraser.lineage): the fixture's shards have no job.json, so no OLRD job vouches for them.
    lineage = json.loads((export / META_NAME).read_text())["lineage"]
    data = _section(ModelCard.load(write_model_card(export)).text, "Training data")
    assert "not recorded" not in data
    assert "OLRD jobs (0): none recorded" in data
    (shard,) = lineage["shards"]
    # no sidecar vouches for the fixture's shard: it is named by size and modification time (never read)
    assert shard["digest"] is None and shard["identity"].startswith(f"size={shard['bytes']},mtime_ns=")
    assert f"| `{shard['uri']}` | `{shard['identity']}` | {shard['bytes']} | none |" in data

    # Several jobs with their dataset artifacts, more shards than the card lists.
    shards = [{"uri": f"s3://bucket/olrd/olrd-{i:06d}.tar", "digest": f"{i:064x}", "bytes": 1000 + i,
               "job_fingerprint": "4f2a9c00112233445566" if i < 20 else "77be01"} for i in range(25)]
    _update_meta(export, lineage={
        "job_fingerprints": ["4f2a9c00112233445566", "77be01"],
        "datasets": [{"artifact": "olrd-4f2a9c0011223344", "job_fingerprint": "4f2a9c00112233445566", "digest": "d1g3st",
                      "num_shards": 20}, {"artifact": "olrd-77be01", "job_fingerprint": "77be01", "digest": "0th3r", "num_shards": 5}],
        "shards": shards})
    data = _section(ModelCard.load(write_model_card(export)).text, "Training data")
    assert "not recorded" not in data
    assert "OLRD jobs (2): `4f2a9c00112233445566`, `77be01`" in data
    assert "- Dataset artifact `olrd-4f2a9c0011223344` of OLRD job `4f2a9c00112233445566`: digest `d1g3st`, 20 shards" in data
    assert "- Dataset artifact `olrd-77be01` of OLRD job `77be01`: digest `0th3r`, 5 shards" in data
    assert "- Shards read (25):" in data
    for s in shards[: model_card.MAX_LISTED_SHARDS]:
        assert f"| `{s['uri']}` | `{s['digest']}` | {s['bytes']} | `{s['job_fingerprint']}` |" in data
    assert shards[-1]["uri"] not in data and "… and 5 more" in data

    # A run on a latent cache names the cache.
    _update_meta(export, lineage={"job_fingerprints": [], "datasets": [], "shards": [], "latent_cache": "s3://bucket/cache"})
    data = _section(ModelCard.load(write_model_card(export)).text, "Training data")
    assert "- Latent cache: `s3://bucket/cache`" in data

    # No lineage entry (an export from before it was recorded).
    meta = json.loads((export / META_NAME).read_text())
    del meta["lineage"]
    (export / META_NAME).write_text(json.dumps(meta))
    data = _section(ModelCard.load(write_model_card(export)).text, "Training data")
    assert "Shard lineage: not recorded" in data
    assert "| shard |" not in data
    assert "`data.urls`:" in data and "olrd-000000.tar" in data  # the configured shards are named either way


def test_card_names_no_export_path_so_identical_exports_get_identical_cards(export, trained_run, tmp_path):
    other = tmp_path / "elsewhere" / "run-b"
    shutil.copytree(export, other)
    a = write_model_card(export, validation_grid=trained_run[1]).read_bytes()
    b = write_model_card(other, validation_grid=trained_run[1]).read_bytes()
    assert a == b
    assert str(tmp_path).encode() not in a


def test_card_of_an_export_that_records_only_token_and_base_model(export):
    """An export written before the settings were recorded: every missing value is said to be missing."""
    meta = json.loads((export / META_NAME).read_text())
    (export / META_NAME).write_text(json.dumps({k: meta[k] for k in ("token", "base_model", "files")}))
    card = ModelCard.load(write_model_card(export))
    settings = _section(card.text, "Training settings")
    assert "| optimizer steps | not recorded (of `phases.total_steps` not recorded) |" in settings
    assert "| LoRA | rank not recorded, alpha not recorded, dropout not recorded, on not recorded |" in settings
    assert "Shard lineage: not recorded" in card.text
    assert "RESOLUTION = 512" in card.text  # SD 1.5's own resolution when the training one is unknown


def test_card_without_a_grid_shows_none_and_removes_a_replaced_runs_grid(export, trained_run):
    write_model_card(export, validation_grid=trained_run[1])
    assert (export / "validation.png").is_file()
    card = ModelCard.load(write_model_card(export))
    assert not (export / "validation.png").exists()
    assert "validation.png" not in card.text and "No validation grid" in card.text
    # The grid already in place may be named as the grid.
    shutil.copy2(trained_run[1], export / "validation.png")
    card = ModelCard.load(write_model_card(export, validation_grid=export / "validation.png"))
    assert (export / "validation.png").read_bytes() == trained_run[1].read_bytes()
    assert "![validation grid](validation.png)" in card.text


def test_no_card_for_an_incomplete_or_mixed_export(export):
    lora = (export / LORA_WEIGHTS_NAME).read_bytes()
    (export / LORA_WEIGHTS_NAME).write_bytes(lora[:-1] + bytes([lora[-1] ^ 1]))
    with pytest.raises(ValueError, match="sha256 differs"):
        write_model_card(export)
    (export / LORA_WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=LORA_WEIGHTS_NAME):
        write_model_card(export)
    assert not (export / "README.md").exists()


def test_project_link_comes_from_the_package_metadata(export, monkeypatch):
    import importlib.metadata

    class Meta:
        def get_all(self, key):
            return ["Homepage, https://example.org/magiceraser"] if key == "Project-URL" else None

        def get(self, key):
            return None

    monkeypatch.setattr(importlib.metadata, "metadata", lambda name: Meta())
    assert model_card.project_url() == "https://example.org/magiceraser"
    assert "[magiceraser](https://example.org/magiceraser)" in ModelCard.load(write_model_card(export)).text


def _set_variable(code: str, name: str, value) -> str:
    code, n = re.subn(rf"^{name} = .*$", lambda _: f"{name} = {value!r}", code, flags=re.M)
    assert n == 1, f"the snippet assigns {name} {n} times at the start of a line"
    return code


def test_the_cards_snippet_erases_an_image_with_stock_diffusers(export, tiny_sd, tmp_path):
    """The card's Python block, run as written from the export's folder in a fresh interpreter with
    only the base model, the step count and the file paths substituted: it loads the LoRA and v*,
    uses the learned prompt and writes an image of the input's size (75x50: neither a multiple of 8
    nor square), changing only the masked pixels."""
    text = ModelCard.load(write_model_card(export)).text
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) == 1, f"{len(blocks)} python blocks in the card"
    code = blocks[0]
    assert 'MAGICERASER_MODEL = "."' in code  # the card's own folder, as written: run from inside it
    prompt_line = re.search(r"^PROMPT = (.*)$", code, re.M).group(1)
    assert eval(prompt_line, {"TOKEN": DEFAULT_TOKEN, "BACKGROUND": ""}) == learned_prompt(DEFAULT_TOKEN, None)

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (50, 75, 3), dtype=np.uint8)
    mask = np.zeros((50, 75), np.uint8)
    mask[10:35, 20:50] = 255
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code = _set_variable(code, "BASE_MODEL", str(tiny_sd))
    code = _set_variable(code, "STEPS", 2)
    code = _set_variable(code, "IMAGE_PATH", str(tmp_path / "photo.png"))
    code = _set_variable(code, "MASK_PATH", str(tmp_path / "mask.png"))
    code = _set_variable(code, "OUTPUT_PATH", str(tmp_path / "erased.png"))
    # What the snippet left behind: its prompt, the adapters on the pipeline, v* under the token.
    code += """
import json
from safetensors.torch import load_file
vector = load_file(MAGICERASER_MODEL + "/learned_embeds.safetensors")[TOKEN][0]
row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(TOKEN)]
print("PROBE " + json.dumps({"prompt": PROMPT, "adapters": pipe.get_list_adapters(),
                             "v_star": bool(torch.equal(row.detach().float(), vector.float()))}))
"""
    (tmp_path / "snippet.py").write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(tmp_path / "snippet.py")], cwd=export, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    probe = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("PROBE "))[6:])
    assert probe["prompt"] == learned_prompt(DEFAULT_TOKEN, "grass")
    assert probe["adapters"].get("unet"), probe["adapters"]
    assert probe["v_star"]
    with Image.open(tmp_path / "erased.png") as img:
        assert img.size == (75, 50) and img.mode == "RGB"
        erased = np.asarray(img)
    inside = mask == 255
    np.testing.assert_array_equal(erased[~inside], photo[~inside])  # only the masked region changes
    assert np.abs(erased[inside].astype(int) - photo[inside]).mean() > 10  # and it was painted
