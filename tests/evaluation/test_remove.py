"""ReMOVE against the reference implementation (chandrasekaraditya/ReMOVE), written out independently.

The reference's crop (``crop.find_smallest_bounding_square``), its mask handling (PIL bicubic
resize of the 0/255 crop mask, ``// 255``) and SAM's preprocessing (``ResizeLongestSide`` + the
model's normalise/pad) are transcribed here in numpy/PIL and compared with the module on a tiny
random SAM; the features themselves come from the model, so the comparison is of everything around it.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from magiceraser.evaluation.remove import (
    RemoveScorer,
    bounding_square,
    crop_box,
    grid_masks,
    remove_from_features,
)

# segment_anything's Sam.pixel_mean / pixel_std (0-255 scale)
SAM_MEAN = np.array([123.675, 116.28, 103.53])
SAM_STD = np.array([58.395, 57.12, 57.375])


def reference_square(binary_image: np.ndarray):
    """crop.find_smallest_bounding_square, line for line (0/255 mask)."""
    white_pixels = np.argwhere(binary_image == 255)
    min_row = np.min(white_pixels[:, 0])
    max_row = np.max(white_pixels[:, 0])
    min_col = np.min(white_pixels[:, 1])
    max_col = np.max(white_pixels[:, 1])
    width = max_col - min_col + 1
    height = max_row - min_row + 1
    size = max(width, height)
    sub = 16 if (min_col - 16 >= 0 and min_row - 16 >= 0 and max_row + 16 <= binary_image.shape[0]
                 and max_col + 16 <= binary_image.shape[1]) else max(min(min_col, min_row, binary_image.shape[0] - max_row, binary_image.shape[1] - max_col), 0)
    return min_col - sub, min_row - sub, size + 2 * sub


def reference_score(features: np.ndarray, crop_mask255: np.ndarray, rows: int, cols: int) -> float:
    """main.py's fg/bg means and cosine, in float64, on the first rows x cols cells of the grid."""
    small = np.array(Image.fromarray(crop_mask255).resize((cols, rows), Image.BICUBIC)) // 255
    f = features.astype(np.float64)[:, :rows, :cols].reshape(features.shape[0], -1)
    fg = small.reshape(-1) == 1
    emb_fg, emb_bg = f[:, fg].mean(1), f[:, ~fg].mean(1)
    return float(emb_fg @ emb_bg / (np.linalg.norm(emb_fg) * np.linalg.norm(emb_bg)))


def mask255(shape, *boxes) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    for top, bottom, left, right in boxes:
        m[top:bottom, left:right] = 255
    return m


@pytest.fixture(scope="module")
def scorer(tiny_sam):
    return RemoveScorer(str(tiny_sam))


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    # smooth structure plus noise, so features differ between regions
    yy, xx = np.mgrid[0:140, 0:180]
    base = np.stack([np.sin(xx / 9.0), np.cos(yy / 7.0), np.sin((xx + yy) / 13.0)], -1) * 80 + 128
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "shape, boxes, expected",
    [
        # 16 px margin fits on every side: bbox 30x20 at (row 40, col 50) -> side 30 + 2*16
        ((140, 180), [(40, 60, 50, 80)], (34, 24, 62)),
        # 5 px from the top: the margin shrinks to min(min_col, min_row, H-max_row, W-max_col) = 5
        ((140, 180), [(5, 25, 50, 80)], (45, 0, 40)),
        # max_row + 16 == H: margin 16, and the square overruns the bottom by 1 px (end = max_row + 1 + 16)
        ((140, 180), [(100, 125, 60, 85)], (44, 84, 57)),
        # one pixel lower: margin = H - max_row = 15 (and again one row past the bottom)
        ((140, 180), [(100, 126, 60, 86)], (45, 85, 56)),
        # touching the left border: no margin at all
        ((140, 180), [(60, 70, 0, 10)], (0, 60, 10)),
        # two blobs: one square over both
        ((140, 180), [(30, 40, 30, 40), (70, 90, 100, 110)], (14, 14, 112)),
    ],
)
def test_bounding_square_is_the_reference_formula(shape, boxes, expected):
    m = mask255(shape, *boxes)
    assert tuple(int(v) for v in reference_square(m)) == expected  # the transcription, on hand values
    assert bounding_square(m) == expected
    assert bounding_square(m == 255) == expected  # bool masks too


