"""The results table in the paper's layout, its CSV, and the best/worst selection."""

from __future__ import annotations

import csv
import io

import numpy as np

from magiceraser.evaluation.report import aggregate, best_and_worst, grid_image, results_csv, results_markdown


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
    cells = [line[2:-2].split(" | ") for line in md[2:]]
    assert [c[:2] for c in cells] == [["RealHM", "LaMa"], ["", "SD Inpainting"], ["", "MagicEraser"], ["COCO", "LaMa"]]
    lama, sd, me, coco_row = cells
    assert me[2] == "**23.610dB**" and sd[2] == "<u>21.710dB</u>" and lama[2] == "19.010dB"  # best bold, second underlined
    assert me[5] == "**46.56**" and lama[5] == "<u>55.70</u>" and sd[5] == "–"  # FID lower is better; missing as –
    assert lama[3] == "0.819" and lama[4] == "–"  # SSIM 3 decimals, LPIPS off
    assert lama[-1] == "3 (1 failed)" and coco_row[2] == "20.000dB"  # a lone row is not ranked


def test_csv_holds_raw_means():
    rows = aggregate(_records())
    parsed = list(csv.DictReader(io.StringIO(results_csv(rows))))
    assert parsed[2]["method"] == "MagicEraser"
    expected = np.mean([r["psnr"] for r in _records() if r["method"] == "MagicEraser"])
    assert float(parsed[2]["psnr"]) == expected  # repr round-trips the float exactly
    assert parsed[2]["lpips"] == "" and parsed[0]["failed"] == "1" and parsed[0]["count"] == "3"


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
