"""The methods as configurations of the real code, with tiny random-weight models, and a full run.

Telea / LaMa come from the eraser's content initialisers, SD inpainting and the MagicEraser rows
from its pipeline, the segmenter from the data engine; the numbers of random-weight models are
meaningless, so the checks are about wiring: which components run, shapes, untouched pixels,
the re-generation rate recomputed independently, and the table.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

pytest.importorskip("magiceraser.pipelines.erase.content_init")
pytest.importorskip("magiceraser.pipelines.erase.pipeline")

from magiceraser.evaluation import run as R  # noqa: E402
from magiceraser.evaluation.methods import MethodConfig, MethodUnavailable, build_method  # noqa: E402

from .olrd_shards import write_shard  # noqa: E402


def _image(size=64, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = (70, 140, 60)
    img += rng.integers(0, 30, img.shape, dtype=np.uint8)
    mask = np.zeros((size, size), bool)
    mask[20:36, 24:44] = True
    img[mask] = (220, 20, 20)
    return img, mask


@pytest.fixture(scope="module")
def trained_dir(tiny_sd, tmp_path_factory):
    """A trained output (LoRA + v*) for the tiny SD, exported by the trainer's own exporter."""
    export = pytest.importorskip("magiceraser.training.export")
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from magiceraser.prompts import DEFAULT_TOKEN

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd), subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    dim = unet.config.cross_attention_dim
    out = tmp_path_factory.mktemp("trained")
    return export.export_trained(out, unet, torch.randn(dim) * 0.01, DEFAULT_TOKEN, str(tiny_sd), {"steps": 0})


def test_classical_methods(tiny_lama):
    img, mask = _image()
    for cfg in (MethodConfig(name="telea", kind="telea"), MethodConfig(name="lama", kind="lama", lama_path=str(tiny_lama))):
        out, info = build_method(cfg)(img, mask, 0)
        assert out.shape == img.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[~mask], img[~mask])  # only the hole changes
        assert not np.array_equal(out[mask], img[mask])
    # Telea removes the red object: the hole becomes green-ish from its surroundings
    out, _ = build_method(MethodConfig(name="telea", kind="telea"))(img, mask, 0)
    assert out[mask][:, 1].mean() > out[mask][:, 0].mean()


def test_diffusion_methods_are_configurations_of_one_pipeline(tiny_sd, trained_dir, tiny_mask2former):
    img, mask = _image()
    common = dict(base_model=str(tiny_sd), num_inference_steps=2)
    sd = build_method(MethodConfig(name="sd", kind="sd", prompt="a lawn", **common), size=64)
    out, info = sd(img, mask, 0)
    assert out.shape == img.shape and info["prompt"] == "a lawn"
    prompts = tiny_sd.parent / "captions.json"
    prompts.write_text(json.dumps({"k7": "a lawn at dusk"}))
    sd = build_method(MethodConfig(name="sd", kind="sd", prompt="a lawn", prompts=str(prompts), **common), size=64)
    assert sd(img, mask, 0, "k7")[1]["prompt"] == "a lawn at dusk" and sd(img, mask, 0, "k8")[1]["prompt"] == "a lawn"
    full = build_method(MethodConfig(name="vi", kind="magiceraser", trained_dir=str(trained_dir), content_init="telea",
                                     segmenter=str(tiny_mask2former), **common), size=64)
    out, info = full(img, mask, 0)
    assert out.shape == img.shape and info["prompt"].startswith("A photo of <magiceraser-bg>")
    no_pt = build_method(MethodConfig(name="iii", kind="magiceraser", trained_dir=str(trained_dir), content_init="telea",
                                      learned_prompt=False, prompt="background", refocus=False, **common), size=64)
    assert no_pt(img, mask, 0)[1]["prompt"] == "background"
    with pytest.raises(MethodUnavailable, match="trained_dir"):
        build_method(MethodConfig(name="x", kind="magiceraser", trained_dir="/nonexistent/run", content_init="telea",
                                  refocus=False, **common))
    with pytest.raises(MethodUnavailable, match="cannot load"):
        build_method(MethodConfig(name="y", kind="sd", base_model="/nonexistent/sd-inpaint"))


