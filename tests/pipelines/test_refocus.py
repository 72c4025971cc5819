"""refocused_attention against a direct float64 transcription of method.md Eq. 5-9."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from magiceraser.pipelines.erase import refocus
from magiceraser.pipelines.erase.refocus import refocused_attention

pytestmark = pytest.mark.numeric


def direct_eq5_9(q, k, v, labels, lambda_pos=0.8, lambda_neg=1.0):
    """Eq. 5-9 written out with full N×N matrices in float64, label tests spelled out."""
    q, k, v = q.double(), k.double(), v.double()
    d = q.shape[-1]
    s = q @ k.transpose(-1, -2)
    s_max = s.max(dim=-1, keepdim=True).values
    s_min = s.min(dim=-1, keepdim=True).values
    li = labels[:, None, :, None]
    lj = labels[:, None, None, :]
    m, p, n = 0, 1, 2
    mask_pos = ((li == m) & (lj == p)) | ((li == p) & ((lj == m) | (lj == p)))  # Eq. 7
    mask_neg = ((li == m) & ((lj == m) | (lj == n))) | ((li == n) & (lj == m))  # Eq. 8
    w_pos = (1 - lambda_pos) * s_min + lambda_pos * s_max  # Eq. 9
    w_neg = lambda_neg * s_max
    big_m = w_pos * mask_pos.double() - w_neg * mask_neg.double()  # Eq. 6
    return torch.softmax((s + big_m) / math.sqrt(d), dim=-1) @ v  # Eq. 5


def rand_qkv(b=2, h=3, n=40, d=8, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) * scale for _ in range(3)]


PATHS = ["fused", "sdpa"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_direct_formula_random_labels(seed, path):
    q, k, v = rand_qkv(seed=seed, scale=1.5)
    labels = torch.randint(0, 3, (2, 40), generator=torch.Generator().manual_seed(seed))
    out = refocused_attention(q, k, v, labels, _path=path)
    torch.testing.assert_close(out.double(), direct_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cls", [0, 1, 2])
def test_labels_all_one_class(cls, path):
    q, k, v = rand_qkv(seed=3)
    labels = torch.full((2, 40), cls)
    out = refocused_attention(q, k, v, labels, lambda_pos=0.6, lambda_neg=0.5, _path=path)
    torch.testing.assert_close(out.double(), direct_eq5_9(q, k, v, labels, 0.6, 0.5), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_rows_with_negative_maximum_logit(path):
    q, k, v = rand_qkv(seed=4)
    q, k = q.abs() + 0.1, -(k.abs() + 0.1)  # every score negative, so S_max < 0 in every row
    assert (q @ k.transpose(-1, -2)).amax(-1).lt(0).all()
    labels = torch.randint(0, 3, (2, 40), generator=torch.Generator().manual_seed(4))
    out = refocused_attention(q, k, v, labels, _path=path)
    torch.testing.assert_close(out.double(), direct_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


def test_refocus_changes_attention_and_batch_elements_use_their_own_labels():
    q, k, v = rand_qkv(seed=5)
    labels = torch.stack([torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(s)) for s in (6, 7)])
    out = refocused_attention(q, k, v, labels)
    plain = F.scaled_dot_product_attention(q, k, v)
    assert (out - plain).abs().max() > 1e-2
    swapped = refocused_attention(q, k, v, labels.flip(0))
    assert not torch.allclose(out, swapped)
    torch.testing.assert_close(swapped.double()[0], direct_eq5_9(q, k, v, labels.flip(0))[0], atol=2e-5, rtol=1e-4)


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
    float32 inputs take the fused path by default while half precision takes SDPA."""
    q, k, v = rand_qkv(b=2, h=2, n=70, d=16, seed=11, scale=4.0)
    labels = torch.randint(0, 3, (2, 70), generator=torch.Generator().manual_seed(11))
    ref = direct_eq5_9(q, k, v, labels)
    out = refocused_attention(q.double(), k.double(), v.double(), labels, chunk_size=9, _path="fused")
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)
    out32 = refocused_attention(q, k, v, labels, chunk_size=9, _path="fused")
    torch.testing.assert_close(out32.double(), ref, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(refocused_attention(q, k, v, labels, chunk_size=9), out32, atol=0, rtol=0)
    with pytest.raises(ValueError, match="_path"):
        refocused_attention(q, k, v, labels, _path="flash")


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
    torch.testing.assert_close(out.double(), direct_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


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
    torch.testing.assert_close(out.double(), direct_eq5_9(q, k, v, labels), atol=2e-5, rtol=1e-4)


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
