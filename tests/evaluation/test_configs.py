"""The shipped configs load into the code's dataclasses and encode the paper's protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from magiceraser.config import load_config
from magiceraser.evaluation.config import EvalConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "eval"


@pytest.mark.parametrize("name", ["realhm", "coco", "openimages", "ablations", "demo", "removal-benchmarks"])
def test_config_loads(name):
    cfg = load_config(EvalConfig, CONFIGS / f"{name}.yaml")
    assert cfg.datasets and cfg.methods
    if name != "demo":
        assert cfg.size == 512  # the paper's protocol
        assert cfg.metrics.lpips and cfg.metrics.fid


@pytest.mark.parametrize("name", ["demo", "removal-benchmarks"])
def test_all_metrics_configs_switch_every_metric_on(name):
    cfg = load_config(EvalConfig, CONFIGS / f"{name}.yaml")
    m = cfg.metrics
    assert m.regrowth and m.remove and m.cfd and m.judge_detector and m.judge_vlm
    assert cfg.bootstrap.resamples >= 1000 and cfg.bootstrap.baseline == "Telea"
    assert any(d.kind == "folders" for d in cfg.datasets)  # a benchmark without ground truth


def test_coco_pairs_follow_the_paper():
    ds = load_config(EvalConfig, CONFIGS / "coco.yaml").datasets[0]
    assert (ds.kind, ds.num_pairs, ds.min_long_side) == ("coco_panoptic", 200, 512)


def test_ablation_rows_i_to_vi():
    methods = load_config(EvalConfig, CONFIGS / "ablations.yaml").methods
    assert [m.name.split(".")[0] for m in methods] == ["i", "ii", "iii", "iv", "v", "vi"]
    flags = [(m.content_init != "none", m.refocus, m.learned_prompt) for m in methods]
    assert flags == [(False, False, False), (False, False, False), (True, False, False),
                     (True, True, False), (True, False, True), (True, True, True)]
    assert methods[0].trained_dir != methods[1].trained_dir  # random-mask vs OLRD training
    assert all(m.strength == 1.0 for m in methods[:2]) and all(m.strength == 0.9 for m in methods[2:])


def test_demo_is_tiny_and_offline():
    cfg = load_config(EvalConfig, CONFIGS / "demo.yaml")
    assert cfg.out_dir == "demo/eval" and cfg.size <= 128
    assert not cfg.metrics.lpips and not cfg.metrics.fid
    assert {m.kind for m in cfg.methods} >= {"telea", "magiceraser"}
    assert next(m for m in cfg.methods if m.kind == "magiceraser").trained_dir == "demo/train"


def test_labels_writing_one_grid_file_are_refused():
    """``<dataset>__<method>`` must name one (dataset, method) pair: 'a' x 'b__c' and 'a__b' x 'c' would not."""
    from magiceraser.config import ConfigError

    datasets = [f"{{name: {n}, kind: olrd_shards, path: x}}" for n in ("a", "a__b")]
    methods = [f"{{name: {n}, kind: telea}}" for n in ("b__c", "c")]
    with pytest.raises(ConfigError, match="both write the grids a__b__c"):
        load_config(EvalConfig, None, [f"datasets=[{', '.join(datasets)}]", f"methods=[{', '.join(methods)}]"])
    load_config(EvalConfig, None, [f"datasets=[{datasets[0]}]", f"methods=[{', '.join(methods)}]"])  # no clash: fine
