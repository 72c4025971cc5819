"""``magiceraser evaluate`` end to end: outputs, numbers checked against scikit-image, resume from cache,
cache keys (a changed size, source, metric or method recomputes instead of reporting stale scores),
config-time refusal of labels sharing a folder, and required vs optional methods.

The methods here are simple array functions standing in for erasers (the real methods are exercised
in test_methods.py); what is under test is the run: letterbox, caching, tables, grids.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from magiceraser.cli import main as cli_main
from magiceraser.evaluation import cache as C
from magiceraser.evaluation import method_run, pair_store, perceptual
from magiceraser.evaluation import run as R

from .olrd_shards import write_shard


def _scene(rng, h, w):
    img = rng.integers(40, 200, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[h // 4 : h // 2, w // 3 : w // 2] = True
    return img, mask


def _write_shards(folder, seed=0, reverse=False):
    rng = np.random.default_rng(seed)
    samples = []
    for i, (h, w) in enumerate([(45, 67), (70, 51), (64, 64)]):
        target, mask = _scene(rng, h, w)
        inp = target.copy()
        inp[mask] = (250, 10, 10)
        samples.append((f"s{i}", inp, mask, target, {"object_class": "cat"}))
    write_shard(folder / "olrd-000000.tar", samples[::-1] if reverse else samples)


@pytest.fixture()
def shards(tmp_path):
    _write_shards(tmp_path)
    return tmp_path


class CountingErasers:
    """Two stand-in methods: fill the mask with the mean outside it, or return the input unchanged."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def __call__(self, cfg, device="cpu", dtype=None, size=512):
        def erase(image, mask, index, key=""):
            self.calls[cfg.name] = self.calls.get(cfg.name, 0) + 1
            out = image.copy()
            if cfg.name == "meanfill":
                out[mask] = image[~mask].mean(axis=0).astype(np.uint8)
            return out, {"tag": "grass"}

        return erase


def _config(tmp_path, shards, **extra):
    cfg = {
        "out_dir": str(tmp_path / "eval"),
        "size": 64,
        "datasets": [{"name": "shards", "kind": "olrd_shards", "path": str(shards / "olrd-*.tar")}],
        "methods": [{"name": "meanfill", "kind": "telea"}, {"name": "identity", "kind": "telea"}],
        "grid_cases": 2,
        **extra,
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_end_to_end_outputs_and_resume(tmp_path, shards, monkeypatch):
    fake = CountingErasers()
    monkeypatch.setattr(method_run, "build_method", fake)
    cfg_path = _config(tmp_path, shards)
    assert R.main(["--config", str(cfg_path)]) == 0
    out = tmp_path / "eval"
    assert fake.calls == {"meanfill": 3, "identity": 3}

    records = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["method"] for r in records} == {"meanfill", "identity"}
    for r in records:  # every stored number against scikit-image on the stored images
        pair = out / "pairs" / "shards" / r["key"]
        target = np.asarray(Image.open(pair / "target.png"))
        mask = np.asarray(Image.open(pair / "mask.png")) > 127
        erased = np.asarray(Image.open(out / "methods" / "shards" / r["method"] / "images" / f"{r['key']}.png"))
        assert target.shape == erased.shape == (64, 64, 3)
        assert r["psnr"] == pytest.approx(peak_signal_noise_ratio(target, erased, data_range=255), abs=1e-9)
        ssim = structural_similarity(target, erased, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255, channel_axis=-1)
        assert r["ssim"] == pytest.approx(ssim, abs=1e-9)
        assert r["psnr_mask"] == pytest.approx(peak_signal_noise_ratio(target[mask], erased[mask], data_range=255), abs=1e-9)
        assert r["tag"] == "grass" and "seconds" in r

    # letterbox: the 45x67 sample is 43x64 content + zero rows at the bottom, in input and target
    s0 = np.asarray(Image.open(out / "pairs" / "shards" / "s0" / "target.png"))
    assert not s0[43:].any() and s0[:43].any()

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == ["meanfill", "identity"]
    mean_psnr = np.mean([r["psnr"] for r in records if r["method"] == "meanfill"])
    assert float(rows[0]["psnr"]) == pytest.approx(mean_psnr, rel=1e-12)
    md = (out / "results.md").read_text()
    assert md.startswith("| Dataset | Method | PSNR↑ | SSIM↑ | LPIPS↓ | FID↓ |") and "| shards | meanfill |" in md
    for name in ("best", "worst"):
        grid = Image.open(out / "grids" / f"shards__meanfill__{name}.png")
        assert grid.size == (3 * 256, 2 * 256)

    # resume: nothing is erased again
    assert R.main(["--config", str(cfg_path)]) == 0
    assert fake.calls == {"meanfill": 3, "identity": 3}
    # a lost metrics file: only that image is redone
    (out / "methods" / "shards" / "identity" / "metrics" / "s1.json").unlink()
    assert R.main(["--config", str(cfg_path)]) == 0
    assert fake.calls == {"meanfill": 3, "identity": 4}
    # a changed method config discards that method's cache only
    assert R.main(["--config", str(cfg_path), "grid_cases=0"]) == 0
    assert fake.calls == {"meanfill": 3, "identity": 4}
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["methods"][1]["telea_radius"] = 7
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert R.main(["--config", str(cfg_path)]) == 0
    assert fake.calls == {"meanfill": 3, "identity": 7}


