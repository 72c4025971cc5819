"""docs/method.md Eq. 5-9 written out with full N×N matrices: the one reference of the refocus.

Every path of :func:`magiceraser.pipelines.erase.refocus.refocused_attention` (tests, the
benchmarks, the GPU acceptance run) and the compiled CPU kernel (its self-check at load, its
tests) are compared against the functions here. They are transcribed from the equations, not
derived from the optimized code: the label tests of Eq. 7 and 8 are spelled out below rather than
read from ``refocus.POS_TABLE`` / ``NEG_TABLE``, and nothing is chunked, folded or grouped, so an
error in the fast paths cannot cancel against the same error here. They hold every score, mask and
softmax matrix at once (B·H·N² numbers each): for small problems, and as the memory baseline of
``benchmarks/bench_refocus.py`` (``dtype=None`` keeps the inputs' dtype for that).
"""

from __future__ import annotations

import math

import torch

__all__ = ["MASK", "POS", "NEG", "refocus_masks", "refocus_eq5_9", "attention_with_extrema_term"]

# The labels of docs/method.md "Labels": m (mask), p (positive), n (negative).
MASK, POS, NEG = 0, 1, 2


def _scores(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype | None):
    if dtype is not None:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return q @ k.transpose(-1, -2), v


def _attend(s: torch.Tensor, m: torch.Tensor, v: torch.Tensor, d: int) -> torch.Tensor:
    """Eq. 5: softmax((S + M) / √d) V."""
    return torch.softmax((s + m) / math.sqrt(d), dim=-1) @ v


def refocus_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Mask_pos, Mask_neg) of Eq. 7 and 8 as (B, 1, N, N) booleans, query i by key j."""
    li, lj = labels[:, None, :, None], labels[:, None, None, :]
    mask_pos = ((li == MASK) & (lj == POS)) | ((li == POS) & ((lj == MASK) | (lj == POS)))  # Eq. 7
    mask_neg = ((li == MASK) & ((lj == MASK) | (lj == NEG))) | ((li == NEG) & (lj == MASK))  # Eq. 8
    return mask_pos, mask_neg


def refocus_eq5_9(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    labels: torch.Tensor,
    lambda_pos: float = 0.8,
    lambda_neg: float = 1.0,
    dtype: torch.dtype | None = torch.float64,
) -> torch.Tensor:
    """softmax((QKᵀ + M)/√d) V with M of Eq. 6-9, every N×N matrix materialised.

    q, k, v: (B, H, N, d) (v: (B, H, N, dv)); labels: (B, N) in {0 = m, 1 = p, 2 = n}. Computed in
    ``dtype`` (float64 by default; None: the inputs' dtype).
    """
    s, v = _scores(q, k, v, dtype)
    s_max = s.max(dim=-1, keepdim=True).values
    s_min = s.min(dim=-1, keepdim=True).values
    mask_pos, mask_neg = refocus_masks(labels.to(s.device))
    w_pos = (1 - lambda_pos) * s_min + lambda_pos * s_max  # Eq. 9
    w_neg = lambda_neg * s_max
    m = w_pos * mask_pos.to(s.dtype) - w_neg * mask_neg.to(s.dtype)  # Eq. 6
    return _attend(s, m, v, q.shape[-1])


def attention_with_extrema_term(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    labels: torch.Tensor,
    coef_max: torch.Tensor,
    coef_min: torch.Tensor,
    dtype: torch.dtype | None = torch.float64,
) -> torch.Tensor:
    """softmax((S + M)/√d) V with M[i, j] = S_max[i]·coef_max[l_i, l_j] + S_min[i]·coef_min[l_i, l_j].

    The compiled kernel's contract (``refocus_kernel.refocus``): Eq. 6 and 9 with any 3×3 tables
    (row: query label, column: key label). With coef_max = λ_pos·Mask_pos − λ_neg·Mask_neg and
    coef_min = (1 − λ_pos)·Mask_pos it is :func:`refocus_eq5_9`.
    """
    s, v = _scores(q, k, v, dtype)
    lab = labels.to(device=s.device, dtype=torch.long)
    li, lj = lab[:, None, :, None], lab[:, None, None, :]
    m = s.amax(-1, keepdim=True) * coef_max.to(s)[li, lj] + s.amin(-1, keepdim=True) * coef_min.to(s)[li, lj]
    return _attend(s, m, v, q.shape[-1])
