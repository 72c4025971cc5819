"""refocused_attention against the float64 transcription of docs/method.md Eq. 5-9 (refocus_reference),
and that transcription itself against the equations' case tables and stock attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from magiceraser.pipelines.erase import refocus, refocus_kernel
from magiceraser.pipelines.erase.refocus import refocused_attention
from magiceraser.pipelines.erase.refocus_reference import refocus_eq5_9, refocus_masks

pytestmark = pytest.mark.numeric


def rand_qkv(b=2, h=3, n=40, d=8, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) * scale for _ in range(3)]


# ---------------------------------------------------------------- the reference itself


def test_reference_masks_are_the_cases_of_eq_7_and_8():
    """Every (l_i, l_j) pair against the cases of docs/method.md, written out by hand, and the
    tables the optimized paths use."""
    m, p, n = 0, 1, 2
    positive = {(m, p), (p, m), (p, p)}  # Eq. 7
    negative = {(m, m), (m, n), (n, m)}  # Eq. 8
    labels = torch.tensor([[m, p, n]])
    mask_pos, mask_neg = refocus_masks(labels)
    for i in range(3):
        for j in range(3):
            assert bool(mask_pos[0, 0, i, j]) == ((i, j) in positive), (i, j)
            assert bool(mask_neg[0, 0, i, j]) == ((i, j) in negative), (i, j)
            assert refocus.POS_TABLE[i][j] == float((i, j) in positive)
            assert refocus.NEG_TABLE[i][j] == float((i, j) in negative)


@pytest.mark.parametrize("cls", [0, 1, 2])
def test_reference_with_one_label_everywhere_is_plain_attention(cls):
    """One label for every token makes M constant along each row (W_pos for p, −W_neg for m, 0 for
    n), and softmax ignores a per-row constant: the reference must equal stock attention."""
    q, k, v = (t.double() for t in rand_qkv(seed=13, scale=1.5))
    labels = torch.full((2, 40), cls)
    torch.testing.assert_close(refocus_eq5_9(q, k, v, labels), F.scaled_dot_product_attention(q, k, v), atol=1e-12, rtol=1e-10)


def test_reference_moves_attention_as_eq_9_says():
    """A mask query's logits worked out by hand: with λ_pos = λ_neg = 1, W_pos = W_neg = S_max, so its
    positive key gains S_max and its mask and negative keys lose S_max (Eq. 6-9), then Eq. 5."""
    q = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64).expand(1, 1, 3, 2)
    k = torch.tensor([[[[2.0, 0.0], [1.0, 0.0], [3.0, 0.0]]]], dtype=torch.float64)
    v = torch.eye(3, dtype=torch.float64)[None, None]
    labels = torch.tensor([[0, 1, 2]])  # key 0: m, key 1: p, key 2: n; query 0 is m
    out = refocus_eq5_9(q, k, v, labels, lambda_pos=1.0, lambda_neg=1.0)
    s = torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)  # S of query 0; S_max = 3
    logits = s + torch.tensor([-3.0, 3.0, -3.0])  # (m, m): −W_neg; (m, p): +W_pos; (m, n): −W_neg
    torch.testing.assert_close(out[0, 0, 0], torch.softmax(logits / math.sqrt(2), -1), atol=1e-15, rtol=1e-12)


# The compiled CPU kernel where this machine can build it (tests/pipelines/erase/test_refocus_kernel.py
# requires that wherever a C++ compiler and MKL-linked torch are present).
PATHS = (["kernel"] if refocus_kernel.load() is not None else []) + ["flash", "fused", "sdpa"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_direct_formula_random_labels(seed, path):
    q, k, v = rand_qkv(seed=seed, scale=1.5)
    labels = torch.randint(0, 3, (2, 40), generator=torch.Generator().manual_seed(seed))
    out = refocused_attention(q, k, v, labels, _path=path)
    torch.testing.assert_close(out.double(), refocus_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cls", [0, 1, 2])
def test_labels_all_one_class(cls, path):
    q, k, v = rand_qkv(seed=3)
    labels = torch.full((2, 40), cls)
    out = refocused_attention(q, k, v, labels, lambda_pos=0.6, lambda_neg=0.5, _path=path)
    torch.testing.assert_close(out.double(), refocus_eq5_9(q, k, v, labels, 0.6, 0.5), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_rows_with_negative_maximum_logit(path):
    q, k, v = rand_qkv(seed=4)
    q, k = q.abs() + 0.1, -(k.abs() + 0.1)  # every score negative, so S_max < 0 in every row
    assert (q @ k.transpose(-1, -2)).amax(-1).lt(0).all()
    labels = torch.randint(0, 3, (2, 40), generator=torch.Generator().manual_seed(4))
    out = refocused_attention(q, k, v, labels, _path=path)
    torch.testing.assert_close(out.double(), refocus_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


def test_refocus_changes_attention_and_batch_elements_use_their_own_labels():
    q, k, v = rand_qkv(seed=5)
    labels = torch.stack([torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(s)) for s in (6, 7)])
    out = refocused_attention(q, k, v, labels)
    plain = F.scaled_dot_product_attention(q, k, v)
    assert (out - plain).abs().max() > 1e-2
    swapped = refocused_attention(q, k, v, labels.flip(0))
    assert not torch.allclose(out, swapped)
    torch.testing.assert_close(swapped.double()[0], refocus_eq5_9(q, k, v, labels.flip(0))[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("chunk", [1, 7, 16, 40])
def test_chunked_equals_unchunked(chunk, per_head, path):
    q, k, v = rand_qkv(seed=8, n=40)
    labels = torch.randint(0, 3, (2, 40), generator=torch.Generator().manual_seed(8))
    whole = refocused_attention(q, k, v, labels, chunk_size=40, per_head=False, _path=path)
    chunked = refocused_attention(q, k, v, labels, chunk_size=chunk, per_head=per_head, _path=path)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    s_max, s_min = refocus.score_extrema(q, k, chunk, per_head)
    s = q @ k.transpose(-1, -2)
    torch.testing.assert_close(s_max, s.amax(-1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(s_min, s.amin(-1), atol=1e-6, rtol=1e-6)


def test_fused_path_float64_large_logits_and_default_dispatch():
    """Fused path in float64 with logits spanning hundreds (exp underflow clamps), and that CPU
    float64 inputs of this size take the fused path by default."""
    q, k, v = rand_qkv(b=2, h=2, n=70, d=16, seed=11, scale=4.0)
    labels = torch.randint(0, 3, (2, 70), generator=torch.Generator().manual_seed(11))
    ref = refocus_eq5_9(q, k, v, labels)
    out = refocused_attention(q.double(), k.double(), v.double(), labels, chunk_size=9, _path="fused")
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)
    out32 = refocused_attention(q, k, v, labels, chunk_size=9, _path="fused")
    torch.testing.assert_close(out32.double(), ref, atol=2e-4, rtol=1e-3)
    # float64 on CPU takes the fused path by default (float32 the compiled kernel where it exists).
    torch.testing.assert_close(refocused_attention(q.double(), k.double(), v.double(), labels, chunk_size=9), out, atol=0, rtol=0)
    with pytest.raises(ValueError, match="_path"):
        refocused_attention(q, k, v, labels, _path="naive")


def test_fused_path_holds_one_chunk_of_scores(monkeypatch):
    """The fused path's score products are at most chunk × N (one (batch, head)); SDPA unused."""
    b, h, n, d, chunk = 2, 2, 64, 8, 8
    q, k, v = rand_qkv(b, h, n, d, seed=12)
    labels = torch.randint(0, 3, (b, n), generator=torch.Generator().manual_seed(12))
    seen = {"scores": 0, "sdpa": 0}
    real_mm = torch.mm

    def spy_mm(a, bb, *args, **kw):
        out = real_mm(a, bb, *args, **kw)
        seen["scores"] = max(seen["scores"], out.numel())
        return out

    def spy_sdpa(*args, **kw):
        seen["sdpa"] += 1
        raise AssertionError("SDPA called by the fused path")

    monkeypatch.setattr(refocus.torch, "mm", spy_mm)
    monkeypatch.setattr(refocus.F, "scaled_dot_product_attention", spy_sdpa)
    out = refocused_attention(q, k, v, labels, chunk_size=chunk, _path="fused")
    monkeypatch.undo()
    assert 0 < seen["scores"] <= chunk * n < b * h * n * n
    assert seen["sdpa"] == 0
    torch.testing.assert_close(out.double(), refocus_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("per_head", [True, False])
def test_never_holds_full_score_or_mask_matrix(monkeypatch, per_head):
    """Scores exist only chunk by chunk; SDPA gets no N×N mask."""
    b, h, n, d, chunk = 1, 2, 64, 8, 8
    q, k, v = rand_qkv(b, h, n, d, seed=9)
    labels = torch.randint(0, 3, (b, n), generator=torch.Generator().manual_seed(9))
    seen = {"matmul": 0, "sdpa_masks": []}
    real_matmul, real_sdpa = torch.matmul, F.scaled_dot_product_attention

    def spy_matmul(a, bb, *args, **kw):
        out = real_matmul(a, bb, *args, **kw)
        seen["matmul"] = max(seen["matmul"], out.numel())
        return out

    def spy_sdpa(*args, **kw):
        seen["sdpa_masks"].append(kw.get("attn_mask"))
        return real_sdpa(*args, **kw)

    monkeypatch.setattr(refocus.torch, "matmul", spy_matmul)
    monkeypatch.setattr(refocus.F, "scaled_dot_product_attention", spy_sdpa)
    out = refocused_attention(q, k, v, labels, chunk_size=chunk, per_head=per_head, _path="sdpa")
    monkeypatch.undo()
    assert seen["matmul"] == (1 if per_head else b * h) * chunk * n < b * h * n * n
    assert seen["sdpa_masks"] == [None]
    torch.testing.assert_close(out.double(), refocus_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


def test_default_chunk_bounds_scores():
    assert refocus.default_chunk_size(16, 4096, 4096) * 16 * 4096 <= refocus.DEFAULT_SCORE_BUDGET
    assert refocus.default_chunk_size(1, 4096, 4096, refocus.CPU_CHUNK_SCORES) == 64
    assert refocus.default_chunk_size(1, 10, 10) == 10


def test_rejects_bad_shapes_and_labels():
    q, k, v = rand_qkv()
    with pytest.raises(ValueError, match="labels must have shape"):
        refocused_attention(q, k, v, torch.zeros(2, 39, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        refocused_attention(q, k, v, torch.zeros(2, 40))
    with pytest.raises(ValueError, match="self-attention"):
        refocused_attention(q, k[:, :, :10], v, torch.zeros(2, 40, dtype=torch.long))


# ---------------------------------------------------------------- the flash-LSE path (issue 14)


def _labels(b, n, seed, classes=(0, 1, 2)):
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(classes), (b, n), generator=g)
    return torch.tensor(classes)[pick]


@pytest.mark.parametrize("classes", [(0, 2), (1, 2), (0, 1), (1,)])
def test_flash_path_with_empty_label_groups(classes):
    """A missing key label must be skipped: the CPU flash kernel crashes the process on 0 keys."""
    q, k, v = rand_qkv(b=2, h=2, n=33, d=8, seed=20, scale=1.5)
    labels = _labels(2, 33, 20, classes)
    out = refocused_attention(q, k, v, labels, _path="flash")
    torch.testing.assert_close(out.double(), refocus_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


def test_flash_path_rows_with_different_groups_present():
    """Batch row 0 has every label, row 1 only negatives, row 2 no negatives: each uses its own groups."""
    q, k, v = rand_qkv(b=3, h=2, n=30, d=8, seed=21)
    labels = torch.stack([_labels(1, 30, 21)[0], torch.full((30,), 2), _labels(1, 30, 22, (0, 1))[0]])
    out = refocused_attention(q, k, v, labels, _path="flash")
    torch.testing.assert_close(out.double(), refocus_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("n,d,heads", [(96, 40, 8), (64, 80, 8), (40, 160, 2)])
def test_flash_path_unet_head_sizes(n, d, heads):
    """SD 1.5's self-attention head sizes (40, 80, 160), batch and heads > 1, both λ settings."""
    q, k, v = rand_qkv(b=2, h=heads, n=n, d=d, seed=23, scale=0.6)
    labels = _labels(2, n, 23)
    for lp, ln in ((0.8, 1.0), (0.3, 0.5)):
        out = refocused_attention(q, k, v, labels, lp, ln, _path="flash")
        torch.testing.assert_close(out.double(), refocus_eq5_9(q, k, v, labels, lp, ln), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 5, 13, 41, 1000])
@pytest.mark.parametrize("per_head", [True, False])
def test_flash_path_chunk_boundaries(chunk, per_head):
    """Extrema chunks that do not divide N (41 queries) give the same result as one chunk."""
    q, k, v = rand_qkv(b=2, h=3, n=41, d=8, seed=24, scale=1.5)
    labels = _labels(2, 41, 24)
    whole = refocused_attention(q, k, v, labels, chunk_size=41, per_head=False, _path="flash")
    chunked = refocused_attention(q, k, v, labels, chunk_size=chunk, per_head=per_head, _path="flash")
    # Rounding only: a 1-row product (chunk 1) rounds S_max differently from a blocked one.
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked.double(), refocus_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


def test_flash_path_float64_large_logits_and_value_head_size():
    """float64 to 1e-10 with logits spanning hundreds, and values narrower than the keys (dv < d)."""
    q, k, v = rand_qkv(b=2, h=2, n=70, d=16, seed=25, scale=4.0)
    labels = _labels(2, 70, 25)
    out = refocused_attention(q.double(), k.double(), v.double(), labels, chunk_size=9, _path="flash")
    torch.testing.assert_close(out, refocus_eq5_9(q, k, v, labels), atol=1e-10, rtol=1e-9)
    narrow = v[..., :5]
    out = refocused_attention(q, k, narrow, labels, _path="flash")
    assert out.shape == (2, 2, 70, 5)
    torch.testing.assert_close(out.double(), refocus_eq5_9(q, k, narrow, labels), atol=2e-4, rtol=1e-3)


def test_flash_path_shared_labels_of_a_cfg_pair():
    """Labels expanded over the batch (the processor's CFG pair) take one call per group for the
    whole batch; the result equals row-by-row labels."""
    q, k, v = rand_qkv(b=2, h=2, n=48, d=8, seed=26)
    row = _labels(1, 48, 26)[0]
    shared = refocused_attention(q, k, v, row.unsqueeze(0).expand(2, 48), _path="flash")
    separate = torch.cat([refocused_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], row[None], _path="flash") for i in range(2)])
    torch.testing.assert_close(shared, separate, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(shared.double(), refocus_eq5_9(q, k, v, row.expand(2, 48)), atol=2e-5, rtol=1e-4)


def test_flash_path_holds_one_chunk_of_scores_and_one_attention_of_keys(monkeypatch):
    """Scores exist only chunk by chunk (the extrema pass); the flash calls see each key once per
    batch row, so together they do the work of one attention."""
    b, h, n, d, chunk = 2, 2, 64, 8, 8
    q, k, v = rand_qkv(b, h, n, d, seed=27)
    labels = _labels(b, n, 27)
    seen = {"matmul": 0, "keys": 0, "sdpa": 0}
    real_matmul, real_flash = torch.matmul, refocus._cpu_flash_kernel()

    def spy_matmul(a, bb, *args, **kw):
        out = real_matmul(a, bb, *args, **kw)
        seen["matmul"] = max(seen["matmul"], out.numel())
        return out

    def spy_flash(qq, kk, vv, **kw):
        seen["keys"] += kk.shape[0] * kk.shape[2]
        return real_flash(qq, kk, vv, **kw)

    def spy_sdpa(*args, **kw):
        seen["sdpa"] += 1
        raise AssertionError("SDPA called by the flash path")

    monkeypatch.setattr(refocus.torch, "matmul", spy_matmul)
    monkeypatch.setattr(refocus, "_cpu_flash_kernel", lambda: spy_flash)
    monkeypatch.setattr(refocus.F, "scaled_dot_product_attention", spy_sdpa)
    out = refocused_attention(q, k, v, labels, chunk_size=chunk, per_head=True, _path="flash")
    monkeypatch.undo()
    assert seen["matmul"] == chunk * n < b * h * n * n
    assert seen["keys"] == b * n and seen["sdpa"] == 0
    torch.testing.assert_close(out.double(), refocus_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


def test_auto_dispatch_by_size_dtype_and_device(monkeypatch):
    q, k, v = rand_qkv(b=1, h=1, n=16, d=8)
    if refocus_kernel.load() is not None:  # float32 on CPU takes the compiled kernel, float64 not
        assert refocus._auto_path(q, k, v) == "kernel"
        assert refocus._auto_path(q.double(), k.double(), v.double()) == "fused"
    monkeypatch.setattr(refocus_kernel, "load", lambda: None)  # no compiler here: the stock-kernel paths
    monkeypatch.setattr(refocus, "FLASH_MIN_KEYS", 16)
    assert refocus._auto_path(q, k, v) == "flash"
    monkeypatch.setattr(refocus, "FLASH_MIN_KEYS", 17)
    assert refocus._auto_path(q, k, v) == "fused"
    assert refocus._auto_path(q.half(), k.half(), v.half()) == "sdpa"
    assert refocus._auto_path(q.bfloat16(), k.bfloat16(), v.bfloat16()) == "sdpa"
    monkeypatch.setattr(refocus, "FLASH_MIN_KEYS", 16)
    monkeypatch.setattr(refocus, "_cpu_flash_kernel", lambda: None)  # an older torch: fused instead
    assert refocus._auto_path(q, k, v) == "fused"
    with pytest.raises(RuntimeError, match="fused"):
        refocused_attention(q, k, v, torch.zeros(1, 16, dtype=torch.long), _path="flash")


# ---------------------------------------------------------------- the CUDA path (gpu_acceptance runs these)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,d", [(1024, 40), (256, 80), (64, 160)])
def test_cuda_path_against_float64_reference(n, d, dtype):
    """The SDPA path on CUDA (head size padded to a multiple of 8) at the UNet's head sizes."""
    q, k, v = rand_qkv(b=2, h=8, n=n, d=d, seed=30, scale=0.5)
    labels = _labels(2, n, 30)
    ref = refocus_eq5_9(q, k, v, labels)
    cuda = [t.to("cuda", dtype) for t in (q, k, v)]
    out = refocused_attention(*cuda, labels.cuda())
    assert out.dtype == dtype and out.device.type == "cuda"
    tol = {torch.float16: 5e-3, torch.bfloat16: 4e-2, torch.float32: 1e-4}[dtype]
    err = (out.double().cpu() - ref).abs().max().item()
    assert err < tol, f"max abs error {err} vs float64 reference (tolerance {tol})"
