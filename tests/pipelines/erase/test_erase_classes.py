"""``magiceraser erase --classes``: masks built from the segmentation, per-image records of what was erased."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from magiceraser import coco
from magiceraser.panoptic import PanopticResult, Segment, dilate
from magiceraser.pipelines.erase import cli as erase_cli
from magiceraser.pipelines.erase.cli import main


class TwoPeopleOrNone:
    """Grass with two persons and a car for bright images, grass only for dark ones (mean < 40)."""

    model_id = "two-people"

    def segment(self, images):
        out = []
        for img in images:
            h, w = img.shape[:2]
            seg = np.ones((h, w), np.int32)
            segments = [Segment(1, coco.BY_NAME["grass-merged"].label, 0)]
            if img.mean() >= 40:
                seg[5:25, 5:25], seg[40:60, 50:70], seg[5:20, 60:75] = 2, 3, 4
                segments += [Segment(2, coco.BY_NAME["person"].label, 400, 0.9), Segment(3, coco.BY_NAME["person"].label, 400, 0.8),
                             Segment(4, coco.BY_NAME["car"].label, 225, 0.7)]
            out.append(PanopticResult(seg, segments))
        return out


@pytest.fixture
def overrides(tiny_sd, tiny_mask2former):
    return [f"base_model={tiny_sd}", "trained_dir=null", f"segmenter={tiny_mask2former}", "model_size=64",
            "num_inference_steps=2", "device=cpu", "save_inputs=true"]


@pytest.fixture(autouse=True)
def fake_segmenter(monkeypatch):
    real = erase_cli.load_pipeline

    def load(cfg):
        pipe = real(cfg)
        pipe.segmenter = TwoPeopleOrNone()
        return pipe

    monkeypatch.setattr(erase_cli, "load_pipeline", load)


def _photo(h, w, level, seed):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(level, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def test_directory_mode_erases_every_person_and_records_the_segments(tmp_path, overrides):
    images = tmp_path / "images"
    images.mkdir()
    bright = _photo(64, 80, 150, 0)
    Image.fromarray(bright).save(images / "street.png")
    Image.fromarray(_photo(64, 80, 10, 1)).save(images / "night.png")
    out = tmp_path / "out"
    rc = main(["--image", str(images), "--classes", "person", "--class-dilation", "2", "--out", str(out), *overrides])
    assert rc == 0
    report = json.loads((out / "erase_report.json").read_text())
    (erased,) = report["erased"]
    assert erased["classes"] == ["person"] and [s["id"] for s in erased["segments"]] == [2, 3]
    assert {s["class"] for s in erased["segments"]} == {"person"}
    (skipped,) = report["skipped"]
    assert skipped["reason"] == "no_class_found" and "night.png" in skipped["message"] and "person" in skipped["message"]
    result = np.asarray(Image.open(out / "street.png"))
    people = np.zeros((64, 80), bool)
    people[5:25, 5:25] = people[40:60, 50:70] = True
    outside = ~dilate(people, 8 + 2)  # the pipeline's mask_dilation (EraseConfig default 8) plus --class-dilation
    assert np.array_equal(result[outside], bright[outside])  # the car and the grass stay
    assert (result[people] != bright[people]).any()
    # save_inputs=true (in the overrides) in directory mode: the input and the mask built from the classes.
    saved = np.asarray(Image.open(out / "masks" / "street.png")) > 127
    assert saved[people].all() and not saved[~dilate(people, 2)].any()
    assert np.array_equal(np.asarray(Image.open(out / "inputs" / "street.png")), bright)
    assert erased["mask_saved"] == str(out / "masks" / "street.png") and not (out / "masks" / "night.png").exists()
    # A rerun with the same classes reuses the result; other classes erase again.
    assert main(["--image", str(images), "--classes", "person", "--class-dilation", "2", "--out", str(out), *overrides]) == 0
    assert json.loads((out / "erase_report.json").read_text())["erased"][0].get("reused") is True
    assert main(["--image", str(images), "--classes", "person,car", "--class-dilation", "2", "--out", str(out), *overrides]) == 0
    again = json.loads((out / "erase_report.json").read_text())["erased"][0]
    assert not again.get("reused") and [s["id"] for s in again["segments"]] == [2, 3, 4]


def test_single_image_with_classes_and_flag_errors(tmp_path, overrides, capsys):
    img = _photo(64, 80, 150, 2)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(_photo(64, 80, 10, 3)).save(tmp_path / "dark.png")
    assert main(["--image", str(tmp_path / "a.png"), "--classes", "Car", "--out", str(tmp_path / "o"), *overrides]) == 0
    info = json.loads((tmp_path / "o" / "erase.json").read_text())
    assert info["classes"] == ["car"] and [s["id"] for s in info["segments"]] == [4]
    assert np.asarray(Image.open(tmp_path / "o" / "mask.png"))[10, 65] == 255  # the built mask is saved
    capsys.readouterr()
    # Nothing of the class in a single image: the user's to fix (another image or class), so exit 2 in one line.
    assert main(["--image", str(tmp_path / "dark.png"), "--classes", "car", "--out", str(tmp_path / "o2"), *overrides]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("magiceraser erase:")]
    assert len(err) == 1 and "no car found" in err[0] and err[0].endswith("nothing erased"), err
    assert not (tmp_path / "o2").exists()
    for argv, words in [
        (["--classes", "unicorn"], "unknown class"), (["--classes", "sky"], "background"), (["--classes", " , "], "names no class"),
        ([], "either --mask"), (["--classes", "person", "--mask", str(tmp_path / "a.png")], "either --mask"),
        (["--classes", "person", "--", "segmenter=null"], "needs a segmenter"),
    ]:
        flags = argv[: argv.index("--")] if "--" in argv else argv
        extra = argv[argv.index("--") + 1 :] if "--" in argv else []
        keys = {e.split("=")[0] for e in extra}
        kept = [o for o in overrides if o.split("=")[0] not in keys]
        rc = main(["--image", str(tmp_path / "a.png"), "--out", str(tmp_path / "o3"), *flags, *kept, *extra])
        err = capsys.readouterr().err
        assert rc == 2 and words in err, (argv, err)
