"""Compose: placement validity against brute force, the exact blend, tags, determinism, skip reasons."""

from __future__ import annotations

import numpy as np
import pytest

from magiceraser import coco
from magiceraser.config import ConfigError, load_config
from magiceraser.datasets.compose import (
    NO_ELIGIBLE,
    NO_PLACEMENT,
    NO_THING,
    ComposeConfig,
    ComposeSkip,
    compose,
    rng_for,
    valid_offsets,
)
from magiceraser.imageio import decode_image, encode_image
from magiceraser.panoptic import PanopticResult, Segment

L = coco.BY_NAME
GRASS, SKY, ROAD = L["grass-merged"].label, L["sky-other-merged"].label, L["road"].label
TABLE = L["table-merged"].label  # stuff, but not background
PERSON, DOG = L["person"].label, L["dog"].label


def scene(h: int = 60, w: int = 80, seed: int = 0):
    """Sky on top, grass and road below, a table block (non-background stuff), a person and a dog."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    seg = np.zeros((h, w), np.int32)
    seg[: h // 3] = 1  # sky
    seg[h // 3 :, : w // 2] = 2  # grass
    seg[h // 3 :, w // 2 :] = 3  # road
    seg[h // 3 : h // 3 + 10, w - 20 : w - 5] = 4  # table
    yy, xx = np.mgrid[0:h, 0:w]
    seg[((yy - 35) / 8.0) ** 2 + ((xx - 20) / 5.0) ** 2 <= 1] = 5  # person (ellipse)
    seg[48:54, 50:60] = 6  # dog
    segments = [Segment(1, SKY), Segment(2, GRASS), Segment(3, ROAD), Segment(4, TABLE), Segment(5, PERSON), Segment(6, DOG)]
    return image, PanopticResult(seg, segments)


def brute_force_offsets(obj, background, things, cfg):
    """Every valid top-left position by explicit loops (the independent reference)."""
    h, w = obj.shape
    H, W = background.shape
    area = obj.sum()
    out = set()
    for y in range(H - h + 1):
        for x in range(W - w + 1):
            n_bg = (background[y : y + h, x : x + w] & obj).sum()
            n_th = (things[y : y + h, x : x + w] & obj).sum()
            if n_bg >= cfg.min_background_share * area and n_th <= cfg.max_thing_overlap * area:
                out.add((x, y))
    return out


def masks(pan):
    labels = pan.label_map()
    background = np.isin(labels, list(coco.BACKGROUND_LABELS))
    things = np.isin(labels, list(coco.THING_LABELS))
    return background, things


@pytest.mark.parametrize("share,overlap", [(0.95, 0.02), (1.0, 0.0), (0.6, 0.3)])
def test_valid_offsets_equal_brute_force(share, overlap):
    image, pan = scene()
    cfg = ComposeConfig(min_background_share=share, max_thing_overlap=overlap, min_object_area=0.001)
    background, things = masks(pan)
    ys, xs = np.nonzero(pan.segment_map == 5)
    obj = pan.segment_map[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] == 5
    found = {tuple(p) for p in valid_offsets(obj, background, things, cfg, scale=1).tolist()}
    expected = brute_force_offsets(obj, background, things, cfg)
    assert expected, "the test scene must admit placements"
    assert found == expected


def check_sample(image, pan, out, cfg):
    """Every property of a composed sample, recomputed independently."""
    H, W = image.shape[:2]
    x0, y0, x1, y1 = out.object_bbox
    dx, dy = out.offset
    tx0, ty0, tx1, ty1 = out.target_bbox
    assert (tx0, ty0, tx1, ty1) == (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
    assert 0 <= tx0 < tx1 <= W and 0 <= ty0 < ty1 <= H  # inside the image
    assert (dx, dy) != (0, 0)
    # The mask is the object's mask shifted by the offset.
    ids = [s.id for s in pan.segments if s.label == out.object_label]
    cand = [i for i in ids if (pan.segment_map[y0:y1, x0:x1] == i).any()]
    assert len(cand) >= 1
    src = pan.segment_map == cand[0]
    expected_mask = np.zeros((H, W), bool)
    ys, xs = np.nonzero(src)
    expected_mask[ys + dy, xs + dx] = True
    np.testing.assert_array_equal(out.mask, expected_mask)
    # Blend exactly: Ĩ = m̃·õ + (1 − m̃)·I.
    shifted = np.zeros_like(image)
    shifted[ys + dy, xs + dx] = image[ys, xs]
    m = expected_mask[..., None].astype(np.int64)
    expected = (m * shifted + (1 - m) * image).astype(np.uint8)
    np.testing.assert_array_equal(out.blended, expected)
    # Placement criteria, at full resolution.
    background, things = masks(pan)
    area = expected_mask.sum()
    assert (background & expected_mask).sum() >= cfg.min_background_share * area
    assert (things & expected_mask).sum() <= cfg.max_thing_overlap * area
    # Tags: background stuff under m̃, largest first.
    labels = pan.label_map()[expected_mask]
    counts = {coco.COCO_PANOPTIC[v].name: int((labels == v).sum()) for v in np.unique(labels) if v in coco.BACKGROUND_LABELS}
    assert out.tags == sorted(counts, key=lambda n: (-counts[n], n))


def test_compose_blend_is_exact_and_survives_png():
    image, pan = scene()
    cfg = ComposeConfig(min_object_area=0.001)
    out = compose(image, pan, rng_for("scene", 0), cfg)
    check_sample(image, pan, out, cfg)
    # Lossless shards: the PNG round trip keeps the blend bit-exact.
    np.testing.assert_array_equal(decode_image(encode_image(out.blended, "png"), min_side=1), out.blended)
    mask_png = encode_image(out.mask.astype(np.uint8) * 255, "png")
    import io

    from PIL import Image

    m = np.asarray(Image.open(io.BytesIO(mask_png)))
    assert m.ndim == 2 and set(np.unique(m).tolist()) <= {0, 255}
    np.testing.assert_array_equal(m == 255, out.mask)


def test_downscaled_search_on_large_image_is_still_valid():
    image, pan = scene(h=600, w=800, seed=1)
    # Scale the scene's layout up: rebuild the segment map at 10x.
    _, small = scene()
    seg = np.kron(small.segment_map, np.ones((10, 10), np.int32))
    pan = PanopticResult(seg, small.segments)
    cfg = ComposeConfig(min_object_area=0.001, search_max_side=128)
    for key in ("a", "b", "c"):
        out = compose(image, pan, rng_for(key, 3), cfg)
        check_sample(image, pan, out, cfg)


def test_same_key_and_seed_give_identical_samples():
    image, pan = scene()
    cfg = ComposeConfig(min_object_area=0.001)
    a = compose(image, pan, rng_for("k1", 7), cfg)
    b = compose(image, pan, rng_for("k1", 7), cfg)
    assert a.offset == b.offset and a.object_bbox == b.object_bbox
    assert encode_image(a.blended, "jpg", 95) == encode_image(b.blended, "jpg", 95)
    offsets = {compose(image, pan, rng_for(f"k{i}", 7), cfg).offset for i in range(12)}
    assert len(offsets) > 1, "different keys should give different placements"
    assert rng_for("k1", 7).integers(1 << 30) != rng_for("k1", 8).integers(1 << 30)


def test_skip_no_thing():
    image, pan = scene()
    pan = PanopticResult(np.where(pan.segment_map >= 5, 2, pan.segment_map), pan.segments[:4])
    with pytest.raises(ComposeSkip) as exc:
        compose(image, pan, rng_for("x", 0), ComposeConfig())
    assert exc.value.reason == NO_THING


def test_skip_no_eligible_object_too_small_or_on_border():
    image, pan = scene()
    with pytest.raises(ComposeSkip) as exc:  # both objects are below 30% of the image
        compose(image, pan, rng_for("x", 0), ComposeConfig(min_object_area=0.3, max_object_area=0.5))
    assert exc.value.reason == NO_ELIGIBLE
    seg = pan.segment_map.copy()
    seg[seg >= 5] = 2
    seg[50:60, 0:10] = 5  # touches the left and bottom border
    border = PanopticResult(seg, pan.segments[:5])
    with pytest.raises(ComposeSkip) as exc:
        compose(image, border, rng_for("x", 0), ComposeConfig(min_object_area=0.001))
    assert exc.value.reason == NO_ELIGIBLE


def test_skip_no_valid_placement():
    image, pan = scene()
    seg = pan.segment_map.copy()
    seg[(seg == 1) | (seg == 2) | (seg == 3)] = 4  # everything but the objects is a table
    with pytest.raises(ComposeSkip) as exc:
        compose(image, PanopticResult(seg, pan.segments), rng_for("x", 0), ComposeConfig(min_object_area=0.001))
    assert exc.value.reason == NO_PLACEMENT


def test_compose_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="min_background_share"):
        ComposeConfig(min_background_share=1.5)
    from magiceraser.datasets.config import OLRDConfig

    with pytest.raises(ConfigError, match="compose.bogus"):
        load_config(OLRDConfig, None, ["compose.bogus=1"])
    with pytest.raises(ConfigError, match="max_thing_overlap"):
        load_config(OLRDConfig, None, ["compose.max_thing_overlap=-1"])