def test_failures_are_recorded_and_the_run_goes_on(tmp_path, shards, monkeypatch):
    def build(cfg, device="cpu", dtype=None, size=512):
        def erase(image, mask, index, key=""):
            if index == 1:
                raise RuntimeError("out of memory")
            return image, {}

        return erase

    monkeypatch.setattr(method_run, "build_method", build)
    cfg_path = _config(tmp_path, shards, methods=[{"name": "flaky", "kind": "telea"}])
    assert R.main(["--config", str(cfg_path)]) == 0
    out = tmp_path / "eval"
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["key"], s["reason"]) for s in skipped] == [("s1", "method_failed")]
    assert "out of memory" in skipped[0]["detail"]
    assert "| 2 (1 failed) |" in (out / "results.md").read_text()


def test_unavailable_method_is_skipped_with_its_reason(tmp_path, shards, capsys):
    cfg_path = _config(tmp_path, shards, methods=[
        {"name": "lama", "kind": "lama", "lama_path": str(tmp_path / "missing-big-lama.pt"), "optional": True},
    ])
    assert R.main(["--config", str(cfg_path)]) == 1  # nothing could be evaluated
    assert "missing-big-lama.pt" in capsys.readouterr().out


def test_config_errors_name_the_field(tmp_path, shards, capsys):
    cfg_path = _config(tmp_path, shards)
    with pytest.raises(SystemExit):
        R.main(["--config", str(cfg_path), "methods=[{name: x, kind: dalle}]"])
    assert "kind" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        R.main(["--config", str(cfg_path), "size=8"])


def test_lpips_requested_without_weights_fails_before_work(tmp_path, shards, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    cfg_path = _config(tmp_path, shards, metrics={"lpips": True})
    assert R.main(["--config", str(cfg_path)]) == 2
    assert "alexnet-owt-7be5be79.pth" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "pairs").exists()



def _wandb_table(out_dir, key: str) -> dict:
    """The table the real offline W&B client wrote for ``key`` (files/media/table/<key>_*.table.json)."""
    [path] = list(out_dir.glob(f"wandb/offline-run-*/files/media/table/{key}_*.table.json"))
    return json.loads(path.read_text())


