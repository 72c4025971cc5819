"""``magiceraser evaluate`` end to end: outputs, numbers checked against scikit-image, resume from cache.

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

from magiceraser.evaluation import run as R

from .test_datasets import write_shard


def _scene(rng, h, w):
    img = rng.integers(40, 200, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[h // 4 : h // 2, w // 3 : w // 2] = True
    return img, mask


@pytest.fixture()
def shards(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for i, (h, w) in enumerate([(45, 67), (70, 51), (64, 64)]):
        target, mask = _scene(rng, h, w)
        inp = target.copy()
        inp[mask] = (250, 10, 10)
        samples.append((f"s{i}", inp, mask, target, {"object_class": "cat"}))
    write_shard(tmp_path / "olrd-000000.tar", samples)
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
    monkeypatch.setattr(R, "build_method", fake)
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

    monkeypatch.setattr(R, "build_method", build)
    cfg_path = _config(tmp_path, shards, methods=[{"name": "flaky", "kind": "telea"}])
    assert R.main(["--config", str(cfg_path)]) == 0
    out = tmp_path / "eval"
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["key"], s["reason"]) for s in skipped] == [("s1", "method_failed")]
    assert "out of memory" in skipped[0]["detail"]
    assert "| 2 (1 failed) |" in (out / "results.md").read_text()


def test_unavailable_method_is_skipped_with_its_reason(tmp_path, shards, capsys):
    cfg_path = _config(tmp_path, shards, methods=[
        {"name": "lama", "kind": "lama", "lama_path": str(tmp_path / "missing-big-lama.pt")},
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
    monkeypatch.setattr(R, "build_method", CountingErasers())
    cfg_path = _config(tmp_path, shards, wandb={"enabled": True, "mode": "offline", "project": "t"}, grid_cases=0)
    assert R.main(["--config", str(cfg_path)]) == 0
    out = tmp_path / "eval"
    results = _wandb_table(out, "results")
    assert results["columns"][:4] == ["dataset", "method", "psnr", "ssim"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r[1] for r in results["data"]] == [r["method"] for r in rows]
    assert results["data"][0][2] == pytest.approx(float(rows[0]["psnr"]))
    per_image = _wandb_table(out, "per_image")
    assert len(per_image["data"]) == 6 and "psnr" in per_image["columns"]