def test_bounding_square_margin_parameter():
    m = mask255((140, 180), (40, 60, 50, 80))
    assert bounding_square(m, margin=4) == (46, 36, 38)
    assert bounding_square(m, margin=0) == (50, 40, 30)


def test_empty_mask_raises(scorer, image):
    with pytest.raises(ValueError, match="mask is empty"):
        bounding_square(np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="mask is empty"):
        scorer(image, np.zeros(image.shape[:2], bool))


def test_crop_box_keeps_shifts_or_clamps_the_square():
    # fits: exactly the reference's slice [y:y+size, x:x+size]
    assert crop_box((140, 180), 34, 24, 62) == (24, 34, 86, 96)
    # runs over the bottom by one pixel: shifted up, same size
    assert crop_box((140, 180), 44, 84, 57) == (83, 44, 140, 101)
    # runs over the right border: shifted left
    assert crop_box((140, 180), 150, 10, 50) == (10, 130, 60, 180)
    # taller than the image: every row, the square's columns
    assert crop_box((40, 200), 40, 0, 81) == (0, 40, 40, 121)
    # larger than the image both ways: the whole image
    assert crop_box((40, 60), 0, 0, 81) == (0, 0, 40, 60)


def test_features_are_sam_preprocessing_then_the_encoder(scorer, image):
    """RemoveScorer.features = segment_anything's ResizeLongestSide (PIL bilinear) + normalise + pad + encoder."""
    crop = image[10:73, 20:120]  # 63 x 100: resized to 161 x 256 (int(63 * 2.56 + 0.5)), then padded
    size = scorer.input_size
    h, w = crop.shape[:2]
    scale = size / max(h, w)
    newh, neww = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = np.asarray(Image.fromarray(crop).resize((neww, newh), Image.BILINEAR), dtype=np.float64)
    x = np.zeros((3, size, size), np.float32)
    x[:, :newh, :neww] = ((resized - SAM_MEAN) / SAM_STD).transpose(2, 0, 1)
    with torch.inference_mode():
        expected = scorer.model.get_image_embeddings(torch.from_numpy(x)[None])[0].numpy()
    got = scorer.features(crop)
    assert got.dtype == np.float32 and got.shape == (scorer.model.config.vision_config.output_channels, scorer.grid, scorer.grid)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(
    "boxes",
    [
        [(50, 80, 60, 100)],  # margin fits: the reference's own square
        [(5, 30, 40, 56), (20, 26, 60, 70)],  # close to the top: smaller margin; two blobs
    ],
)
def test_score_matches_the_reference_computation(scorer, image, boxes):
    m = mask255(image.shape[:2], *boxes)
    x, y, size = (int(v) for v in reference_square(m))
    assert y + size <= image.shape[0] and x + size <= image.shape[1]  # the square fits: the reference's crop
    crop, crop_mask = image[y : y + size, x : x + size], m[y : y + size, x : x + size]
    features = scorer.features(crop)
    expected = reference_score(features, crop_mask, scorer.grid, scorer.grid)
    assert scorer(image, m == 255) == pytest.approx(expected, rel=1e-5)
    assert scorer(image, m) == pytest.approx(expected, rel=1e-5)  # 0/255 mask


def test_square_past_the_border_is_shifted_inside(scorer, image):
    m = mask255(image.shape[:2], (100, 125, 60, 85))  # square (44, 84, 57) overruns the bottom by 1 px
    x, y, size = (int(v) for v in reference_square(m))
    assert y + size == image.shape[0] + 1
    top, left = image.shape[0] - size, x  # shifted up one row, still 57 x 57
    crop, crop_mask = image[top : top + size, left : left + size], m[top : top + size, left : left + size]
    assert crop.shape[:2] == (size, size)
    expected = reference_score(scorer.features(crop), crop_mask, scorer.grid, scorer.grid)
    assert scorer(image, m) == pytest.approx(expected, rel=1e-5)


