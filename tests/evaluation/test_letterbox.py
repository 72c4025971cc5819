"""The letterbox exactly: long side to 512 (bilinear), zero padding bottom/right, on odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from magiceraser.evaluation.letterbox import letterbox_geometry, letterbox_image, letterbox_mask


@pytest.mark.parametrize(
    "h,w,eh,ew",
    [(333, 517, 330, 512), (517, 333, 512, 330), (301, 301, 512, 512), (1001, 77, 512, 39), (511, 1, 512, 1), (2, 999, 1, 512)],
)
def test_geometry_on_odd_sizes(h, w, eh, ew):
    geo = letterbox_geometry(h, w, 512)
    assert (geo.height, geo.width) == (eh, ew)
    # independent: round(short * 512 / long)
    assert max(geo.height, geo.width) == 512
    assert min(geo.height, geo.width) == max(1, round(min(h, w) * 512 / max(h, w)))


def test_letterbox_image_exactly():
    rng = np.random.default_rng(0)
    img = rng.integers(1, 256, (333, 517, 3), dtype=np.uint8)  # no zeros: padding is detectable
    out, geo = letterbox_image(img, 512)
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(img).resize((512, 330), Image.BILINEAR))
    np.testing.assert_array_equal(out[:330, :512], expected)
    assert not out[330:].any()  # bottom padding is exactly 0
    np.testing.assert_array_equal(geo.crop(out), expected)


def test_letterbox_tall_pads_right_and_upscales():
    img = np.full((61, 37, 3), 200, np.uint8)
    out, geo = letterbox_image(img, 512)
    assert (geo.height, geo.width) == (512, round(37 * 512 / 61))
    assert (out[:, : geo.width] == 200).all() and not out[:, geo.width:].any()


def test_letterbox_mask_follows_the_image():
    mask = np.zeros((333, 517), bool)
    mask[100:200, 50:301] = True
    out = letterbox_mask(mask, 512)
    assert out.shape == (512, 512) and out.dtype == bool
    assert not out[330:].any()
    ys, xs = np.nonzero(out)
    s = 512 / 517
    assert abs(ys.min() - 100 * s) <= 1 and abs(ys.max() + 1 - 200 * s) <= 1
    assert abs(xs.min() - 50 * s) <= 1 and abs(xs.max() + 1 - 301 * s) <= 1
    assert abs(out.sum() - mask.sum() * s * s) / (mask.sum() * s * s) < 0.02


def test_letterbox_rejects_bad_input():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        letterbox_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        letterbox_geometry(0, 5)