def test_wandb_tables(tmp_path, shards, monkeypatch):
    """The real wandb client, offline: the logged tables are read back from the run directory."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(method_run, "build_method", CountingErasers())
    cfg_path = _config(tmp_path, shards, wandb={"enabled": True, "mode": "offline", "project": "t"}, grid_cases=0)
    assert R.main(["--config", str(cfg_path)]) == 0
    out = tmp_path / "eval"
    results = _wandb_table(out, "results")
    assert results["columns"][:7] == ["dataset", "method", "psnr", "psnr_low", "psnr_high", "psnr_n", "ssim"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r[1] for r in results["data"]] == [r["method"] for r in rows]
    for i, name in enumerate(("psnr", "psnr_low", "psnr_high"), start=2):  # the same table as results.csv, bounds too
        assert results["data"][0][i] == pytest.approx(float(rows[0][name]))
    assert results["data"][0][5] == int(rows[0]["psnr_n"]) == 3
    comparisons = _wandb_table(out, "comparisons")
    expected = list(csv.DictReader((out / "comparisons.csv").open()))
    assert [row[:4] for row in comparisons["data"]] == [[r["dataset"], r["method"], r["baseline"], r["metric"]] for r in expected]
    per_image = _wandb_table(out, "per_image")
    assert len(per_image["data"]) == 6 and "psnr" in per_image["columns"]


# ---------------------------------------------------------------- cache keys


def _records(out):
    return [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]


def _assert_scores_match_stored_images(out, size):
    """Every reported PSNR is that of the erased image and target now on disk, at ``size``."""
    for r in _records(out):
        target = np.asarray(Image.open(out / "pairs" / "shards" / r["key"] / "target.png"))
        erased = np.asarray(Image.open(out / "methods" / "shards" / r["method"] / "images" / f"{r['key']}.png"))
        assert target.shape == erased.shape == (size, size, 3)
        assert r["psnr"] == pytest.approx(peak_signal_noise_ratio(target, erased, data_range=255), abs=1e-9)


class SideRecordingInception:
    """Stand-in Inception: features are the mean colour and the side of each image it is given."""

    sides: list[int] = []

    def __init__(self, weights=None, device="cpu"):
        pass

    def __call__(self, images):
        SideRecordingInception.sides += [im.shape[0] for im in images]
        return np.array([[*im.reshape(-1, 3).mean(0), im.shape[0]] for im in images], np.float64)


def test_changed_size_recomputes_cached_scores_and_features(tmp_path, shards, monkeypatch, capsys):
    """Issue 9: ``size=64`` on a 128-px out_dir rebuilt the pairs and reported the 128-px scores."""
    fake = CountingErasers()
    monkeypatch.setattr(method_run, "build_method", fake)
    monkeypatch.setattr(perceptual, "InceptionFeatures", SideRecordingInception)
    monkeypatch.setattr(SideRecordingInception, "sides", [])
    cfg_path = _config(tmp_path, shards, metrics={"fid": True}, grid_cases=0)
    out = tmp_path / "eval"
    assert R.main(["--config", str(cfg_path), "size=128"]) == 0
    assert fake.calls == {"meanfill": 3, "identity": 3} and set(SideRecordingInception.sides) == {128}
    _assert_scores_match_stored_images(out, 128)
    SideRecordingInception.sides.clear()
    capsys.readouterr()

    assert R.main(["--config", str(cfg_path), "size=64"]) == 0
    log = capsys.readouterr().out
    assert fake.calls == {"meanfill": 6, "identity": 6}  # every image erased again at 64 px
    _assert_scores_match_stored_images(out, 64)
    assert set(SideRecordingInception.sides) == {64}  # FID features of the new images, not the cached ones
    assert "size: 128 -> 64" in log
    assert "shards/identity: 3 cached results invalidated (pair content changed: 3" in log

    SideRecordingInception.sides.clear()
    assert R.main(["--config", str(cfg_path), "size=64"]) == 0  # and the new results are a valid cache
    assert fake.calls == {"meanfill": 6, "identity": 6} and SideRecordingInception.sides == []
    assert "invalidated" not in capsys.readouterr().out


def test_replaced_source_files_rebuild_the_pairs(tmp_path, shards, monkeypatch):
    """The pairs are keyed on their source files, not only on the dataset config (same path, new shards)."""
    fake = CountingErasers()
    monkeypatch.setattr(method_run, "build_method", fake)
    cfg_path = _config(tmp_path, shards, grid_cases=0)
    out = tmp_path / "eval"
    assert R.main(["--config", str(cfg_path)]) == 0
    before = (out / "pairs" / "shards" / "s0" / "target.png").read_bytes()
    _write_shards(shards, seed=1)  # regenerated into the same folder
    assert R.main(["--config", str(cfg_path)]) == 0
    assert (out / "pairs" / "shards" / "s0" / "target.png").read_bytes() != before
    assert fake.calls == {"meanfill": 6, "identity": 6}
    _assert_scores_match_stored_images(out, 64)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not an Exception, so no handler catches it)."""