def test_non_square_crop_padding_cells_are_neither(scorer, image):
    """Image shorter than the square: the crop is what exists, the mask lands where the processor puts the pixels."""
    strip, m = image[:40], mask255((40, 180), (10, 31, 50, 111))  # 21 x 61 mask in a 40 px tall image
    x, y, size = bounding_square(m)
    assert (x, y, size) == (40, 0, 81) and size > strip.shape[0]
    top, left, bottom, right = crop_box(m.shape, x, y, size)
    crop, crop_mask = strip[top:bottom, left:right], m[top:bottom, left:right]
    assert crop.shape[:2] == (40, 81)

    # where SAM's processor puts the crop's pixels, in grid cells
    inputs = scorer.processor(images=[crop], return_tensors="np", input_data_format="channels_last")
    newh, neww = (int(v) for v in inputs["reshaped_input_sizes"][0])
    patch = scorer.input_size // scorer.grid
    rows, cols = round(newh / patch), round(neww / patch)
    assert (rows, cols) == (8, scorer.grid)  # 126 px of 256 -> 7.9 cells

    fg, bg = grid_masks(crop_mask, scorer.grid)
    assert not (fg & bg).any()
    assert (fg | bg)[:rows, :cols].all()
    assert not (fg | bg)[rows:].any()  # padding cells: neither fg nor bg
    assert fg.any()

    expected = reference_score(scorer.features(crop), crop_mask, rows, cols)
    assert scorer(strip, m == 255) == pytest.approx(expected, rel=1e-5)


def test_remove_from_features_behaviour():
    rng = np.random.default_rng(1)
    fg = np.zeros((8, 8), bool)
    fg[2:5, 3:6] = True
    bg = ~fg
    v = rng.normal(size=6)
    same = np.broadcast_to(v[:, None, None], (6, 8, 8)).copy()
    assert remove_from_features(same, fg, bg) == pytest.approx(1.0, abs=1e-12)  # fill looks like its context

    # only the means matter: varied surroundings whose mean is the fill's vector still give 1
    varied = same.copy()
    noise = rng.normal(size=(6, int(bg.sum())))
    varied[:, bg] += noise - noise.mean(axis=1, keepdims=True)
    assert remove_from_features(varied, fg, bg) == pytest.approx(1.0, abs=1e-12)

    ortho = np.zeros((6, 8, 8))
    ortho[0][fg] = 2.0  # the fill on one axis, the surroundings on another
    ortho[1][bg] = 0.5
    assert remove_from_features(ortho, fg, bg) == pytest.approx(0.0, abs=1e-12)
    opposite = np.where(fg, 1.0, -1.0)[None].repeat(3, 0)
    assert remove_from_features(opposite, fg, bg) == pytest.approx(-1.0, abs=1e-12)

    # cells in neither mask are ignored
    neither = same.copy()
    fg2, bg2 = fg.copy(), bg.copy()
    bg2[7] = False
    neither[:, 7] = 1e6
    assert remove_from_features(neither, fg2, bg2) == pytest.approx(1.0, abs=1e-12)

    assert math.isnan(remove_from_features(same, np.zeros_like(fg), bg))  # nothing to average
    with pytest.raises(ValueError, match="feature grid"):
        remove_from_features(same, fg[:4], bg[:4])


def test_tiny_sam_loads_with_stock_classes(tiny_sam):
    from transformers import AutoProcessor, SamModel, SamProcessor

    config = json.loads((tiny_sam / "config.json").read_text())
    assert config["model_type"] == "sam"
    pre = json.loads((tiny_sam / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "SamImageProcessor" and pre["processor_class"] == "SamProcessor"
    assert pre["size"] == {"longest_edge": 256} and pre["pad_size"] == {"height": 256, "width": 256}

    model, info = SamModel.from_pretrained(tiny_sam, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    processor = SamProcessor.from_pretrained(tiny_sam)
    assert type(AutoProcessor.from_pretrained(tiny_sam)) is SamProcessor
    img = np.random.default_rng(2).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    inputs = processor(images=img, input_points=[[[60, 45]]], return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 256, 256)
    with torch.inference_mode():
        emb = model.get_image_embeddings(inputs["pixel_values"])
        out = model(**inputs)
    assert tuple(emb.shape) == (1, 32, 16, 16)
    assert tuple(out.pred_masks.shape[-2:]) == (64, 64) and torch.isfinite(out.pred_masks).all()
    # the random encoder is not degenerate: features vary over the image
    assert emb[0].flatten(1).std(dim=1).mean() > 0.1


def test_unusable_checkpoints_raise(tiny_sam, tmp_path):
    with pytest.raises(OSError):
        RemoveScorer(str(tmp_path / "no-such-checkpoint"))
    # a processor that does not fill the encoder's input with the crop's longest side
    odd = tmp_path / "odd-sam"
    shutil.copytree(tiny_sam, odd)
    pre = json.loads((odd / "preprocessor_config.json").read_text())
    pre["size"] = {"longest_edge": 200}
    (odd / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(ValueError, match="longest_edge=200"):
        RemoveScorer(str(odd))
