"""Semantics-aware attention refocus, method.md "Attention refocus" (paper Eq. 5-9), as a pure function.

For query i and key j with labels l ∈ {m (0), p (1), n (2)}:

    S = Q Kᵀ                      S_max[i] = max_j S[i, j],  S_min[i] = min_j S[i, j]
    W_pos = (1 − λ_pos) S_min + λ_pos S_max,    W_neg = λ_neg S_max                (Eq. 9)
    M = W_pos ⊙ Mask_pos − W_neg ⊙ Mask_neg                                        (Eq. 6)
    out = softmax((S + M) / √d) V                                                  (Eq. 5)

with Mask_pos / Mask_neg of Eq. 7 / 8 (:data:`POS_TABLE`, :data:`NEG_TABLE`).

Why no N×N mask is ever built: M[i, j] depends on j only through its label, M[i, j] = c_i[l_j]
with the three numbers c_i[L] = W_pos[i]·Mask_pos(l_i, L) − W_neg[i]·Mask_neg(l_i, L). Appending
c_i to each query and the one-hot label to each key makes the augmented dot product equal
S[i, j] + M[i, j] exactly, so one call of stock ``scaled_dot_product_attention`` (scale 1/√d of
the original head size, fused/flash kernels on CPU and GPU) gives softmax((S + M)/√d) V without
materialising any score or mask matrix. The only extra work is the per-query statistics S_max,
S_min, which need every score once: they are computed over chunks of queries so at most
``chunk_size × N`` scores per (batch, head) exist at a time (on CPU one (batch, head) at a time).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from magiceraser.panoptic import LABEL_MASK, LABEL_NEG, LABEL_POS

__all__ = ["POS_TABLE", "NEG_TABLE", "refocused_attention", "score_extrema", "default_chunk_size"]

# Mask_pos[l_i][l_j] (Eq. 7): (m, p) and (p, m), (p, p).
POS_TABLE = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
POS_TABLE[LABEL_MASK][LABEL_POS] = 1.0
POS_TABLE[LABEL_POS][LABEL_MASK] = 1.0
POS_TABLE[LABEL_POS][LABEL_POS] = 1.0
# Mask_neg[l_i][l_j] (Eq. 8): (m, m), (m, n) and (n, m).
NEG_TABLE = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
NEG_TABLE[LABEL_MASK][LABEL_MASK] = 1.0
NEG_TABLE[LABEL_MASK][LABEL_NEG] = 1.0
NEG_TABLE[LABEL_NEG][LABEL_MASK] = 1.0

# Scores held at once while computing S_max / S_min. On CPU the scores of one (batch, head) and
# chunk of queries stay within L2 (measured ~10x faster than large batched chunks on the 2-core
# dev machine: the reductions then read cache, not DRAM); on GPUs large batched chunks keep the
# number of kernel launches small.
CPU_CHUNK_SCORES = 1 << 18
DEFAULT_SCORE_BUDGET = 1 << 26


def default_chunk_size(batch_heads: int, n_queries: int, n_keys: int, budget: int = DEFAULT_SCORE_BUDGET) -> int:
    """Queries per chunk so that ``batch_heads × chunk × n_keys`` scores stay within ``budget``."""
    return max(1, min(n_queries, budget // max(1, batch_heads * n_keys)))


def score_extrema(
    q: torch.Tensor, k: torch.Tensor, chunk_size: int | None = None, per_head: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query max and min over keys of S = Q Kᵀ, (B, H, N) each, computed over chunks of queries.

    ``per_head`` (default: on CPU when all scores would exceed ``CPU_CHUNK_SCORES``) loops over (batch, head) pairs so that only ``chunk × N`` scores
    exist at a time; otherwise every pair is done at once, ``B × H × chunk × N`` scores at a time.
    """
    b, h, n, _ = q.shape
    n_keys = k.shape[-2]
    if per_head is None:  # small problems fit in cache whole: one batched product is cheaper
        per_head = q.device.type == "cpu" and b * h * n * n_keys > CPU_CHUNK_SCORES
    kt = k.transpose(-1, -2)
    s_max = torch.empty(q.shape[:-1], dtype=q.dtype, device=q.device)
    s_min = torch.empty_like(s_max)
    if per_head:
        chunk = chunk_size or default_chunk_size(1, n, n_keys, CPU_CHUNK_SCORES)
        for bi in range(b):
            for hi in range(h):
                q_bh, kt_bh = q[bi, hi], kt[bi, hi]
                for start in range(0, n, chunk):
                    scores = torch.matmul(q_bh[start : start + chunk], kt_bh)
                    torch.amax(scores, dim=-1, out=s_max[bi, hi, start : start + chunk])
                    torch.amin(scores, dim=-1, out=s_min[bi, hi, start : start + chunk])
        return s_max, s_min
    chunk = chunk_size or default_chunk_size(b * h, n, n_keys)
    for start in range(0, n, chunk):
        scores = torch.matmul(q[:, :, start : start + chunk], kt)
        torch.amax(scores, dim=-1, out=s_max[:, :, start : start + chunk])
        torch.amin(scores, dim=-1, out=s_min[:, :, start : start + chunk])
    return s_max, s_min


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, labels: torch.Tensor) -> None:
    if q.ndim != 4 or k.shape != q.shape or v.shape[:-1] != q.shape[:-1] or v.shape[-1] > q.shape[-1]:
        raise ValueError(
            f"q, k, v must be (batch, heads, N, d) self-attention tensors of one shape; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if labels.shape != (q.shape[0], q.shape[2]):
        raise ValueError(f"labels must have shape (batch, N) = {(q.shape[0], q.shape[2])}, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor with values 0 (mask), 1 (positive), 2 (negative); got {labels.dtype}")


def refocused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    labels: torch.Tensor,
    lambda_pos: float = 0.8,
    lambda_neg: float = 1.0,
    chunk_size: int | None = None,
    per_head: bool | None = None,
) -> torch.Tensor:
    """softmax((QKᵀ + M)/√d) V with the refocus term M of method.md Eq. 5-9.

    Args:
        q, k, v: (batch, heads, N, d) self-attention queries, keys, values.
        labels: (batch, N) integer labels per token: 0 = mask, 1 = positive, 2 = negative.
        lambda_pos, lambda_neg: λ_pos, λ_neg of Eq. 9.
        chunk_size: queries per chunk for S_max / S_min (default: 2^18 scores per (batch, head)
            on CPU, 2^26 scores over all pairs elsewhere).
        per_head: chunk per (batch, head) pair (default on CPU); see :func:`score_extrema`.

    Returns:
        (batch, heads, N, d), dtype of ``v``.
    """
    _check(q, k, v, labels)
    b, h, n, d = q.shape
    s_max, s_min = score_extrema(q, k, chunk_size, per_head)
    w_pos = (1.0 - lambda_pos) * s_min + lambda_pos * s_max  # (B, H, N)
    w_neg = lambda_neg * s_max
    lab = labels.to(device=q.device, dtype=torch.long)
    pos_rows = torch.tensor(POS_TABLE, dtype=q.dtype, device=q.device)[lab]  # (B, N, 3): Mask_pos(l_i, ·)
    neg_rows = torch.tensor(NEG_TABLE, dtype=q.dtype, device=q.device)[lab]
    # c[b, h, i, L] = M[i, j] for every key j with label L.
    c = w_pos.unsqueeze(-1) * pos_rows.unsqueeze(1) - w_neg.unsqueeze(-1) * neg_rows.unsqueeze(1)
    onehot = F.one_hot(lab, 3).to(q.dtype).unsqueeze(1).expand(b, h, n, 3)
    # GPU flash/efficient kernels want head sizes in multiples of 8; zero columns change no product.
    extra = 3 + ((-(d + 3)) % 8 if q.device.type == "cuda" else 0)
    pad = extra - 3
    q_aug = torch.cat([q, c] + ([q.new_zeros(b, h, n, pad)] if pad else []), dim=-1)
    k_aug = torch.cat([k, onehot] + ([k.new_zeros(b, h, n, pad)] if pad else []), dim=-1)
    # CPU's fused kernel needs equal head sizes for q, k and v; the extra value columns are zero.
    v_extra = q_aug.shape[-1] - v.shape[-1]
    v_aug = torch.cat([v, v.new_zeros(b, h, n, v_extra)], dim=-1) if v_extra > 0 else v
    out = F.scaled_dot_product_attention(q_aug, k_aug, v_aug, scale=1.0 / math.sqrt(d))
    return out[..., : v.shape[-1]]
