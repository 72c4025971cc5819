"""User mistakes in an OLRD job are one line with exit code 2, found before Ray starts and before
anything is written (they were tracebacks, or an ActorDiedError after job.json was written).

Every test runs the real ``main`` of ``magiceraser olrd``; Ray is replaced by a stand-in that
fails the test if the driver ever gets that far.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest

from magiceraser.datasets import olrd_job, preflight, ray_pipeline

N_INPUTS = 3


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A valid job (images never decoded, matching annotations) and a runner of ``main`` with overrides."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(N_INPUTS):
        (images / f"img{i}.png").write_bytes(b"never decoded in these tests")
    (tmp_path / "panoptic").mkdir()
    _write_annotations(tmp_path / "panoptic.json", [f"img{i}.png" for i in range(N_INPUTS)])
    config = tmp_path / "olrd.yaml"
    config.write_text(json.dumps({
        "input": str(images), "output": str(tmp_path / "out"), "samples_per_shard": 2,
        "segmenter": {"backend": "coco_panoptic", "annotations": str(tmp_path / "panoptic.json")},
        "captioner": {"backend": "transformers", "model": "unused"},
    }))

    def ray_must_not_start(cfg):
        raise AssertionError("Ray was started: the mistake was not caught before it")

    monkeypatch.setattr(ray_pipeline, "init_ray", ray_must_not_start)
    monkeypatch.setattr(ray_pipeline, "build_dataset", ray_must_not_start)

    def run(*overrides: str) -> int:
        return olrd_job.main(["--config", str(config), *overrides])

    return tmp_path, run


def _write_annotations(path: Path, names: list[str]) -> None:
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
        "annotations": [{"image_id": i, "file_name": f"{i}.png", "segments_info": []} for i in range(len(names))],
    }))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("magiceraser olrd: "), err
    return err[0]


def _ray_never_started() -> bool:
    import ray

    return not ray.is_initialized()


def test_missing_input_is_one_line(job, capsys):
    root, run = job
    assert run(f"input={root / 'nope'}") == 2
    assert "input=" in (line := _one_line(capsys)) and "does not exist" in line
    assert _ray_never_started() and not (root / "out").exists()


def test_input_that_is_not_a_list_is_one_line(job, capsys):
    root, run = job
    assert run(f"input={root / 'images' / 'img0.png'}") == 2
    assert "is a file but not a list file" in _one_line(capsys)
    assert _ray_never_started() and not (root / "out").exists()


def test_list_naming_one_image_twice_is_refused(job, capsys):
    root, run = job
    lst = root / "images" / "list.txt"
    lst.write_text("img0.png 0\n./img1.png 1\nimg1.png 1\n")
    assert run(f"input={lst}") == 2
    assert "line 3 repeats line 2 (img1.png)" in _one_line(capsys)
    assert not (root / "out").exists()


def test_missing_input_root_is_one_line(job, capsys):
    root, run = job
    lst = root / "list.txt"
    lst.write_text("img0.png\n")
    assert run(f"input={lst}", f"input_root={root / 'data_256'}") == 2
    assert "input_root=" in _one_line(capsys)
    assert not (root / "out").exists()


@pytest.mark.parametrize("where", ["equal", "inside"])
def test_output_in_the_input_folder_is_refused(job, capsys, where):
    root, run = job
    out = root / "images" if where == "equal" else root / "images" / "olrd"
    assert run(f"output={out}") == 2
    assert f"output={str(out)!r} is" in (line := _one_line(capsys)) and "input folder" in line
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"img{i}.png" for i in range(N_INPUTS)]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_output_is_one_line_naming_it(job, capsys, monkeypatch, code):
    """A read-only mount (EROFS) or a folder of someone else (EACCES), as the OS reports them.

    The OS error is injected where the output is first written (root ignores permission bits,
    and a read-only mount cannot be made in a test); everything above it is the real code.
    """
    root, run = job
    out = root / "ro" / "out"
    real_mkdir, real_mkstemp = os.mkdir, tempfile.mkstemp

    def mkdir(path, *args, **kwargs):
        if Path(path) in (out, out.parent) and code == errno.EROFS:
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise PermissionError(code, os.strerror(code), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    def link(src, dst, *args, **kwargs):  # the lock's first write, were the output not probed
        if Path(dst).parent == out:
            raise PermissionError(code, os.strerror(code), str(dst))
        return real_link(src, dst, *args, **kwargs)

    real_link = os.link
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "link", link)
    assert run(f"output={out}") == 2
    line = _one_line(capsys)
    assert f"output={str(out)!r} is not writable ({os.strerror(code)})" in line, line
    assert _ray_never_started() and not (out / "job.json").exists()


def test_output_that_is_a_file_is_one_line(job, capsys):
    root, run = job
    (root / "out").write_text("not a folder")
    assert run() == 2
    assert "is a file" in _one_line(capsys)


def test_missing_annotations_are_found_before_ray(job, capsys):
    root, run = job
    assert run(f"segmenter.annotations={root / 'missing.json'}") == 2
    assert "segmenter.annotations=" in (line := _one_line(capsys)) and "does not exist" in line
    assert _ray_never_started() and not (root / "out").exists()  # no job.json, no lock, no folder


def test_annotations_that_do_not_parse_are_one_line(job, capsys):
    root, run = job
    (root / "bad.json").write_text("{not json")
    assert run(f"segmenter.annotations={root / 'bad.json'}") == 2
    assert "is not a usable COCO panoptic JSON" in _one_line(capsys)
    (root / "bad.json").write_text(json.dumps({"annotations": [{"file_name": "x.png"}]}))
    assert run(f"segmenter.annotations={root / 'bad.json'}") == 2
    assert "missing key 'image_id'" in _one_line(capsys)
    assert not (root / "out").exists()


def test_missing_png_folder_is_one_line(job, capsys):
    root, run = job
    assert run(f"segmenter.png_dir={root / 'pngs'}") == 2
    assert "segmenter.png_dir=" in _one_line(capsys)
    (root / "panoptic").rmdir()
    assert run() == 2
    assert f"the PNG folder next to the JSON ({root / 'panoptic'}) does not exist" in _one_line(capsys)
    assert not (root / "out").exists()


def test_ambiguous_annotations_are_refused_naming_the_collision(job, capsys):
    root, run = job
    images = root / "images"
    for folder in ("airfield", "beach"):
        (images / folder).mkdir()
        (images / folder / "00000001.jpg").write_bytes(b"x")
    _write_annotations(root / "panoptic.json", [f"img{i}.png" for i in range(N_INPUTS)] + ["00000001.jpg"])
    assert run() == 2
    line = _one_line(capsys)
    assert "00000001.jpg is claimed by 2 inputs" in line and "airfield/00000001.jpg" in line and "beach/00000001.jpg" in line
    assert not (root / "out").exists()


def test_annotations_of_other_images_are_refused(job, capsys):
    root, run = job
    _write_annotations(root / "panoptic.json", ["other.jpg"])
    assert run() == 2
    assert "none of the 3 inputs has an entry in segmenter.annotations" in _one_line(capsys)


def test_missing_local_model_folders_are_one_line(job, capsys, tmp_path):
    root, run = job
    assert run(f"captioner.model={root / 'models' / 'llava'}") == 2
    assert "captioner.model=" in (line := _one_line(capsys)) and "does not exist" in line
    (root / "models" / "m2f").mkdir(parents=True)
    assert run("segmenter.backend=mask2former", f"segmenter.model={root / 'models' / 'm2f'}") == 2
    assert "segmenter.model=" in (line := _one_line(capsys)) and "no config.json" in line
    assert not (root / "out").exists()


def test_a_valid_job_passes_preflight_and_hugging_face_ids_are_not_paths(job):
    from magiceraser.config import load_config
    from magiceraser.datasets.config import OLRDConfig

    root, _ = job
    cfg = load_config(OLRDConfig, root / "olrd.yaml", ["segmenter.backend=mask2former",
                                                       "segmenter.model=facebook/mask2former-swin-large-coco-panoptic"])
    assert len(preflight.preflight(cfg)) == N_INPUTS and not (root / "out").exists()
    from magiceraser.models.hub import is_hub_id

    assert is_hub_id("llava-hf/llava-1.5-7b-hf") and not is_hub_id("demo/models/llava")
    for local in ("/abs/llava", "~/models/llava", "./llava", "../llava", "org\\name", ".hidden", "name/", "a/b/c", "x--y"):
        assert not is_hub_id(local), local
