"""`magiceraser erase` on files and directories; shipped configs; the real Mask2Former segmenter."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magiceraser.config import load_config
from magiceraser.pipelines.erase.cli import main
from magiceraser.pipelines.erase.config import EraseConfig

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "erase"


def _save(path, arr):
    Image.fromarray(arr).save(path)


def _img(h, w, seed):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _mask(h, w):
    m = np.zeros((h, w), np.uint8)
    m[h // 3 : h // 2, w // 3 : w // 2] = 255
    return m


@pytest.fixture
def overrides(tiny_sd, trained_dir):
    return [f"base_model={tiny_sd}", f"trained_dir={trained_dir}", "model_size=64", "num_inference_steps=2", "device=cpu"]


def test_single_image_writes_result_inputs_and_info(tmp_path, overrides):
    img, mask = _img(90, 120, 0), _mask(90, 120)
    _save(tmp_path / "img.jpg", img)
    _save(tmp_path / "mask.png", mask)
    rc = main(["--image", str(tmp_path / "img.jpg"), "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out"), *overrides])
    assert rc == 0
    result = np.asarray(Image.open(tmp_path / "out" / "result.png"))
    assert result.shape == (90, 120, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "mask.png")), mask)
    info = json.loads((tmp_path / "out" / "erase.json").read_text())
    assert "<magiceraser-bg>" in info["prompt"] and len(info["regions"]) == 1
    rc = main(["--image", str(tmp_path / "img.jpg"), "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "r.png"), *overrides])
    assert rc == 0 and Image.open(tmp_path / "r.png").size == (120, 90)


def test_directory_mode_skips_bad_items_and_reports(tmp_path, overrides):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _save(images / "good.png", _img(64, 80, 1))
    _save(masks / "good.png", _mask(64, 80))
    _save(images / "mismatch.png", _img(64, 80, 2))
    _save(masks / "mismatch.png", _mask(60, 80))
    _save(images / "empty.png", _img(64, 80, 3))
    _save(masks / "empty.png", np.zeros((64, 80), np.uint8))
    (images / "broken.jpg").write_bytes(b"not an image")
    _save(masks / "broken.png", _mask(64, 80))
    _save(images / "lonely.png", _img(64, 80, 4))
    rc = main(["--image", str(images), "--mask", str(masks), "--out", str(tmp_path / "out"), *overrides])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "erase_report.json").read_text())
    assert [Path_(e["out"]) for e in report["erased"]] == ["good.png"]
    reasons = {Path_(e["image"]): e["reason"] for e in report["skipped"]}
    assert reasons == {"mismatch.png": "size_mismatch", "empty.png": "empty_mask", "broken.jpg": "image_not_an_image", "lonely.png": "no_mask"}
    assert np.asarray(Image.open(tmp_path / "out" / "good.png")).shape == (64, 80, 3)
    # save_inputs unset: a directory's inputs are not copied (they are the --image/--mask folders)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["erase_report.json", "good.png"]


def Path_(p):  # file name of a reported path
    from pathlib import Path

    return Path(p).name


def test_cli_errors(tmp_path, overrides, capsys):
    assert main(["--image", str(tmp_path / "nope.png"), "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "o"), *overrides]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--image", "a", "--mask", "b", "--out", "c", "strength=1.5"])


def test_shipped_configs_load():
    default = load_config(EraseConfig, CONFIGS / "default.yaml")
    assert default.base_model == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert (default.num_inference_steps, default.strength, default.refocus) == (50, 0.9, True)
    demo = load_config(EraseConfig, CONFIGS / "demo.yaml")
    assert demo.base_model == "demo/models/sd-inpaint" and demo.trained_dir == "demo/train" and demo.model_size == 64
    with pytest.raises(ValueError, match="lama_path"):
        EraseConfig(content_init="lama")


def test_with_tiny_mask2former(tiny_sd, tiny_mask2former):
    seg_mod = pytest.importorskip("magiceraser.models.segmenter")
    from magiceraser.coco import BY_NAME
    from magiceraser.pipelines import MagicEraserPipeline

    segmenter = seg_mod.Mask2FormerSegmenter(str(tiny_mask2former), device="cpu")
    pipe = MagicEraserPipeline.from_pretrained(tiny_sd, segmenter=segmenter, model_size=64)
    img = _img(64, 96, 5)
    mask = _mask(64, 96) > 0
    out = pipe(img, mask, num_inference_steps=2)
    assert out.image.shape == img.shape
    assert out.tag is None or out.tag in BY_NAME


def _batch(tmp_path: Path, n: int) -> tuple[Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(n):
        _save(images / f"im{i}.png", _img(64, 80, 10 + i))
        _save(masks / f"im{i}.png", _mask(64, 80))
    return images, masks


def test_a_second_batch_on_the_same_out_is_refused_before_any_model_loads(tmp_path, overrides, capsys):
    from magiceraser.lock import OutputLock

    images, masks = _batch(tmp_path, 1)
    out = tmp_path / "out"
    out.mkdir()
    with OutputLock(out):  # a live batch of this very process holds the folder
        assert main(["--image", str(images), "--mask", str(masks), "--out", str(out), *overrides]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert re.match(rf"magiceraser erase: {out} is in use by another job \(host .*, pid {os.getpid()}", line), line
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written, not even a report


def test_a_full_disk_stops_the_batch_in_one_line_with_the_rest_not_done(tmp_path, overrides, small_filesystem, capsys):
    from magiceraser.cli import main as cli_main

    images, masks = _batch(tmp_path, 4)
    fs = small_filesystem(1 << 20)
    out = fs.path / "out"
    rc = cli_main(["erase", "--image", str(images), "--mask", str(masks), "--out", str(out), *overrides])
    assert rc == 0
    first = {p.name: p.read_bytes() for p in out.glob("im*.png")}
    for p in out.glob("im*.png"):
        p.unlink()
    fs.fill(leave=16 << 10)  # the report fits; erased images (~15 KB each as PNG) do not
    capsys.readouterr()
    rc = cli_main(["erase", "--image", str(images), "--mask", str(masks), "--out", str(out), *overrides])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("magiceraser erase:")]
    assert rc == 2 and len(err) == 1, err
    assert f"cannot write an erased image to {out}/im" in err[0] and "no space left on the device" in err[0], err[0]
    report = json.loads((out / "erase_report.json").read_text())
    assert report["status"] != "complete" and report["not_done"], report  # the rest is listed as not done
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")] and not (out / "job.lock").exists()
    (fs.path / "filler").unlink()
    assert cli_main(["erase", "--image", str(images), "--mask", str(masks), "--out", str(out), *overrides]) == 0
    assert {p.name: p.read_bytes() for p in out.glob("im*.png")} == first


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "unreachable"])
def test_without_a_config_on_a_machine_without_the_hub_the_line_says_what_to_set(tmp_path, offline):
    """The default base_model is a Hub id; offline, the libraries' message points at 'the stacktrace above' and
    'local_files_only=False', which a command-line user has neither of. One line naming base_model instead."""
    import subprocess
    import sys

    _save(tmp_path / "a.png", _img(32, 32, 0))
    _save(tmp_path / "m.png", _mask(32, 32))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    if offline == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:  # a Hub that cannot be reached (a closed local port): what a cluster without internet sees
        env.pop("HF_HUB_OFFLINE", None)
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    proc = subprocess.run([sys.executable, "-m", "magiceraser", "erase", "--image", str(tmp_path / "a.png"),
                           "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("magiceraser erase:")]
    assert proc.returncode == 2 and len(ours) == 1, proc.stderr[-3000:]
    default = EraseConfig().base_model
    assert ours[0].startswith(f"magiceraser erase: base_model: {default!r} could not be downloaded"), ours[0]
    assert "set base_model=DIR" in ours[0] and "local_files_only" not in ours[0] and "stacktrace" not in ours[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