def test_rebuild_killed_half_way_does_not_vouch_for_mixed_pairs(tmp_path, shards, monkeypatch):
    fake = CountingErasers()
    monkeypatch.setattr(method_run, "build_method", fake)
    cfg_path = _config(tmp_path, shards, grid_cases=0)
    out = tmp_path / "eval"
    assert R.main(["--config", str(cfg_path), "size=128"]) == 0
    real_letterbox = pair_store.letterbox_mask
    built = []

    def dies_on_the_second_pair(mask, size):
        if built:
            raise Killed
        built.append(size)
        return real_letterbox(mask, size)

    monkeypatch.setattr(pair_store, "letterbox_mask", dies_on_the_second_pair)
    with pytest.raises(Killed):  # the 64-px rebuild dies after rewriting s0
        R.main(["--config", str(cfg_path), "size=64"])
    monkeypatch.setattr(pair_store, "letterbox_mask", real_letterbox)
    assert R.main(["--config", str(cfg_path), "size=128"]) == 0  # back to the first config
    sides = {np.asarray(Image.open(p)).shape[0] for p in (out / "pairs" / "shards").glob("*/target.png")}
    assert sides == {128}
    _assert_scores_match_stored_images(out, 128)
    assert fake.calls == {"meanfill": 3, "identity": 3}  # same pixels again: the cached scores stand


def test_changed_metric_settings_rescore_without_erasing(tmp_path, shards, monkeypatch, capsys):
    fake = CountingErasers()
    monkeypatch.setattr(method_run, "build_method", fake)
    cfg_path = _config(tmp_path, shards, grid_cases=0)
    out = tmp_path / "eval"
    assert R.main(["--config", str(cfg_path)]) == 0
    path = out / "methods" / "shards" / "identity" / "metrics" / "s1.json"
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "psnr": 999.0}))  # what an older metric implementation might have said
    monkeypatch.setattr(C, "SCORE_VERSION", C.SCORE_VERSION + 1)
    capsys.readouterr()
    assert R.main(["--config", str(cfg_path)]) == 0
    assert fake.calls == {"meanfill": 3, "identity": 3}  # scored again from the cached images
    assert "metric settings changed: 3" in capsys.readouterr().out
    assert all(r["psnr"] < 200 for r in _records(out))
    _assert_scores_match_stored_images(out, 64)


def test_reordered_pairs_erase_again_only_where_the_noise_seed_moved(tmp_path, shards, monkeypatch):
    """Diffusion methods draw their noise from seed + the pair's position; classical ones do not."""
    fake = CountingErasers()
    monkeypatch.setattr(method_run, "build_method", fake)
    methods = [{"name": "meanfill", "kind": "telea"}, {"name": "identity", "kind": "sd"}]
    cfg_path = _config(tmp_path, shards, methods=methods, grid_cases=0)
    assert R.main(["--config", str(cfg_path)]) == 0
    _write_shards(shards, reverse=True)  # same pairs, s0 and s2 swap places
    assert R.main(["--config", str(cfg_path)]) == 0
    assert fake.calls == {"meanfill": 3, "identity": 3 + 2}


def test_edited_prompts_file_erases_again(tmp_path, shards, monkeypatch):
    """The per-image prompts are part of the method: editing the file must not keep the old images."""
    fake = CountingErasers()
    monkeypatch.setattr(method_run, "build_method", fake)
    prompts = tmp_path / "captions.json"
    prompts.write_text(json.dumps({"s0": "a lawn"}))
    methods = [{"name": "identity", "kind": "sd", "prompts": str(prompts)}]
    cfg_path = _config(tmp_path, shards, methods=methods, grid_cases=0)
    assert R.main(["--config", str(cfg_path)]) == 0
    assert R.main(["--config", str(cfg_path)]) == 0
    assert fake.calls == {"identity": 3}
    prompts.write_text(json.dumps({"s0": "a lawn at dusk"}))
    assert R.main(["--config", str(cfg_path)]) == 0
    assert fake.calls == {"identity": 6}


# ---------------------------------------------------------------- labels sharing a folder


