"""Issue 10, eraser part: no silent loss at the edges of ``magiceraser erase``.

Every test runs the real entry point (``magiceraser.cli.main(["erase", ...])``) on tiny random
models at 64 px with 2 steps, and asserts on effects (exit codes, files on disk, the report) by
wide margins. Each one failed on the code before the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magiceraser.cli import main as magiceraser_main


@pytest.fixture
def overrides(tiny_sd):
    return [f"base_model={tiny_sd}", "model_size=64", "num_inference_steps=2", "device=cpu"]


def _img(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : h // 2, w // 4 : w // 2] = 255
    return m


def _save(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def _dataset(root: Path, stems=("a", "b", "c"), size=(64, 64)) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    for i, s in enumerate(stems):
        _save(images / f"{s}.png", _img(*size, i))
        _save(masks / f"{s}.png", _mask(*size))
    return images, masks


def _snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for d in folders for p in sorted(d.rglob("*")) if p.is_file()}


def erase(args, overrides, capsys) -> tuple[int, str]:
    """Run ``magiceraser erase`` and return (exit code, stderr)."""
    try:
        rc = magiceraser_main(["erase", *map(str, args), *overrides])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped magiceraser erase")
    return rc, capsys.readouterr().err


def _report(out: Path) -> dict:
    return json.loads((out / "erase_report.json").read_text())


def _user_error_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("magiceraser")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], err


@pytest.fixture
def no_models(monkeypatch):
    """Count model loads; a test asserts none happened (checks come before any work) after checking the effect."""
    import magiceraser.pipelines.erase.build as build

    loads: list[int] = []
    real = build.eraser_from_config

    def counting(cfg, segmenter=None):
        loads.append(1)
        return real(cfg, segmenter)

    monkeypatch.setattr(build, "eraser_from_config", counting)
    return loads


class Calls:
    """Wrap ``erase_one``: count calls and run ``action(n)`` before the n-th one (1-based)."""

    def __init__(self, monkeypatch, action=None):
        import magiceraser.pipelines.erase.items as items

        self.n, self.action, self.real = 0, action, items.erase_one
        monkeypatch.setattr(items, "erase_one", self)

    def __call__(self, *args, **kwargs):
        self.n += 1
        if self.action is not None:
            self.action(self.n)
        return self.real(*args, **kwargs)


# ------------------------------------------------------------------------------ outputs over inputs
@pytest.mark.parametrize("where", ["images", "masks", "images/erased"])
def test_batch_out_equal_to_or_inside_an_input_folder_is_refused(tmp_path, overrides, capsys, no_models, where):
    images, masks = _dataset(tmp_path)
    before = _snapshot(images, masks)
    rc, err = erase(["--image", images, "--mask", masks, "--out", tmp_path / where], overrides, capsys)
    assert rc == 2
    _user_error_line(err, "--out", str(tmp_path / where))
    assert _snapshot(images, masks) == before
    assert not no_models, "models were loaded before the user error was found"

@pytest.mark.parametrize("which", ["image", "mask"])
def test_single_out_equal_to_an_input_file_is_refused(tmp_path, overrides, capsys, no_models, which):
    image, mask = _save(tmp_path / "image.png", _img(64, 64, 0)), _save(tmp_path / "mask.png", _mask(64, 64))
    before = _snapshot(tmp_path)
    target = image if which == "image" else mask
    rc, err = erase(["--image", image, "--mask", mask, "--out", target], overrides, capsys)
    assert rc == 2
    _user_error_line(err, "would overwrite", target.name)
    assert _snapshot(tmp_path) == before
    assert not no_models, "models were loaded before the user error was found"

@pytest.mark.parametrize("mode", ["batch", "single-dir", "single-file"])
def test_out_under_an_existing_file_is_one_line_not_a_traceback(tmp_path, overrides, capsys, no_models, mode):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    if mode == "batch":
        images, masks = _dataset(tmp_path)
    else:
        images, masks = _save(tmp_path / "image.png", _img(64, 64, 0)), _save(tmp_path / "mask.png", _mask(64, 64))
    out = tmp_path / "notes.txt" / ("res.png" if mode == "single-file" else "out")
    rc, err = erase(["--image", images, "--mask", masks, "--out", out], overrides, capsys)
    assert rc == 2
    _user_error_line(err, "notes.txt")
    assert not no_models, "models were loaded before the user error was found"

# ------------------------------------------------------------------------------ stems
@pytest.mark.parametrize("folder", ["images", "masks"])
def test_stem_collisions_are_refused_before_any_work(tmp_path, overrides, capsys, no_models, folder):
    images, masks = _dataset(tmp_path, stems=("a", "b"))
    extra = (images if folder == "images" else masks) / "a.jpg"
    _save(extra, _img(64, 64, 9) if folder == "images" else _mask(64, 64))
    rc, err = erase(["--image", images, "--mask", masks, "--out", tmp_path / "out"], overrides, capsys)
    assert rc == 2
    _user_error_line(err, "a.png", "a.jpg")
    assert not (tmp_path / "out").exists()
    assert not no_models, "models were loaded before the user error was found"

def test_orphan_masks_are_reported(tmp_path, overrides, capsys):
    images, masks = _dataset(tmp_path, stems=("a",))
    _save(masks / "ghost.png", _mask(64, 64))
    rc, err = erase(["--image", images, "--mask", masks, "--out", tmp_path / "out"], overrides, capsys)
    assert rc == 0
    orphans = _report(tmp_path / "out")["orphan_masks"]
    assert [Path(o["mask"]).name for o in orphans] == ["ghost.png"] and orphans[0]["reason"] == "no_image"
    assert "ghost.png" in err


# ------------------------------------------------------------------------------ failures and interruptions
def test_an_exception_in_one_item_is_recorded_and_the_batch_goes_on(tmp_path, overrides, capsys, monkeypatch):
    def oom_on_second(n):
        if n == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    calls = Calls(monkeypatch, oom_on_second)
    images, masks = _dataset(tmp_path)
    rc, _ = erase(["--image", images, "--mask", masks, "--out", tmp_path / "out"], overrides, capsys)
    assert rc == 1 and calls.n == 3
    report = _report(tmp_path / "out")
    assert sorted(Path(r["image"]).name for r in report["erased"]) == ["a.png", "c.png"]
    (failed,) = report["skipped"]
    assert Path(failed["image"]).name == "b.png" and failed["reason"] == "error"
    assert failed["error_type"] == "RuntimeError" and "out of memory" in failed["message"]
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "c.png").is_file()


def test_ctrl_c_marks_the_rest_interrupted_and_a_rerun_finishes(tmp_path, overrides, capsys, monkeypatch):
    def interrupt_second(n):
        if n == 2:
            raise KeyboardInterrupt

    images, masks = _dataset(tmp_path)
    out = tmp_path / "out"
    Calls(monkeypatch, interrupt_second)
    rc, _ = erase(["--image", images, "--mask", masks, "--out", out], overrides, capsys)
    assert rc == 130
    report = _report(out)
    assert report["status"] == "interrupted"
    assert [Path(r["image"]).name for r in report["erased"]] == ["a.png"]
    assert [(Path(r["image"]).name, r["reason"]) for r in report["not_done"]] == [("b.png", "interrupted"), ("c.png", "interrupted")]
    calls = Calls(monkeypatch)
    rc, _ = erase(["--image", images, "--mask", masks, "--out", out], overrides, capsys)
    assert rc == 0 and calls.n == 2  # a.png is reused
    report = _report(out)
    assert report["status"] == "complete" and len(report["erased"]) == 3 and not report["not_done"]


class Terminated(Exception):
    """Raised by this test's own SIGTERM handler, should the command not install one (the test then fails cleanly)."""


