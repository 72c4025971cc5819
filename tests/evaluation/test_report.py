"""The results table in the paper's layout with intervals and n, the comparisons, the CSVs, and the best/worst selection."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from magiceraser.evaluation.bootstrap import bootstrap_mean
from magiceraser.evaluation.fid import FidSet
from magiceraser.evaluation.grids import best_and_worst, grid_image
from magiceraser.evaluation.report import (
    Bootstrap,
    aggregate,
    compare,
    comparisons_csv,
    fid_cell,
    results_csv,
    results_markdown,
)


def _records():
    recs = []
    for method, base in (("LaMa", 19.0), ("SD Inpainting", 21.7), ("MagicEraser", 23.6)):
        for i in range(3):
            recs.append({"dataset": "RealHM", "method": method, "key": f"k{i}", "psnr": base + i * 0.01,
                         "ssim": 0.8 + base / 1000, "psnr_mask": base - 5, "ssim_mask": 0.5})
    recs.append({"dataset": "RealHM", "method": "LaMa", "key": "bad", "error": "ValueError: boom"})
    recs.append({"dataset": "COCO", "method": "LaMa", "key": "c0", "psnr": 20.0, "ssim": 0.9, "psnr_mask": 10.0, "ssim_mask": 0.4})
    return recs


def test_table_layout_matches_the_paper():
    rows = aggregate(_records(), fid={("RealHM", "MagicEraser"): 46.561, ("RealHM", "LaMa"): 55.7})
    md = results_markdown(rows).splitlines()
    assert md[0] == "| Dataset | Method | PSNR↑ | SSIM↑ | LPIPS↓ | FID↓ | PSNR mask↑ | SSIM mask↑ | N |"
    assert md[1] == "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    cells = [line[2:-2].split(" | ") for line in md[2:6]]
    assert [c[:2] for c in cells] == [["RealHM", "LaMa"], ["", "SD Inpainting"], ["", "MagicEraser"], ["COCO", "LaMa"]]
    lama, sd, me, coco_row = cells
    # best bold, second underlined; every cell says how many images are behind it
    assert me[2] == "**23.610dB (3)**" and sd[2] == "<u>21.710dB (3)</u>" and lama[2] == "19.010dB (3)"
    assert me[5] == "**46.56 (3)**" and lama[5] == "<u>55.70 (3)</u>" and sd[5] == "–"  # FID lower is better; missing as –
    assert lama[3] == "0.819 (3)" and lama[4] == "–"  # SSIM 3 decimals, LPIPS off
    assert lama[-1] == "3 (1 failed)" and coco_row[2] == "20.000dB (1)"  # a lone row is not ranked
    assert md[-1] == "Cells: mean (images behind the cell)."


def test_cells_carry_bootstrap_intervals_and_their_own_n():
    recs = _records() + [{"dataset": "COCO", "method": "LaMa", "key": "c1", "remove": 0.8, "success_detector": 1.0},
                         {"dataset": "COCO", "method": "LaMa", "key": "c2", "remove": 0.6, "success_detector": 0.0}]
    boot = Bootstrap(resamples=200, confidence=0.9, seed=3)
    rows = aggregate(recs, order=[("RealHM", "LaMa")], boot=boot)
    lama = rows[0].cells["psnr"]
    expected = bootstrap_mean([19.0, 19.01, 19.02], 200, 3, 0.9)
    assert (lama.value, lama.low, lama.high, lama.n) == (expected.value, expected.low, expected.high, 3)
    coco = next(r for r in rows if r.dataset == "COCO")
    assert coco.cells["psnr"].n == 1 and coco.cells["remove"].n == 2 and coco.count == 3  # n per cell, not per row
    md = results_markdown(rows, boot=boot)
    line = next(x for x in md.splitlines() if x.startswith("| COCO"))
    assert "| 0.700 [0.600, 0.800] (2) | 50.0% [0.0, 100.0] (2) | 3 |" in line  # ReMOVE; success as a percentage
    assert f"19.010dB [{expected.low:.3f}, {expected.high:.3f}] (3)" in md
    assert "90% bootstrap interval over images, 200 resamples, seed 3" in md
    assert "ReMOVE is known to reward blur" in md  # the column's caveat travels with the table


def test_comparisons_are_paired_over_shared_images_and_flag_intervals_excluding_zero():
    recs = _records()
    boot = Bootstrap(resamples=500, seed=0)
    comps = compare(recs, "LaMa", boot)
    me = {c.metric: c.cell for c in comps if c.method == "MagicEraser" and c.dataset == "RealHM"}
    assert me["psnr"].value == pytest.approx(4.6) and me["psnr"].n == 3 and me["psnr"].low > 0  # k0..k2; LaMa's failed image left out
    assert me["ssim_mask"].value == 0 and me["ssim_mask"].low == me["ssim_mask"].high == 0
    assert not any(c.dataset == "COCO" for c in comps)  # COCO has no second method
    md = results_markdown(aggregate(recs, boot=boot), comps, boot)
    assert "Difference from LaMa (paired over the images both scored):" in md
    line = next(x for x in md.splitlines() if "MagicEraser" in x and "+4.600dB" in x)
    assert line.split(" | ")[2].endswith(" *")  # the PSNR gain's interval excludes 0
    parsed = list(csv.DictReader(io.StringIO(comparisons_csv(comps))))
    row = next(r for r in parsed if r["method"] == "MagicEraser" and r["metric"] == "psnr")
    assert row["baseline"] == "LaMa" and float(row["difference"]) == pytest.approx(4.6) and row["n"] == "3"


def test_fid_interval_and_difference_recompute_fid_on_resamples():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (12, 4))
    sets = {("D", "A"): FidSet(tuple(f"k{i}" for i in range(12)), real, real + rng.normal(0, 0.1, (12, 4))),
            ("D", "B"): FidSet(tuple(f"k{i}" for i in range(12)), real, real + 2.0)}
    boot = Bootstrap(resamples=50, seed=1)
    cell = fid_cell(sets[("D", "B")], boot)
    idx = np.random.default_rng(1).integers(0, 12, size=(50, 12))
    direct = [sets[("D", "B")].fid(row) for row in idx]
    assert cell.value == pytest.approx(sets[("D", "B")].fid()) and cell.n == 12
    assert cell.low == pytest.approx(np.percentile(direct, 2.5)) and cell.high == pytest.approx(np.percentile(direct, 97.5))
    recs = [{"dataset": "D", "method": m, "key": f"k{i}"} for m in ("A", "B") for i in range(12)]
    diff = next(c for c in compare(recs, "A", boot, sets) if c.metric == "fid")
    assert diff.cell.value == pytest.approx(sets[("D", "B")].fid() - sets[("D", "A")].fid()) and diff.cell.low > 0


def test_csv_holds_raw_values_bounds_and_n():
    rows = aggregate(_records(), boot=Bootstrap(resamples=100))
    parsed = list(csv.DictReader(io.StringIO(results_csv(rows))))
    assert parsed[2]["method"] == "MagicEraser"
    expected = np.mean([r["psnr"] for r in _records() if r["method"] == "MagicEraser"])
    assert float(parsed[2]["psnr"]) == expected  # repr round-trips the float exactly
    assert float(parsed[2]["psnr_low"]) <= expected <= float(parsed[2]["psnr_high"]) and parsed[2]["psnr_n"] == "3"
    assert parsed[2]["lpips"] == parsed[2]["lpips_low"] == parsed[2]["lpips_n"] == ""
    assert parsed[0]["failed"] == "1" and parsed[0]["count"] == "3"


def test_best_and_worst_and_grid():
    recs = [r for r in _records() if r["method"] == "MagicEraser"]
    best, worst = best_and_worst(recs, 2)
    assert [r["key"] for r in best] == ["k2", "k1"] and [r["key"] for r in worst] == ["k0", "k1"]
    img = np.zeros((40, 50, 3), np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:20, 5:20] = True
    grid = grid_image([(img, mask, img, img, "k0 1 dB")] * 2, tile=64)
    assert grid.shape == (128, 192, 3)
    tile = grid[:64, :64]
    assert tile[..., 0].max() > 100 and tile[..., 1:].max() == 0  # the mask outline, in red, on the input tile
    no_target = grid_image([(img, mask, img, None, "k0 0.91 ReMOVE")], tile=64)
    assert (no_target[16:, 128:] == 128).all()  # a pair without ground truth: a grey third tile (below the caption)
    remove_ranked, _ = best_and_worst(recs + [{"key": "r", "remove": 0.9}, {"key": "s", "remove": 0.2}], 1, "remove")
    assert [r["key"] for r in remove_ranked] == ["r"]  # records without the metric are left out
