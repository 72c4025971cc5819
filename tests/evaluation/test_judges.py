"""Success-rate judges: the detector judge on hand-built segmentations, the VLM judge's pure parts,
and VlmJudge on the tiny LLaVA against an independent forward pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from magiceraser import coco
from magiceraser.evaluation import judges
from magiceraser.evaluation.judges import (
    DETECTOR_DILATION,
    DETECTOR_THRESHOLD,
    answer_token_id,
    class_phrase,
    detector_region,
    detector_verdict,
    judge_crop,
    target_labels,
    top_logprobs_to_logits,
    vlm_verdict,
    yes_probability,
)
from magiceraser.evaluation.vlm_judge import VlmJudge
from magiceraser.panoptic import PanopticResult, Segment

DOG, CAT, PERSON = (coco.BY_NAME[n].label for n in ("dog", "cat", "person"))
GRASS, TABLE = coco.BY_NAME["grass-merged"].label, coco.BY_NAME["table-merged"].label


def _pan(shape, *pieces):
    """A PanopticResult from (label, (rows slice, cols slice)) pieces; later pieces overwrite earlier ones."""
    seg = np.zeros(shape, np.int32)
    segments = []
    for i, (label, (rows, cols)) in enumerate(pieces, start=1):
        seg[rows, cols] = i
        segments.append(Segment(i, label))
    return PanopticResult(seg, segments)


def _box_mask(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


MASK = _box_mask((64, 64), slice(20, 40), slice(20, 40))  # 400 px


# -- detector judge -----------------------------------------------------------------------------

def test_detector_target_class_inside_mask_fails():
    pan = _pan((64, 64), (GRASS, (slice(None), slice(None))), (DOG, (slice(20, 40), slice(20, 40))))
    assert detector_verdict(MASK, pan, frozenset({DOG}), dilation=0, threshold=0.1) == (False, 1.0)
    ok, fraction = detector_verdict(MASK, pan, frozenset({DOG}), dilation=8, threshold=0.1)
    region = detector_region(MASK, 8).sum()
    assert not ok and fraction == pytest.approx(400 / region) and 400 / 36**2 <= fraction < 1.0


def test_detector_other_class_only_succeeds():
    pan = _pan((64, 64), (GRASS, (slice(None), slice(None))), (CAT, (slice(15, 45), slice(15, 45))))
    assert detector_verdict(MASK, pan, frozenset({DOG}), DETECTOR_DILATION, DETECTOR_THRESHOLD) == (True, 0.0)
    # Stuff is never counted, even in any-thing-class mode.
    grass_only = _pan((64, 64), (GRASS, (slice(None), slice(None))))
    assert detector_verdict(MASK, grass_only, None, DETECTOR_DILATION, DETECTOR_THRESHOLD) == (True, 0.0)


def test_detector_counts_segment_in_dilation_ring():
    # A dog strip 3..5 px right of the mask's last column (39): outside the mask, inside an 8 px ring.
    pan = _pan((64, 64), (DOG, (slice(20, 40), slice(42, 45))))
    labels = frozenset({DOG})
    assert detector_verdict(MASK, pan, labels, dilation=0, threshold=0.1) == (True, 0.0)
    assert detector_verdict(MASK, pan, labels, dilation=2, threshold=0.1) == (True, 0.0)  # ring too thin
    ok, fraction = detector_verdict(MASK, pan, labels, dilation=5, threshold=0.1)
    assert fraction == pytest.approx(60 / detector_region(MASK, 5).sum()) and ok  # 60 px: about 0.07
    ok, fraction = detector_verdict(MASK, pan, labels, dilation=5, threshold=0.05)
    assert not ok and fraction > 0.05


def test_detector_region_is_a_disc_of_the_dilation_radius():
    point = _box_mask((41, 41), slice(20, 21), slice(20, 21))
    yy, xx = np.mgrid[:41, :41]
    r = np.hypot(yy - 20, xx - 20)
    for d in (3, 8):
        region = detector_region(point, d)
        assert region[r <= d].all() and not region[r > d + 0.5].any()
    assert (detector_region(point, 0) == point).all()


def test_detector_any_thing_class_mode():
    pan = _pan(
        (64, 64),
        (GRASS, (slice(None), slice(None))),
        (CAT, (slice(20, 30), slice(20, 40))),  # 200 px
        (PERSON, (slice(30, 35), slice(20, 40))),  # 100 px
        (TABLE, (slice(35, 40), slice(20, 40))),  # stuff: not counted
    )
    ok, fraction = detector_verdict(MASK, pan, None, dilation=0, threshold=0.5)
    assert fraction == pytest.approx(300 / 400) and not ok
    assert detector_verdict(MASK, pan, frozenset({CAT}), dilation=0, threshold=0.5) == (False, 0.5)  # at threshold
    assert detector_verdict(MASK, pan, frozenset({CAT, DOG}), dilation=0, threshold=0.6) == (True, 0.5)
    assert detector_verdict(MASK, pan, frozenset({DOG}), dilation=0, threshold=0.5) == (True, 0.0)


def test_detector_threshold_edge_is_a_failure():
    mask = _box_mask((30, 30), slice(10, 20), slice(10, 20))  # 100 px
    pan = _pan((30, 30), (DOG, (slice(10, 11), slice(10, 20))))  # 10 px: fraction exactly 0.1
    assert detector_verdict(mask, pan, frozenset({DOG}), dilation=0, threshold=0.1) == (False, 0.1)
    assert detector_verdict(mask, pan, frozenset({DOG}), dilation=0, threshold=0.1 + 1e-12)[0]
    with pytest.raises(ValueError, match="non-empty"):
        detector_verdict(np.zeros((30, 30), bool), pan, None, 0, 0.1)
    with pytest.raises(ValueError, match="shape"):
        detector_verdict(np.ones((30, 31), bool), pan, None, 0, 0.1)


def test_detector_defaults():
    assert (DETECTOR_DILATION, DETECTOR_THRESHOLD) == (8, 0.1)
    # The function's defaults are those constants: a strip 6 px outside the mask counts only with >= 6 px dilation.
    pan = _pan((64, 64), (DOG, (slice(20, 40), slice(45, 48))))
    assert detector_verdict(MASK, pan, frozenset({DOG})) == detector_verdict(MASK, pan, frozenset({DOG}), 8, 0.1)
    assert detector_verdict(MASK, pan, frozenset({DOG}))[1] > 0


def test_target_labels():
    assert target_labels("person") == frozenset({PERSON})
    assert target_labels("dining table") == frozenset({coco.BY_NAME["dining table"].label})
    assert target_labels("Cat") == frozenset({CAT})  # OpenImages spelling of a COCO thing
    assert target_labels("Dining table") == frozenset({coco.BY_NAME["dining table"].label})
    assert target_labels("TV") == frozenset({coco.BY_NAME["tv"].label})
    assert target_labels("dining table-merged") == frozenset({coco.BY_NAME["dining table"].label})
    for stuff in ("table-merged", "sky-other-merged", "wall-brick", "Sky", "brick wall"):
        assert target_labels(stuff) is None, stuff  # stuff: any thing class instead
    for other in ("Mobile phone", "/m/04h7h", "", None):
        assert target_labels(other) is None, other


def test_detector_judge_with_mask2former(tiny_mask2former):
    import torch

    from magiceraser.models.segmenter import Mask2FormerSegmenter

    seg = Mask2FormerSegmenter(str(tiny_mask2former), device="cpu", batch_size=2, mask_threshold=0.0,
                               overlap_mask_area_threshold=0.0)
    judge = judges.DetectorJudge(seg)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    mask = _box_mask((48, 64), slice(16, 30), slice(20, 40))
    head = seg.model.class_predictor  # every query one class: a known segmentation
    for name, expected in (("dog", [(False, 1.0), (True, 0.0), (False, 1.0)]), ("grass-merged", [(True, 0.0)] * 3)):
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-20.0)
            head.bias[coco.BY_NAME[name].label] = 20.0
        assert judge.judge(images, [mask] * 3, ["dog", "cat", "Mobile phone"]) == expected, name
    assert judge(images[0], mask, "Dog") == (True, 0.0)  # grass still: nothing there


# -- VLM judge: pure parts ------------------------------------------------------------------------

def _coords_image(h, w):
    """Pixel (y, x) holds (y, x, 0): a crop tells where it came from."""
    yy, xx = np.mgrid[:h, :w]
    return np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.uint8)


def _where(crop):
    return int(crop[0, 0, 0]), int(crop[0, 0, 1]), crop.shape[0], crop.shape[1]  # top, left, h, w


def test_judge_crop_geometry():
    img = _coords_image(100, 120)
    # 16x16 mask, context 0.5: a 32 px square centred on the mask.
    assert _where(judge_crop(img, _box_mask((100, 120), slice(20, 36), slice(30, 46)), 0.5)) == (12, 22, 32, 32)
    # 4 x 10 mask, context 1: a 30 px square around its centre (row 42, col 55).
    assert _where(judge_crop(img, _box_mask((100, 120), slice(40, 44), slice(50, 60)), 1.0)) == (27, 40, 30, 30)
    # context 0: the tight square around the long side.
    assert _where(judge_crop(img, _box_mask((100, 120), slice(40, 44), slice(50, 60)), 0.0)) == (37, 50, 10, 10)
    # At the corner: shifted into the image, still square.
    assert _where(judge_crop(img, _box_mask((100, 120), slice(0, 10), slice(0, 10)), 1.0)) == (0, 0, 30, 30)
    assert _where(judge_crop(img, _box_mask((100, 120), slice(95, 100), slice(110, 120)), 1.0)) == (70, 90, 30, 30)
    # Square larger than the image's height: full height, the width stays the side.
    flat = _coords_image(40, 100)
    assert _where(judge_crop(flat, _box_mask((40, 100), slice(10, 30), slice(40, 60)), 1.0)) == (0, 20, 40, 60)
    crop = judge_crop(img, _box_mask((100, 120), slice(20, 36), slice(30, 46)), 0.5)
    assert crop.dtype == np.uint8 and crop.flags.c_contiguous


def test_judge_crop_always_contains_the_mask():
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = rng.integers(8, 60, 2)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        mask = _box_mask((h, w), slice(y0, y1), slice(x0, x1))
        top, left, ch, cw = _where(judge_crop(_coords_image(h, w), mask, float(rng.uniform(0, 2))))
        assert top <= y0 and left <= x0 and top + ch >= y1 and left + cw >= x1
        assert ch == cw or (ch < cw and ch == h) or (cw < ch and cw == w)  # square unless the image is smaller
    with pytest.raises(ValueError, match="non-empty"):
        judge_crop(_coords_image(10, 10), np.zeros((10, 10), bool), 1.0)
    with pytest.raises(ValueError, match="context"):
        judge_crop(_coords_image(10, 10), np.ones((10, 10), bool), -0.1)


def test_class_phrase():
    assert class_phrase("dining table", "object") == "dining table"
    assert class_phrase("sky-other-merged", "object") == "sky"
    assert class_phrase("wall-brick", "object") == "brick wall"
    assert class_phrase("table-merged", "object") == "table"
    assert class_phrase("Cat", "object") == "cat"
    assert class_phrase("Human face", "object") == "human face"
    assert class_phrase("Sky-Other-Merged", "object") == "sky"
    assert class_phrase("T-shirt", "object") == "t-shirt"
    for missing in (None, "", "  ", "/m/04h7h", "/g/11b6vz"):
        assert class_phrase(missing, "thing") == "thing", missing


@pytest.mark.numeric
def test_yes_probability_matches_direct_float64_softmax():
    cases = [([2.0, 1.0], [0.5, -1.0]), ([3.5], [3.5]), ([0.0, 0.0], [0.0]), ([1000.0, 999.0], [1001.0, -5.0])]
    for yes, no in cases:
        logits = np.array(yes + no, dtype=np.float64)
        e = np.exp(logits - logits.max())
        direct = e[: len(yes)].sum() / e.sum()
        assert yes_probability(np.array(yes), np.array(no)) == pytest.approx(direct, rel=1e-12, abs=0)
    assert yes_probability(np.array([0.0, 0.0]), np.array([0.0])) == pytest.approx(2 / 3, rel=1e-15)
    # float32 logits, float64 maths: 1 - e^-30 is not rounded to 1.
    p = yes_probability(np.float32([0.0]), np.float32([-30.0]))
    assert isinstance(p, float) and p < 1.0 and 1.0 - p == pytest.approx(math.exp(-30) / (1 + math.exp(-30)), rel=1e-6)
    with pytest.raises(ValueError):
        yes_probability(np.array([]), np.array([1.0]))


def test_vlm_verdict():
    assert vlm_verdict(0.2, 0.5) is True
    assert vlm_verdict(0.5, 0.5) is False  # at the threshold: the object is judged present
    assert vlm_verdict(0.9, 0.5) is False
    assert vlm_verdict(0.9, 0.95) is True
    p = yes_probability(np.array([1.0]), np.array([2.0]))  # 1 / (1 + e)
    assert vlm_verdict(p, 0.27) is True and vlm_verdict(p, 0.26) is False
    with pytest.raises(ValueError):
        vlm_verdict(float("nan"), 0.5)


def test_top_logprobs_missing_ids_get_the_smallest_returned():
    top = {5: -0.1, 7: -2.5, 9: -4.0}
    np.testing.assert_array_equal(top_logprobs_to_logits(top, [7, 11]), [-2.5, -4.0])
    p = yes_probability(top_logprobs_to_logits(top, [5, 12]), top_logprobs_to_logits(top, [9]))
    direct = (math.exp(-0.1) + math.exp(-4.0)) / (math.exp(-0.1) + 2 * math.exp(-4.0))
    assert p == pytest.approx(direct, rel=1e-12)
    with pytest.raises(ValueError):
        top_logprobs_to_logits({}, [1])


def _toy_llama_tokenizers():
    """Two Llama-style sentencepiece-BPE tokenizers: transformers' LlamaTokenizer (Metaspace, prepend
    'first') and the legacy tokenizer.json layout (normaliser Prepend('▁') + Replace(' ', '▁'))."""
    from tokenizers import Tokenizer, models, normalizers
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for c in sorted(set("USER:<image>\nIsthereacat?ASSISTANT:YesNo")):
        vocab.setdefault(c, len(vocab))
    merges = [("▁", "▁"), ("e", "s"), ("Y", "es"), ("▁", "Yes"), ("N", "o"), ("▁", "No")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    current = LlamaTokenizer(vocab=dict(vocab), merges=list(merges))
    raw = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    raw.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    legacy = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    for tok in (current, legacy):
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return vocab, current, legacy


def test_answer_token_id_is_the_generated_token_for_llama_and_byte_level(tiny_llava):
    from transformers import AutoProcessor

    prompt = "USER: <image>\nIs there a cat? ASSISTANT:"
    vocab, current, legacy = _toy_llama_tokenizers()
    for tok in (current, legacy):
        assert answer_token_id(tok, prompt, "Yes") == vocab["▁Yes"]
        assert answer_token_id(tok, prompt, "No") == vocab["▁No"]
    # The pitfall avoided: the legacy layout encodes a bare " Yes" as '▁▁' + 'Yes'.
    assert legacy(" Yes", add_special_tokens=False)["input_ids"][0] != vocab["▁Yes"]
    # Byte-level BPE (the tiny LLaVA): the answer carries the space, the bare word does not.
    tok = AutoProcessor.from_pretrained(tiny_llava).tokenizer
    assert answer_token_id(tok, prompt, "Yes") == tok.convert_tokens_to_ids("ĠYes")
    assert tok("Yes", add_special_tokens=False)["input_ids"][0] != tok.convert_tokens_to_ids("ĠYes")
    # A prompt ending in a space: byte-level BPE would merge that space into the answer ('ĠYes'), so
    # the prompt's last token is not what the model saw: refused.
    with pytest.raises(ValueError, match="'Yes' does not tokenize apart"):
        answer_token_id(tok, prompt + " ", "Yes")


# -- VlmJudge on the tiny LLaVA -------------------------------------------------------------------

# The tiny byte-level tokenizer learnt the answers as whole tokens, as LLaVA's real vocabulary has them.
YES, NO = ("Yes", "yes"), ("No", "no")
YES_TOKENS, NO_TOKENS = ["ĠYes", "Ġyes"], ["ĠNo", "Ġno"]


@pytest.fixture(scope="module")
def vlm_judge(tiny_llava):
    return VlmJudge(str(tiny_llava), device="cpu", yes_words=YES, no_words=NO, batch_size=3, context=0.5)


def _vlm_inputs(n=5):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(n)]
    masks = [_box_mask((64, 80), slice(20, 36), slice(30 + i, 46 + i)) for i in range(n)]
    classes = ["cat", "Dining table", None, "sky-other-merged", "/m/04h7h"][:n]
    return images, masks, classes


def test_vlm_judge_refuses_clashing_yes_no_tokens(tiny_llava):
    assert VlmJudge(str(tiny_llava), device="cpu").yes_ids  # the defaults are distinct tokens
    with pytest.raises(ValueError, match=r"yes word 'grass' and no word 'gravel' share the first answer token 'Ġgra'"):
        VlmJudge(str(tiny_llava), device="cpu", yes_words=("grass",), no_words=("gravel",))
    with pytest.raises(ValueError, match="yes word 'snow' and no word 'snow'") as exc:
        VlmJudge(str(tiny_llava), device="cpu", yes_words=("snow",), no_words=("sky", "snow"))
    assert "'sky'" not in str(exc.value)  # only the clashing pair is named


@pytest.mark.numeric
def test_vlm_judge_p_yes_equals_an_independent_forward_pass(vlm_judge, tiny_llava):
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_llava)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava).eval()
    yes_ids = processor.tokenizer.convert_tokens_to_ids(YES_TOKENS)
    no_ids = processor.tokenizer.convert_tokens_to_ids(NO_TOKENS)
    assert (list(vlm_judge.yes_ids), list(vlm_judge.no_ids)) == (yes_ids, no_ids)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    mask = _box_mask((64, 80), slice(20, 36), slice(30, 46))
    crop = image[12:44, 22:54]  # context 0.5: the 32 px square centred on the 16 px mask
    text = "USER: <image>\nIs there a dining table in this image? Answer yes or no. ASSISTANT:"
    inputs = processor(images=[Image.fromarray(crop)], text=[text], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].double().numpy()
    z = logits[yes_ids + no_ids]
    e = np.exp(z - z.max())
    expected = e[:2].sum() / e.sum()
    got = vlm_judge.p_yes([image], [mask], ["dining table"])[0]
    assert got == pytest.approx(expected, rel=1e-6, abs=0)
    success, p = vlm_judge(image, mask, "Dining table")  # OpenImages spelling: the same question
    assert p == pytest.approx(expected, rel=1e-6, abs=0) and success == (expected < 0.5)


@pytest.mark.numeric
def test_vlm_judge_batched_equals_one_at_a_time(vlm_judge):
    images, masks, classes = _vlm_inputs()
    batched = vlm_judge.p_yes(images, masks, classes)  # batch_size 3, prompts of several lengths
    single = [vlm_judge.p_yes([im], [m], [c])[0] for im, m, c in zip(images, masks, classes)]
    assert len(batched) == 5 and all(0.0 < p < 1.0 for p in batched)
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-7)
    assert vlm_judge.p_yes(images[::-1], masks[::-1], classes[::-1]) == pytest.approx(batched[::-1], abs=1e-7)


@pytest.mark.numeric
def test_vlm_judge_prompt_and_class_change_p_yes(tiny_llava, vlm_judge):
    images, masks, classes = _vlm_inputs(2)
    base = vlm_judge.p_yes(images, masks, classes)
    other = VlmJudge(str(tiny_llava), device="cpu", yes_words=YES, no_words=NO, context=0.5,
                            prompt="Do you see a {object} here? Answer yes or no.")
    changed = other.p_yes(images, masks, classes)
    assert all(abs(a - b) > 1e-5 for a, b in zip(base, changed))
    assert abs(vlm_judge.p_yes(images[:1], masks[:1], ["sea"])[0] - base[0]) > 1e-5
    with pytest.raises(ValueError, match="object"):
        VlmJudge(str(tiny_llava), device="cpu", yes_words=YES, no_words=NO, prompt="Is it there?")


def test_vlm_judge_counts_a_shared_yes_token_once(tiny_llava, vlm_judge):
    # "Yess" and "Yes" both start with 'ĠYes' in answer position: one yes token, not two.
    dup = VlmJudge(str(tiny_llava), device="cpu", yes_words=(*YES, "Yess"), no_words=NO, context=0.5)
    assert dup.yes_ids == vlm_judge.yes_ids
    images, masks, classes = _vlm_inputs(2)
    assert dup.p_yes(images, masks, classes) == vlm_judge.p_yes(images, masks, classes)


def test_vllm_backend_without_vllm_is_a_clear_import_error(tiny_llava, monkeypatch):
    import sys

    from magiceraser.models.captioner import VllmCaptioner

    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without the extra
    with pytest.raises(ImportError, match=r"metrics.judge_vlm_backend=vllm needs vLLM: pip install -e \"\.\[vllm\]\""):
        VlmJudge(str(tiny_llava), backend="vllm")
    with pytest.raises(ImportError, match=r"captioner.backend=vllm needs vLLM.*or use captioner.backend=transformers"):
        VllmCaptioner(str(tiny_llava))


@pytest.mark.gpu
def test_vllm_judge_matches_transformers_on_gpu(tiny_llava):
    pytest.importorskip("vllm")
    images, masks, classes = _vlm_inputs(3)
    vllm_judge = VlmJudge(str(tiny_llava), backend="vllm", yes_words=YES, no_words=NO, context=0.5,
                                 gpu_memory_utilization=0.3, max_model_len=256)
    hf_judge = VlmJudge(str(tiny_llava), device="cuda", dtype="float32", yes_words=YES, no_words=NO, context=0.5)
    assert (vllm_judge.yes_ids, vllm_judge.no_ids) == (hf_judge.yes_ids, hf_judge.no_ids)
    # The tiny model's near-flat distribution may leave a yes/no token out of the top 20: compare loosely.
    np.testing.assert_allclose(vllm_judge.p_yes(images, masks, classes), hf_judge.p_yes(images, masks, classes), atol=0.05)