def test_sigterm_is_handled_like_ctrl_c(tmp_path, overrides, capsys, monkeypatch):
    import os
    import signal

    def own_handler(signum, frame):
        raise Terminated

    def terminate_second(n):
        if n == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, own_handler)
    try:
        images, masks = _dataset(tmp_path, stems=("a", "b"))
        Calls(monkeypatch, terminate_second)
        rc, _ = erase(["--image", images, "--mask", masks, "--out", tmp_path / "out"], overrides, capsys)
    finally:
        assert signal.signal(signal.SIGTERM, previous) is own_handler  # the command restored it
    assert rc == 130
    report = _report(tmp_path / "out")
    assert report["status"] == "interrupted" and [r["reason"] for r in report["not_done"]] == ["interrupted"]


class HardKill(BaseException):
    """Stands in for SIGKILL: nothing after it runs (no except/finally of the command catches it)."""


def test_a_killed_run_leaves_a_valid_report_and_a_rerun_completes_it(tmp_path, overrides, capsys, monkeypatch):
    def kill_second(n):
        if n == 2:
            raise HardKill

    images, masks = _dataset(tmp_path)
    out = tmp_path / "out"
    Calls(monkeypatch, kill_second)
    with pytest.raises(HardKill):
        magiceraser_main(["erase", "--image", str(images), "--mask", str(masks), "--out", str(out), *overrides])
    report = _report(out)  # valid JSON, written before the kill
    assert [Path(r["image"]).name for r in report["erased"]] == ["a.png"]
    assert sorted(Path(r["image"]).name for r in report["not_done"]) == ["b.png", "c.png"]
    calls = Calls(monkeypatch)
    rc, _ = erase(["--image", images, "--mask", masks, "--out", out], overrides, capsys)
    assert rc == 0 and calls.n == 2
    report = _report(out)
    assert report["status"] == "complete" and sorted(Path(r["image"]).name for r in report["erased"]) == ["a.png", "b.png", "c.png"]