def test_evaluate_with_tiny_models(tmp_path, tiny_sd, trained_dir, tiny_mask2former, tiny_lama):
    rng = np.random.default_rng(0)
    samples = []
    for i, (h, w) in enumerate([(50, 70), (64, 48)]):
        target = np.zeros((h, w, 3), np.uint8)
        target[:] = (80, 150, 70)
        target += rng.integers(0, 25, target.shape, dtype=np.uint8)
        mask = np.zeros((h, w), bool)
        mask[10:26, 12:30] = True
        blended = target.copy()
        blended[mask] = (230, 30, 30)
        samples.append((f"p{i}", blended, mask, target, {}))
    write_shard(tmp_path / "olrd-000000.tar", samples)
    common = {"base_model": str(tiny_sd), "num_inference_steps": 2}
    cfg = {
        "out_dir": str(tmp_path / "eval"), "size": 64, "device": "cpu", "grid_cases": 1,
        "datasets": [{"name": "pairs", "kind": "olrd_shards", "path": str(tmp_path)}],
        "methods": [
            {"name": "Telea", "kind": "telea"},
            {"name": "LaMa", "kind": "lama", "lama_path": str(tiny_lama)},
            {"name": "SD Inpainting", "kind": "sd", "prompt": "grass", **common},
            {"name": "MagicEraser", "kind": "magiceraser", "trained_dir": str(trained_dir), "content_init": "telea",
             "segmenter": str(tiny_mask2former), **common},
        ],
        "metrics": {"regrowth": True, "segmenter": str(tiny_mask2former)},
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert R.main(["--config", str(path)]) == 0
    out = tmp_path / "eval"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == ["Telea", "LaMa", "SD Inpainting", "MagicEraser"]
    assert all(r["count"] == "2" and r["failed"] == "0" for r in rows)

    from magiceraser.models.segmenter import Mask2FormerSegmenter
    from magiceraser.panoptic import regrowth_fraction

    seg = Mask2FormerSegmenter(str(tiny_mask2former))
    records = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    for r in records:
        assert 0.0 <= r["regrowth"] <= 1.0
        erased = np.asarray(Image.open(out / "methods" / "pairs" / r["method"].replace(" ", "_") / "images" / f"{r['key']}.png"))
        mask = np.asarray(Image.open(out / "pairs" / "pairs" / r["key"] / "mask.png")) > 127
        assert r["regrowth"] == pytest.approx(regrowth_fraction(mask, seg.segment([erased])[0]))
    assert "| pairs | Telea |" in (out / "results.md").read_text()
    assert "Regrowth↓" in (out / "results.md").read_text()


def test_refocus_without_a_segmenter_is_refused_at_config_load(tmp_path, capsys):
    """``refocus: true`` with no segmenter used to run a mask-only refocus under the MagicEraser row's name."""
    row = {"name": "MagicEraser", "kind": "magiceraser", "trained_dir": "runs/x", "content_init": "telea"}
    cfg = {"out_dir": str(tmp_path / "eval"), "datasets": [{"name": "pairs", "kind": "olrd_shards", "path": str(tmp_path)}],
           "methods": [{**row, "refocus": True}]}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exc:
        R.main(["--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "refocus: true needs segmenter" in err[0], err
    assert not (tmp_path / "eval").exists()
    MethodConfig(**row, refocus=False)  # an ablation row without refocus needs no segmenter
    MethodConfig(**row, segmenter="facebook/mask2former-swin-large-coco-panoptic")
    MethodConfig(name="sd", kind="sd")  # plain SD never refocuses: its default refocus=true is moot
