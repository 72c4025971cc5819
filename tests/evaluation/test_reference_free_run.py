"""``magiceraser evaluate`` with the reference-free metrics and the success judges, end to end on tiny
random-weight models in their real formats: pairs with and without a ground truth, n per cell, the
judges' verdicts per image, and the cache keys of every new metric (a changed judge prompt rescores
that judge only; an unchanged config rescores nothing; a changed object class rejudges)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from magiceraser.evaluation import method_run, remove
from magiceraser.evaluation import run as R
from magiceraser.evaluation.vlm_judge import VlmJudge
from magiceraser.imageio import decode_image, decode_mask

from .olrd_shards import write_shard
from .test_run import CountingErasers, _write_shards


def _write_folders(root, n=3, seed=5):
    """A plain input/ mask/ benchmark without target/ (reference-free metrics only)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(30, 220, (56, 72, 3), dtype=np.uint8)
        mask = np.zeros((56, 72), np.uint8)
        mask[10 + i : 30 + i, 20:44] = 255
        (root / "input").mkdir(parents=True, exist_ok=True)
        (root / "mask").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "input" / f"im{i}.png")
        Image.fromarray(mask).save(root / "mask" / f"im{i}.png")


@pytest.fixture()
def setup(tmp_path, tiny_sam, tiny_dinov2, tiny_mask2former, tiny_llava, monkeypatch):
    monkeypatch.setattr(method_run, "build_method", CountingErasers())
    _write_shards(tmp_path)
    _write_folders(tmp_path / "removal")

    def write_config(**metrics):
        cfg = {
            "out_dir": str(tmp_path / "eval"), "size": 64, "grid_cases": 1, "device": "cpu",
            "datasets": [{"name": "shards", "kind": "olrd_shards", "path": str(tmp_path / "olrd-*.tar")},
                         {"name": "removal", "kind": "folders", "path": str(tmp_path / "removal")}],
            "methods": [{"name": "meanfill", "kind": "telea"}, {"name": "identity", "kind": "telea"}],
            "metrics": {"masked": False, "regrowth": True, "segmenter": str(tiny_mask2former),
                        "remove": True, "remove_model": str(tiny_sam), "cfd": True, "cfd_model": str(tiny_dinov2),
                        "judge_detector": True, "judge_vlm": True, "judge_vlm_model": str(tiny_llava), **metrics},
            "bootstrap": {"resamples": 200, "baseline": "identity"},
        }
        path = tmp_path / "eval.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return tmp_path, write_config


