"""CFD (OmniPaint's context-coherence / hallucination metric) against the reference's rules.

The helpers are checked on small hand-made arrays against the rules of ``cfd_score/main.py``
(yeates/OmniPaint); term 1 against an independent float64 computation from the same DINOv2 tokens
(the ring drawn with PIL exactly as the reference draws it); term 2 with a hand-written distance on
hand-built segments, so the area weighting, the adjacency rule and the cutting of bound segments
are checked without a model. The DINOv2 is the tiny random one, in facebook/dinov2-giant's format.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from magiceraser.evaluation import cfd


def _box(shape, top, bottom, left, right):
    """Bool mask with rows top..bottom and cols left..right (inclusive) set."""
    m = np.zeros(shape, dtype=bool)
    m[top : bottom + 1, left : right + 1] = True
    return m


def _image(h=64, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def scorer(tiny_dinov2):
    return cfd.CfdScorer(str(tiny_dinov2))


# --- helpers ------------------------------------------------------------------------------------


def test_filter_drops_overlapping_duplicates_and_contained_segments():
    shape = (40, 40)
    big = _box(shape, 0, 19, 0, 19)  # 400 px
    dup = big.copy()
    dup[20, 0:10] = True  # 410 px, IoU with big 400/410 > 0.8: big (smaller) is dropped
    inside95 = np.zeros(shape, dtype=bool)
    inside95[19, 0:19] = True  # 19 px inside `dup`
    inside95[25, 30] = True  # 1 px outside: 19/20 = 0.95 inside -> dropped
    inside85 = np.zeros(shape, dtype=bool)
    inside85[18, 0:17] = True  # 17 px inside
    inside85[30, 30:33] = True  # 3 px outside: 0.85 inside -> kept
    far = _box(shape, 30, 39, 35, 39)  # 50 px, disjoint
    kept = cfd.filter_segments([inside95, big, far, dup, inside85])
    assert len(kept) == 3
    assert np.array_equal(kept[0], dup) and np.array_equal(kept[1], far) and np.array_equal(kept[2], inside85)


def test_filter_thresholds_are_strict():
    shape = (20, 20)
    a = np.zeros(shape, dtype=bool)
    a.flat[0:90] = True
    b80 = np.zeros(shape, dtype=bool)
    b80.flat[10:100] = True  # 90 px, overlap 80: IoU 80/100 = 0.8 (not > 0.8), 80/90 inside -> kept
    b81 = np.zeros(shape, dtype=bool)
    b81.flat[9:99] = True  # 90 px, overlap 81: IoU 81/99 > 0.8 -> dropped
    assert len(cfd.filter_segments([a, b80])) == 2
    assert len(cfd.filter_segments([a, b81])) == 1
    big = np.zeros(shape, dtype=bool)
    big.flat[0:200] = True
    s90 = np.zeros(shape, dtype=bool)
    s90.flat[191:201] = True  # 9 of 10 inside: exactly 0.9 (not > 0.9) -> kept
    s91 = np.zeros(shape, dtype=bool)
    s91.flat[189:200] = True
    s91.flat[300] = True  # 11 of 12 inside (0.917) -> dropped
    assert len(cfd.filter_segments([big, s90])) == 2
    assert len(cfd.filter_segments([big, s91])) == 1
    # custom thresholds reach the rule
    assert len(cfd.filter_segments([big, s90], contain_threshold=0.85)) == 1


def test_classify_segments():
    shape = (20, 20)
    ref = _box(shape, 5, 14, 5, 14)
    inside = _box(shape, 6, 8, 6, 8)
    equal = ref.copy()
    crossing = _box(shape, 0, 6, 7, 9)
    outside = _box(shape, 16, 19, 0, 19)
    touching = _box(shape, 0, 4, 0, 19)  # borders the hole, shares no pixel
    bound, contained = cfd.classify_segments([outside, inside, crossing, equal, touching], ref)
    assert bound == [2]
    assert contained == [1, 3]


def _reference_ring(ref: np.ndarray) -> np.ndarray:
    """cfd_score/main.py's term-1 box, drawn with PIL exactly as the reference does."""
    pil = Image.fromarray(ref)
    left, upper, right, lower = pil.getbbox()
    width, height = right - left, lower - upper
    left, right = max(0, left - width // 3), min(pil.width, right + width // 3)
    upper, lower = max(0, upper - height // 3), min(pil.height, lower + height // 3)
    box = Image.new("1", (pil.width, pil.height), 0)
    ImageDraw.Draw(box).rectangle([left, upper, right, lower], fill=1)
    return np.array(box) ^ ref


@pytest.mark.parametrize(
    "rect",
    [(10, 19, 12, 30), (0, 7, 0, 5), (25, 39, 40, 49), (3, 3, 3, 3), (0, 39, 0, 49)],
    ids=["inside", "top-left-corner", "bottom-right-corner", "one-pixel", "whole-image"],
)
def test_context_ring_matches_the_reference_drawing(rect):
    ref = _box((40, 50), *rect)
    ring = cfd.context_ring(ref)
    assert np.array_equal(ring, _reference_ring(ref))
    assert not (ring & ref).any()


def test_context_ring_of_a_known_box():
    ref = _box((40, 50), 10, 18, 12, 23)  # 9 rows, 12 cols: widened by 3 rows and 4 cols each side
    expected = _box((40, 50), 7, 22, 8, 28) & ~ref  # inclusive far corner: one past the widened box
    assert np.array_equal(cfd.context_ring(ref), expected)
    with pytest.raises(ValueError, match="empty"):
        cfd.context_ring(np.zeros((5, 5), dtype=bool))


def test_adjacent_means_chebyshev_distance_at_most_six():
    shape = (30, 30)
    a = _box(shape, 10, 10, 10, 10)
    assert cfd.adjacent(a, _box(shape, 10, 10, 16, 16))  # 6 apart
    assert cfd.adjacent(a, _box(shape, 16, 16, 16, 16))  # 6 apart diagonally
    assert not cfd.adjacent(a, _box(shape, 10, 10, 17, 17))  # 7 apart
    assert not cfd.adjacent(a, _box(shape, 17, 17, 4, 4))
    assert cfd.adjacent(_box(shape, 0, 2, 0, 29), _box(shape, 8, 29, 0, 29))
    assert not cfd.adjacent(a, np.zeros(shape, dtype=bool))


def test_crop_masked_region_whitens_outside_the_mask():
    image = _image(12, 10)
    mask = np.zeros((12, 10), dtype=bool)
    mask[3:7, 2] = True
    mask[6, 2:6] = True  # an L: bounding rect rows 3..6, cols 2..5
    crop, crop_mask = cfd.crop_masked_region(mask, image)
    assert crop.shape == (4, 4, 3) and crop_mask.shape == (4, 4)
    assert np.array_equal(crop_mask, mask[3:7, 2:6])
    assert np.array_equal(crop[crop_mask], image[3:7, 2:6][crop_mask])
    assert (crop[~crop_mask] == 255).all()
    assert np.array_equal(image, _image(12, 10))  # the input is not modified
    with pytest.raises(ValueError):
        cfd.crop_masked_region(np.zeros((4, 4), dtype=bool), image[:4, :4])


def test_pooled_feature_keeps_cls_first_and_patches_row_major():
    tokens = np.array(
        [
            [2.0, 0.0, 0.0],  # CLS
            [0.0, 3.0, 0.0],  # patch (0, 0)
            [0.0, 0.0, 5.0],  # patch (0, 1)
            [0.0, 4.0, 0.0],  # patch (1, 0)
            [7.0, 7.0, 7.0],  # patch (1, 1)
        ]
    )
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(cfd.pooled_feature(tokens, np.array([[True, False], [False, False]])), [r, r, 0])
    np.testing.assert_allclose(cfd.pooled_feature(tokens, np.array([[False, True], [False, False]])), [r, 0, r])
    np.testing.assert_allclose(cfd.pooled_feature(tokens, np.zeros((2, 2), dtype=bool)), [1, 0, 0])
    # per-token normalisation before the mean: (1,0,0) + (0,1,0) + (0,1,0) -> (1,2,0)/sqrt(5)
    got = cfd.pooled_feature(tokens, np.array([[True, False], [True, False]]))
    np.testing.assert_allclose(got, np.array([1, 2, 0]) / np.sqrt(5))
    with pytest.raises(ValueError):
        cfd.pooled_feature(tokens, np.zeros((3, 3), dtype=bool))


def test_mask_components_are_eight_connected():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[2:5, 2:5] = 255
    mask[5:8, 5:8] = 255  # touches the first block diagonally only: same component
    mask[12:15, 12:18] = 200
    mask[0, 19] = 100  # below the threshold: not masked
    comps = cfd.mask_components(mask)
    assert len(comps) == 2
    assert [int(c.sum()) for c in comps] == [18, 18]
    assert not comps[0][12:15, 12:18].any() and comps[1][12:15, 12:18].all()
    assert len(cfd.mask_components(mask > 0)) == 3  # bool masks are taken as they are


# --- term 2 with a hand-written distance ----------------------------------------------------------

SHAPE = (64, 64)
HOLE = _box(SHAPE, 16, 47, 16, 47)
C1 = _box(SHAPE, 20, 29, 20, 29)  # center, 100 px
C2 = _box(SHAPE, 38, 45, 38, 45)  # center, 64 px
C3 = _box(SHAPE, 32, 35, 24, 27)  # center, 16 px, 7 px from B1's cut part: no neighbour
B1 = _box(SHAPE, 18, 27, 8, 17)  # crosses the left edge; cut: rows 18..27, cols 16..17 (20 px), next to C1
B4 = _box(SHAPE, 10, 18, 24, 27)  # crosses the top edge; cut: rows 16..18, cols 24..27 (12 px), next to C1
B2 = _box(SHAPE, 44, 55, 30, 35)  # crosses the bottom edge; cut: rows 44..47, cols 30..35 (24 px), next to C2
B3 = _box(SHAPE, 16, 20, 44, 60)  # crosses the right edge, next to no center segment
OUT = _box(SHAPE, 0, 5, 0, 63)  # misses the hole


class RecordingDistance:
    """A hand-written ``dino``: (|m1| + 2|m2|) / 1000, recording every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, img1, m1, img2, m2):
        self.calls.append((img1, m1, img2, m2))
        return (int(m1.sum()) + 2 * int(m2.sum())) / 1000


def test_term2_weights_by_area_and_merges_adjacent_cut_bound_segments():
    image = _image()
    dino = RecordingDistance()
    segments = [OUT, B3, C1, B1, C2, B2, C3, B4]
    term1, term2 = cfd.cfd_terms(image, HOLE, segments, dino)

    ring = cfd.context_ring(HOLE)
    assert term1 == pytest.approx((HOLE.sum() + 2 * ring.sum()) / 1000)
    assert dino.calls[0][0] is image and dino.calls[0][2] is image
    assert np.array_equal(dino.calls[0][1], HOLE) and np.array_equal(dino.calls[0][3], ring)

    # C1: B1 and B4 cut to the hole, merged: 32 px over rows 16..27, cols 16..27; C2: B2's 24 px.
    d1 = (32 + 2 * 100) / 1000
    d2 = (24 + 2 * 64) / 1000
    assert term2 == pytest.approx((100 * d1 + 64 * d2) / (100 + 64 + 16))
    assert len(dino.calls) == 3  # term 1, C1, C2 (C3 has no neighbour)

    calls = {int(c[3].sum()): c for c in dino.calls[1:]}
    b_img, b_mask, c_img, c_mask = calls[100]
    merged = (B1 | B4) & HOLE
    assert b_img.shape == (12, 12, 3) and np.array_equal(b_mask, merged[16:28, 16:28])
    assert np.array_equal(b_img[b_mask], image[16:28, 16:28][b_mask]) and (b_img[~b_mask] == 255).all()
    assert np.array_equal(c_img, image[20:30, 20:30]) and c_mask.all()
    b_img, b_mask, c_img, c_mask = calls[64]
    assert b_mask.shape == (4, 6) and b_mask.all() and np.array_equal(b_img, image[44:48, 30:36])


def test_term2_is_zero_without_center_or_without_bound_segments():
    image = _image()
    dino = RecordingDistance()
    term1, term2 = cfd.cfd_terms(image, HOLE, [C1, C2, C3, OUT], dino)
    assert term2 == 0 and len(dino.calls) == 1
    term1_bound, term2 = cfd.cfd_terms(image, HOLE, [B1, B2, B3, B4], dino)
    assert term2 == 0 and len(dino.calls) == 2
    assert term1 == term1_bound
    # only a non-adjacent bound segment: still nothing to compare
    _, term2 = cfd.cfd_terms(image, HOLE, [C1, B3], dino)
    assert term2 == 0


def test_term2_uses_the_filtered_segments():
    image = _image()
    dup = C1.copy()
    dup[30, 20:25] = True  # 105 px, IoU 100/105 with C1: C1 is dropped, dup is the center
    _, term2 = cfd.cfd_terms(image, HOLE, [C1, dup, B1], RecordingDistance())
    assert term2 == pytest.approx((20 + 2 * 105) / 1000)  # weight 105/105: C1 did not count
    _, term2 = cfd.cfd_terms(image, HOLE, [C1, dup, B1], RecordingDistance(), filtered=True)
    assert term2 == pytest.approx((100 * (20 + 200) / 1000 + 105 * (20 + 210) / 1000) / 205)


def test_cfd_terms_rejects_an_empty_mask_or_mismatched_shapes():
    with pytest.raises(ValueError, match="empty"):
        cfd.cfd_terms(_image(), np.zeros(SHAPE, dtype=bool), [], RecordingDistance())
    with pytest.raises(ValueError):
        cfd.cfd_terms(_image(), HOLE, [np.zeros((10, 10), dtype=bool)], RecordingDistance())


# --- with the tiny DINOv2 ---------------------------------------------------------------------------


def test_tiny_dinov2_loads_with_stock_transformers(tiny_dinov2, scorer):
    import torch
    from transformers import AutoImageProcessor, AutoModel, Dinov2Model

    model = AutoModel.from_pretrained(tiny_dinov2).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_dinov2)
    assert isinstance(model, Dinov2Model)
    assert model.config.patch_size == 14 and model.config.use_swiglu_ffn
    saved = json.loads((tiny_dinov2 / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "BitImageProcessor"
    assert saved["size"] == {"shortest_edge": 256} and saved["crop_size"] == {"height": 224, "width": 224}
    assert saved["image_mean"] == [0.485, 0.456, 0.406] and saved["image_std"] == [0.229, 0.224, 0.225]
    assert saved["resample"] == 3

    image = _image(90, 130, seed=3)
    pil = Image.fromarray(image).resize((224, 224))
    with torch.no_grad():
        hidden = model(**processor(images=pil, return_tensors="pt")).last_hidden_state
    assert hidden.shape == (1, 1 + 16 * 16, 32)
    np.testing.assert_allclose(scorer.tokens(image), hidden[0].numpy(), rtol=1e-5, atol=1e-5)


def _reference_feature(tokens: np.ndarray, mask: np.ndarray, cls_first: bool = True) -> np.ndarray:
    """The reference's pooling in float64 (its mask path: PIL nearest to 224, then to 16x16)."""
    flags = np.array(Image.fromarray(mask).resize((224, 224), Image.NEAREST).resize((16, 16), Image.NEAREST))
    flags = flags.flatten()
    flags = np.concatenate([[True], flags]) if cls_first else np.append(flags, True)
    t = tokens.astype(np.float64)
    t = t / np.sqrt((t * t).sum(axis=1, keepdims=True))
    f = t[flags].mean(axis=0)
    return f / np.sqrt((f * f).sum())


@pytest.mark.numeric
def test_term1_matches_an_independent_computation(scorer):
    image = _image(100, 140, seed=1)
    hole = _box((100, 140), 30, 69, 50, 99)
    term1, term2 = cfd.cfd_terms(image, hole, [], scorer.distance)
    assert term2 == 0

    tokens = scorer.tokens(np.array(Image.fromarray(image).resize((224, 224))))
    ring = _reference_ring(hole)
    f1, f2 = _reference_feature(tokens, hole), _reference_feature(tokens, ring)
    expected = 1 - float(f1 @ f2)
    assert term1 == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert 1e-4 < term1 < 2
    # The reference's CLS-after-patches flags select other tokens: the alignment is visible.
    shifted = 1 - float(_reference_feature(tokens, hole, False) @ _reference_feature(tokens, ring, False))
    assert abs(shifted - term1) > 1e-4
    # Same through the scorer's per-image API (one component, no segments).
    assert scorer.terms(image, hole, []) == pytest.approx((term1, 0.0))
    assert scorer(image, hole.astype(np.uint8) * 255, []) == pytest.approx(term1)


@pytest.mark.numeric
def test_distance_on_crops_and_term2_with_the_model(scorer):
    image = _image(seed=2)
    term1, term2 = cfd.cfd_terms(image, HOLE, [C1, B1, B4, C3, OUT], scorer.distance)
    b_img, b_mask = cfd.crop_masked_region((B1 | B4) & HOLE, image)
    c_img, c_mask = cfd.crop_masked_region(C1, image)
    f1 = _reference_feature(scorer.tokens(np.array(Image.fromarray(b_img).resize((224, 224)))), b_mask)
    f2 = _reference_feature(scorer.tokens(np.array(Image.fromarray(c_img).resize((224, 224)))), c_mask)
    assert term2 == pytest.approx(100 / 116 * (1 - float(f1 @ f2)), rel=1e-6, abs=1e-7)
    assert term2 > 0


@pytest.mark.numeric
def test_two_components_are_averaged(scorer):
    image = _image(80, 96, seed=4)
    left = _box((80, 96), 10, 39, 8, 37)
    right = _box((80, 96), 45, 69, 60, 89)
    segments = [_box((80, 96), 20, 29, 15, 25), _box((80, 96), 15, 35, 0, 9), _box((80, 96), 50, 79, 70, 95)]
    a = cfd.cfd_terms(image, left, segments, scorer.distance)
    b = cfd.cfd_terms(image, right, segments, scorer.distance)
    assert a[1] > 0  # the left hole has a center segment with a neighbour
    assert a != pytest.approx(b)
    terms = scorer.terms(image, left | right, segments)
    assert terms == pytest.approx(((a[0] + b[0]) / 2, (a[1] + b[1]) / 2), rel=1e-6)
    assert scorer(image, left | right, segments) == pytest.approx(sum(terms), rel=1e-6)
    # one hole made of both is another measurement
    joined = cfd.cfd_terms(image, left | right, segments, scorer.distance)
    assert joined != pytest.approx(terms)


def test_scorer_errors(scorer, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        scorer(_image(), np.zeros(SHAPE, dtype=bool), [])
    with pytest.raises(ValueError, match="empty"):
        scorer(_image(), np.full(SHAPE, 100, dtype=np.uint8), [])  # nothing above 127 in a mask file
    with pytest.raises(ValueError):
        scorer.tokens(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(OSError):
        cfd.CfdScorer(str(tmp_path / "missing"))


def test_panoptic_segments():
    from magiceraser.panoptic import PanopticResult, Segment

    seg = np.zeros((6, 6), dtype=np.int32)
    seg[:3] = 4
    seg[3:, :2] = 9
    masks = cfd.panoptic_segments(PanopticResult(seg, [Segment(id=9, label=0), Segment(id=4, label=100)]))
    assert [m.sum() for m in masks] == [6, 18]
    assert masks[1][:3].all()