def test_copies_of_one_image_are_each_reused_by_a_rerun_also_after_a_kill(tmp_path, overrides, capsys, monkeypatch):
    """Six identical copies: records were keyed by content alone, so a rerun reused 1 and erased 5 again
    (after a kill part way too). Keyed by path and content, a rerun reuses all six, and after a kill
    erases exactly the copies not done."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    img, m = _img(64, 64, 3), _mask(64, 64)
    for i in range(6):
        _save(images / f"copy{i}.png", img)
        _save(masks / f"copy{i}.png", m)
    out = tmp_path / "out"
    args = ["--image", images, "--mask", masks, "--out", out]
    assert erase(args, overrides, capsys)[0] == 0
    calls = Calls(monkeypatch)
    rc, _ = erase(args, overrides, capsys)
    assert rc == 0 and calls.n == 0 and _report(out)["counts"]["reused"] == 6  # was 1: five erased again
    (tmp_path / "same-folder").symlink_to(images)  # the same folder under another spelling: still reused
    calls = Calls(monkeypatch)
    rc, _ = erase(["--image", tmp_path / "same-folder", "--mask", masks, "--out", out], overrides, capsys)
    assert rc == 0 and calls.n == 0 and _report(out)["counts"]["reused"] == 6

    def kill_fourth(n):
        if n == 4:
            raise HardKill

    out2 = tmp_path / "out2"
    Calls(monkeypatch, kill_fourth)
    with pytest.raises(HardKill):
        magiceraser_main(["erase", "--image", str(images), "--mask", str(masks), "--out", str(out2), *overrides])
    assert len(_report(out2)["erased"]) == 3
    calls = Calls(monkeypatch)
    rc, _ = erase(["--image", images, "--mask", masks, "--out", out2], overrides, capsys)
    assert rc == 0 and calls.n == 3 and _report(out2)["counts"]["reused"] == 3


def test_rerun_skips_by_content_not_by_name(tmp_path, overrides, capsys, monkeypatch):
    images, masks = _dataset(tmp_path)
    out = tmp_path / "out"
    args = ["--image", images, "--mask", masks, "--out", out]
    assert erase(args, overrides, capsys)[0] == 0
    calls = Calls(monkeypatch)
    assert erase(args, overrides, capsys)[0] == 0
    assert calls.n == 0  # same inputs, same config: nothing erased again
    assert len(_report(out)["erased"]) == 3
    m = _mask(64, 64)
    m[50:60, 50:60] = 255
    _save(masks / "b.png", m)  # same name, new content
    calls = Calls(monkeypatch)
    assert erase(args, overrides, capsys)[0] == 0
    assert calls.n == 1
    calls = Calls(monkeypatch)
    assert erase(args, [*overrides, "seed=7"], capsys)[0] == 0
    assert calls.n == 3  # a changed config erases everything again
    (out / "c.png").unlink()
    calls = Calls(monkeypatch)
    assert erase(args, [*overrides, "seed=7"], capsys)[0] == 0
    assert calls.n == 1 and (out / "c.png").is_file()


# ------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("name, fmt", [("res.webp", "WEBP"), ("res.tif", "TIFF"), ("res.tiff", "TIFF"), ("res.jpeg", "JPEG"), ("res.png", "PNG")])
def test_single_output_format_follows_the_extension(tmp_path, overrides, capsys, name, fmt):
    image, mask = _save(tmp_path / "image.png", _img(64, 64, 0)), _save(tmp_path / "mask.png", _mask(64, 64))
    rc, _ = erase(["--image", image, "--mask", mask, "--out", tmp_path / name], overrides, capsys)
    assert rc == 0
    with Image.open(tmp_path / name) as im:
        assert im.format == fmt and im.size == (64, 64)


def test_batch_output_format_and_unknown_extensions(tmp_path, overrides, capsys, monkeypatch):
    images, masks = _dataset(tmp_path, stems=("a",))
    rc, _ = erase(["--image", images, "--mask", masks, "--out", tmp_path / "out", "output_format=webp"], overrides, capsys)
    assert rc == 0
    with Image.open(tmp_path / "out" / "a.webp") as im:
        assert im.format == "WEBP"
    import magiceraser.pipelines.erase.build as build

    monkeypatch.setattr(build, "eraser_from_config", lambda cfg: pytest.fail("models loaded for an unknown format"))
    rc, err = erase(["--image", images / "a.png", "--mask", masks / "a.png", "--out", tmp_path / "res.gif"], overrides, capsys)
    assert rc == 2 and ".gif" in err and not (tmp_path / "res.gif").exists()
    with pytest.raises(SystemExit) as exc:
        magiceraser_main(["erase", "--image", str(images), "--mask", str(masks), "--out", str(tmp_path / "o2"), *overrides, "output_format=gif"])
    assert exc.value.code == 2 and "output_format" in capsys.readouterr().err


# ------------------------------------------------------------------------------ masks
def _count_crops(monkeypatch) -> list[int]:
    from magiceraser.pipelines.erase.pipeline import MagicEraserPipeline

    seen: list[int] = []
    real = MagicEraserPipeline._denoise_batch

    def counting(self, crops, *args, **kwargs):
        seen.extend([1] * len(crops))  # one diffusion run per crop, batched or not
        return real(self, crops, *args, **kwargs)

    monkeypatch.setattr(MagicEraserPipeline, "_denoise_batch", counting)
    return seen


def test_specks_are_dropped_and_counted(tmp_path, overrides, capsys, monkeypatch):
    h = w = 128
    mask = np.zeros((h, w), np.uint8)
    mask[8:24, 8:24] = 255  # the object: 256 px
    specks = [(y, x) for y in range(40, 124, 8) for x in range(4, 124, 8)]  # 1-px specks far from it
    for y, x in specks:
        mask[y, x] = 255
    image, mpath = _save(tmp_path / "image.png", _img(h, w, 0)), _save(tmp_path / "mask.png", mask)
    crops = _count_crops(monkeypatch)
    rc, err = erase(["--image", image, "--mask", mpath, "--out", tmp_path / "out", "mask_dilation=0", "crop_margin=0"], overrides, capsys)
    assert rc == 0
    assert len(crops) <= 8, f"{len(crops)} diffusion runs for one object and {len(specks)} specks"
    info = json.loads((tmp_path / "out" / "erase.json").read_text())
    assert info["dropped_regions"] == len(specks) and info["dropped_pixels"] == len(specks)
    assert "min_region_area" in err


def test_crops_per_image_are_capped_and_every_region_is_still_erased(tmp_path, overrides, capsys, monkeypatch):
    h = w = 128
    mask = np.zeros((h, w), bool)
    blobs = [(y, x) for y in range(6, 120, 24) for x in range(6, 120, 30)]  # 20 blobs of 6x6 = 36 px
    for y, x in blobs:
        mask[y : y + 6, x : x + 6] = True
    img = _img(h, w, 1)
    image, mpath = _save(tmp_path / "image.png", img), _save(tmp_path / "mask.png", mask.astype(np.uint8) * 255)
    crops = _count_crops(monkeypatch)
    out = tmp_path / "res.png"
    rc, _ = erase(["--image", image, "--mask", mpath, "--out", out, "mask_dilation=0", "crop_margin=0"], overrides, capsys)
    assert rc == 0
    assert len(crops) <= 8, f"{len(crops)} diffusion runs for {len(blobs)} regions (max_regions defaults to 8)"
    res = np.asarray(Image.open(out))
    np.testing.assert_array_equal(res[~mask], img[~mask])  # outside the (undilated) mask: untouched
    for y, x in blobs:  # inside every blob: regenerated
        diff = np.abs(res[y : y + 6, x : x + 6].astype(int) - img[y : y + 6, x : x + 6].astype(int)).mean()
        assert diff > 10, (y, x, diff)


def test_an_undecodable_mask_is_named_without_buffer_reprs(tmp_path, overrides, capsys):
    images, masks = _dataset(tmp_path, stems=("a", "b"))
    (masks / "b.png").write_bytes(b"definitely not a png" * 20)
    rc, _ = erase(["--image", images, "--mask", masks, "--out", tmp_path / "out"], overrides, capsys)
    assert rc == 0
    (skip,) = _report(tmp_path / "out")["skipped"]
    assert skip["reason"] == "mask_not_an_image"
    assert "b.png" in skip["message"] and "BytesIO" not in skip["message"] and "0x" not in skip["message"]


# ------------------------------------------------------------------------------ models and inputs
def test_missing_model_folders_are_named_before_loading(tmp_path, overrides, capsys, no_models):
    image, mask = _save(tmp_path / "image.png", _img(64, 64, 0)), _save(tmp_path / "mask.png", _mask(64, 64))
    args = ["--image", image, "--mask", mask, "--out", tmp_path / "out"]
    rest = [o for o in overrides if not o.startswith("base_model=")]
    rc, err = erase(args, [*rest, f"base_model={tmp_path}/models/sd-inpaint"], capsys)
    assert rc == 2
    _user_error_line(err, "base_model", "sd-inpaint")
    rc, err = erase(args, [*overrides, f"trained_dir={tmp_path}/runs/train"], capsys)
    assert rc == 2
    _user_error_line(err, "trained_dir")
    assert not (tmp_path / "out").exists()
    assert not no_models, "models were loaded before the user error was found"

def test_single_image_with_an_empty_mask_is_a_user_error(tmp_path, overrides, capsys):
    image, mask = _save(tmp_path / "image.png", _img(64, 64, 0)), _save(tmp_path / "mask.png", np.zeros((64, 64), np.uint8))
    rc, err = erase(["--image", image, "--mask", mask, "--out", tmp_path / "out"], overrides, capsys)
    assert rc == 2
    _user_error_line(err, "empty")