@pytest.mark.parametrize("field,names", [
    ("methods", ["T.1", "T_1"]),
    ("methods", ["SD 1.5", "SD_1.5"]),
    ("methods", ["Telea", "telea"]),  # one folder on case-insensitive file systems
    ("datasets", ["Open Images", "Open_Images"]),
])
def test_labels_sharing_a_folder_are_refused_at_load(tmp_path, shards, capsys, field, names):
    """Issue 9: two labels on one folder each discarded the other's cache and mixed the grids."""
    if field == "methods":
        extra = {"methods": [{"name": n, "kind": "telea"} for n in names]}
    else:
        extra = {"datasets": [{"name": n, "kind": "olrd_shards", "path": str(shards)} for n in names]}
    cfg_path = _config(tmp_path, shards, **extra)
    with pytest.raises(SystemExit) as exc:
        cli_main(["evaluate", "--config", str(cfg_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"{field}:" in err and all(repr(n) in err for n in names) and "rename" in err
    assert not (tmp_path / "eval").exists()  # refused before any work


# ---------------------------------------------------------------- required vs optional methods


@pytest.mark.parametrize("optional,code", [(False, 2), (True, 0)])
def test_a_missing_method_fails_the_run_unless_optional(tmp_path, shards, monkeypatch, capsys, optional, code):
    """Issue 9: a method skipped for missing weights left a table without its row and exit 0."""
    real_build, fake = method_run.build_method, CountingErasers()
    monkeypatch.setattr(method_run, "build_method", lambda cfg, **kw: real_build(cfg, **kw) if cfg.kind == "lama" else fake(cfg, **kw))
    cfg_path = _config(tmp_path, shards, grid_cases=0, methods=[
        {"name": "meanfill", "kind": "telea"},
        {"name": "LaMa", "kind": "lama", "lama_path": str(tmp_path / "missing-big-lama.pt"),
         **({"optional": True} if optional else {})},  # required is the default
    ])
    assert cli_main(["evaluate", "--config", str(cfg_path)]) == code
    rows = list(csv.DictReader((tmp_path / "eval" / "results.csv").open()))
    assert [r["method"] for r in rows] == ["meanfill"]  # the other methods still ran
    err = capsys.readouterr().err.strip()
    if optional:
        assert err == ""
    else:
        assert "\n" not in err and "'LaMa'" in err and "missing-big-lama.pt" in err and "optional: true" in err



def test_fid_without_torch_fidelity_says_how_to_install_it(tmp_path, shards, monkeypatch, capsys):
    """torch-fidelity is not in the eval extra (it declares torchvision): a user with only that extra
    gets one line with the --no-deps install, never torchmetrics' `pip install torch-fidelity`."""
    import importlib.util
    import sys

    monkeypatch.delitem(sys.modules, "torch_fidelity", raising=False)  # earlier tests may have imported it
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "torch_fidelity" else real_find_spec(name, *a, **k))
    cfg_path = _config(tmp_path, shards, metrics={"fid": True})
    assert R.main(["--config", str(cfg_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps 'torch-fidelity>=0.3,<0.5'" in err[0] and "metrics.fid=false" in err[0]
    assert not (tmp_path / "eval" / "pairs").exists()


def test_a_second_evaluation_into_a_busy_out_dir_is_one_line(tmp_path, capsys):
    """One evaluation per out_dir: a live one (this process, here) holds it; the second is refused at once."""
    from magiceraser.lock import OutputLock

    out = tmp_path / "eval"
    out.mkdir()
    with OutputLock(out):
        rc = cli_main(["evaluate", f"out_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{out} is in use by another job" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == []  # not even config.yaml


def test_a_run_retrained_into_the_same_folder_erases_again(tmp_path):
    """Erased images are keyed on the export's content (its recorded file digests), not on the folder's name."""
    from magiceraser.evaluation.methods import MethodConfig

    export = tmp_path / "run"
    export.mkdir()
    mcfg = MethodConfig(name="me", kind="magiceraser", trained_dir=str(export), content_init="telea", refocus=False)
    assert C.method_deps(mcfg, 64, "", "cpu")["trained_files"] is None  # not an export (yet): the method says why
    (export / "magiceraser.json").write_text(json.dumps({"files": {"a.safetensors": "1" * 64}}))
    first = C.digest(C.method_deps(mcfg, 64, "", "cpu"))
    assert C.digest(C.method_deps(mcfg, 64, "", "cpu")) == first  # unchanged export: cached images stay valid
    (export / "magiceraser.json").write_text(json.dumps({"files": {"a.safetensors": "2" * 64}}))
    assert C.digest(C.method_deps(mcfg, 64, "", "cpu")) != first  # retrained in place: erased again