class Spy:
    """Counts calls of a metric's __call__ (the real one runs)."""

    def __init__(self, monkeypatch, cls):
        self.calls = 0
        original = cls.__call__

        def counted(obj, *args, **kwargs):
            self.calls += 1
            return original(obj, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", counted)


def _records(out):
    return [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]


def test_every_metric_runs_with_and_without_targets(setup, tiny_sam):
    tmp_path, write_config = setup
    assert R.main(["--config", str(write_config())]) == 0
    out = tmp_path / "eval"
    recs = _records(out)
    assert len(recs) == 12 and not any("error" in r for r in recs)
    for r in recs:
        has_target = r["dataset"] == "shards"
        assert ("psnr" in r) == has_target and ("ssim" in r) == has_target  # no ground truth: reference-free only
        assert {"regrowth", "remove", "cfd", "cfd_context", "cfd_invented"} <= set(r)
        assert r["success_detector"] in (0.0, 1.0) and 0.0 <= r["detector_fraction"] <= 1.0
        assert r["success_vlm"] == float(r["vlm_p_yes"] < 0.5) and 0.0 <= r["vlm_p_yes"] <= 1.0
        assert r["cfd"] == pytest.approx(r["cfd_context"] + r["cfd_invented"])
        assert r.get("object_class") == ("cat" if has_target else None)
    # ReMOVE as recorded is ReMOVE of the stored erased image and mask (the run scores what it stores)
    scorer = remove.RemoveScorer(str(tiny_sam))
    for r in recs[:2] + recs[-2:]:
        erased = decode_image(out / "methods" / r["dataset"] / r["method"] / "images" / f"{r['key']}.png")
        mask = decode_mask(out / "pairs" / r["dataset"] / r["key"] / "mask.png")
        assert r["remove"] == pytest.approx(scorer(erased, mask), rel=1e-6)
    rows = {(r["dataset"], r["method"]): r for r in csv.DictReader((out / "results.csv").open())}
    no_gt = rows[("removal", "meanfill")]
    assert no_gt["psnr"] == no_gt["psnr_n"] == "" and no_gt["remove_n"] == "3" and no_gt["count"] == "3"
    assert float(no_gt["remove_low"]) <= float(no_gt["remove"]) <= float(no_gt["remove_high"])
    assert rows[("shards", "meanfill")]["psnr_n"] == "3"
    rate = np.mean([r["success_vlm"] for r in recs if r["dataset"] == "removal" and r["method"] == "meanfill"])
    assert float(no_gt["success_vlm"]) == pytest.approx(rate)
    table = (out / "results.md").read_text()
    for header in ("ReMOVE↑", "CFD↓", "Success det.↑", "Success VLM↑", "Difference from identity"):
        assert header in table
    assert "CFD's segments come from the panoptic segmenter" in table
    assert (out / "grids" / "removal__meanfill__best.png").is_file()  # ranked by ReMOVE where there is no PSNR
    comparisons = list(csv.DictReader((out / "comparisons.csv").open()))
    assert {c["metric"] for c in comparisons if c["dataset"] == "removal"} >= {"remove", "cfd", "success_vlm"}
    assert not any(c["metric"] == "psnr" for c in comparisons if c["dataset"] == "removal")


def test_cache_keys_cover_every_new_metric(setup, monkeypatch):
    tmp_path, write_config = setup
    assert R.main(["--config", str(write_config())]) == 0
    vlm, sam = Spy(monkeypatch, VlmJudge), Spy(monkeypatch, remove.RemoveScorer)
    assert R.main(["--config", str(write_config())]) == 0
    assert (vlm.calls, sam.calls) == (0, 0)  # an unchanged config rescores nothing
    before = {(r["dataset"], r["method"], r["key"]): r for r in _records(tmp_path / "eval")}
    assert R.main(["--config", str(write_config(judge_vlm_prompt="Is a {object} visible here? Answer yes or no."))]) == 0
    assert (vlm.calls, sam.calls) == (12, 0)  # a changed judge prompt rescores that judge, nothing else
    after = {(r["dataset"], r["method"], r["key"]): r for r in _records(tmp_path / "eval")}
    assert any(after[k]["vlm_p_yes"] != before[k]["vlm_p_yes"] for k in before)
    assert all(after[k]["remove"] == before[k]["remove"] for k in before)
    assert R.main(["--config", str(write_config(judge_vlm_prompt="Is a {object} visible here? Answer yes or no.",
                                                judge_detector_threshold=0.5))]) == 0
    assert (vlm.calls, sam.calls) == (12, 0)  # the detector's threshold is not the VLM judge's


def test_a_changed_object_class_rejudges(setup, monkeypatch):
    tmp_path, write_config = setup
    assert R.main(["--config", str(write_config(remove=False, cfd=False))]) == 0
    vlm = Spy(monkeypatch, VlmJudge)
    samples = []
    rng = np.random.default_rng(0)  # the same pixels as _write_shards, another class in the metadata
    from .test_run import _scene

    for i, (h, w) in enumerate([(45, 67), (70, 51), (64, 64)]):
        target, mask = _scene(rng, h, w)
        inp = target.copy()
        inp[mask] = (250, 10, 10)
        samples.append((f"s{i}", inp, mask, target, {"object_class": "dog"}))
    write_shard(tmp_path / "olrd-000000.tar", samples)
    assert R.main(["--config", str(write_config(remove=False, cfd=False))]) == 0
    assert vlm.calls == 6  # the shards' 3 images x 2 methods; the folder dataset is untouched
    assert {r["object_class"] for r in _records(tmp_path / "eval") if r["dataset"] == "shards"} == {"dog"}


def test_a_missing_judge_model_is_one_line_before_any_work(setup, capsys):
    tmp_path, write_config = setup
    assert R.main(["--config", str(write_config(judge_vlm_model=str(tmp_path / "no-llava")))]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "Traceback" in line or "magiceraser" in line]
    assert len(err) == 1 and "metrics.judge_vlm_model" in err[0] and "no-llava" in err[0], err
    assert not (tmp_path / "eval" / "methods").exists()


@pytest.mark.parametrize("field, value, changed", [
    ("remove_model", "other/sam", {"remove"}),
    ("cfd_model", "other/dinov2", {"cfd", "cfd_context", "cfd_invented"}),
    ("segmenter", "other/m2f", {"regrowth", "cfd", "cfd_context", "cfd_invented", "success_detector", "detector_fraction"}),
    ("judge_detector_dilation", 3, {"success_detector", "detector_fraction"}),
    ("judge_detector_threshold", 0.3, {"success_detector", "detector_fraction"}),
    ("judge_vlm_model", "other/llava", {"success_vlm", "vlm_p_yes"}),
    ("judge_vlm_backend", "vllm", {"success_vlm", "vlm_p_yes"}),
    ("judge_vlm_prompt", "Any {object}? Answer yes or no.", {"success_vlm", "vlm_p_yes"}),
    ("judge_vlm_threshold", 0.7, {"success_vlm", "vlm_p_yes"}),
    ("judge_vlm_context", 2.0, {"success_vlm", "vlm_p_yes"}),
    ("judge_vlm_fallback_class", "thing", {"success_vlm", "vlm_p_yes"}),
    ("remove", False, set()),  # a switch is not a setting: switching a metric off and on again reuses its values
])
def test_each_setting_keys_exactly_the_metrics_it_changes(field, value, changed):
    from dataclasses import replace

    from magiceraser.evaluation.cache import metric_keys
    from magiceraser.evaluation.config import MetricsConfig

    before = metric_keys(MetricsConfig())
    after = metric_keys(replace(MetricsConfig(), **{field: value}))
    assert {m for m in before if before[m] != after[m]} == changed
