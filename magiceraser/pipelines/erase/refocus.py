"""Semantics-aware attention refocus, docs/method.md "Attention refocus" (Eq. 5-9), as a pure function.

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

Why a second, fused path on CPU (:func:`_fused_cpu`): there the two passes above cost far more than
one stock SDPA call (the statistics pass alone costs about a whole attention, and the augmented
head size d + 3 slows the fused SDPA kernel). This path makes a single pass per (batch, head) and
chunk of queries instead: keys are grouped by label once, so the scores of a chunk lie in three
contiguous blocks (one per key label); per-block max/min give S_max, S_min *and* the exact row
maximum of S + M (max over blocks of block-max + c_i[L]), so M and the softmax shift are added
with one broadcast add per block, then clamp + exp in place and one product with V that also
yields the row sums (a column of ones appended to V). 1/√d is folded into K. The two matrix
products alone cost about one stock SDPA call; the elementwise passes are the rest. The clamp is
not cosmetic: exp of logits in [-104, -87] gives float32 denormals, which make the following
matrix product many times slower; clamping at log(finfo.tiny) + 1 changes each weight by < 1e-37.
On GPUs the SDPA path stays (flash kernels), and half precisions use it everywhere.

Why a third, flash-LSE path on CPU (:func:`_flash_lse_cpu`): M is constant over each key-label
group, so with keys split into the groups G_L (L = m, p, n) and Z_L[i] = log Σ_{j∈G_L} exp(S_ij/√d),

    out_i = Σ_L w_iL · softmax_{j∈G_L}(S_ij/√d) V_j,    w_iL = softmax_L(Z_L[i] + c_i[L]/√d),

exactly. torch's CPU flash kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) returns
both the group softmax times V and Z_L, so three stock calls (one per non-empty group, together
the work of one attention, cache-blocked and with the kernel's own vectorised exp) plus the
extrema pass of :func:`score_extrema` give the result; empty groups are skipped (the kernel
divides by zero on an empty key set). What remains extra is the extrema pass, one full QKᵀ
product plus a max and a min, which no composition of stock calls avoids. ``auto`` takes this path
from :data:`FLASH_MIN_KEYS` keys on when the kernel below is unavailable.

Why a compiled kernel on CPU (:func:`_kernel_cpu`, ``refocus_cpu.cpp`` via refocus_kernel): with
stock kernels the extrema cost a whole extra Q·Kᵀ product (more at d = 80, where SDPA itself is
two matrix products at BLAS speed), so no composition of stock calls gets near one attention. The
kernel does the flash-LSE computation in one pass: for a block of 64 queries it runs an online
softmax over each key-label group in turn (keys sorted by label), taking S_max and S_min from the
same cache-resident block of scores, then combines the three groups with c_i[L] as above. Its
products are torch's own BLAS (sgemm); the extra work over one flash-attention pass is a max and a
min per score. It is built on first use (seconds with g++) and used for float32 on CPU wherever it
builds and passes its self-check; float64 and machines without a compiler keep the paths above.

Every path is checked against the full-matrix float64 transcription of Eq. 5-9 in
:mod:`magiceraser.pipelines.erase.refocus_reference`. What each costs against stock SDPA is
measured by ``benchmarks/bench_refocus.py``; the figures, with the command and machine that
produced them, are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from magiceraser.panoptic import LABEL_MASK, LABEL_NEG, LABEL_POS
from magiceraser.pipelines.erase import refocus_kernel

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
# chunk of queries stay within L2 (the reductions then read cache, not DRAM: much faster than
# large batched chunks); on GPUs large batched chunks keep the number of kernel launches small.
CPU_CHUNK_SCORES = 1 << 18
DEFAULT_SCORE_BUDGET = 1 << 26
# Queries per chunk of the fused CPU path (per (batch, head)): 512 × 4096 scores = 8 MiB. The
# fastest chunk at N = 4096 in bench_refocus: per-chunk Python/dispatch overhead dominates below
# 512, cache misses above.
FUSED_CPU_CHUNK = 512
# The auto dispatch takes the flash-LSE path on CPU from this many keys on (float32/float64):
# from there on it is faster than the fused path in bench_refocus (N = 4096, d = 40 and N = 1024,
# d = 80); below, the per-call overhead of three kernel calls is not shown to pay off, so the
# fused path stays.
FLASH_MIN_KEYS = 1024


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


def _cpu_flash_kernel():
    """torch's CPU flash-attention op returning (output, log-sum-exp); None where torch lacks it."""
    try:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    except (AttributeError, RuntimeError):
        return None


def _auto_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """The path ``_path="auto"`` takes: a CPU path for float32/float64 (the compiled kernel for
    float32 where it is available), SDPA on GPUs and in half precision."""
    cpu_ok = q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64) and q.dtype == k.dtype == v.dtype
    if not cpu_ok:
        return "sdpa"
    if q.dtype == torch.float32 and refocus_kernel.load() is not None:
        return "kernel"
    if k.shape[-2] >= FLASH_MIN_KEYS and _cpu_flash_kernel() is not None:
        return "flash"
    return "fused"


def refocused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    labels: torch.Tensor,
    lambda_pos: float = 0.8,
    lambda_neg: float = 1.0,
    chunk_size: int | None = None,
    per_head: bool | None = None,
    _path: str = "auto",
) -> torch.Tensor:
    """softmax((QKᵀ + M)/√d) V with the refocus term M of docs/method.md Eq. 5-9.

    Args:
        q, k, v: (batch, heads, N, d) self-attention queries, keys, values.
        labels: (batch, N) integer labels per token: 0 = mask, 1 = positive, 2 = negative.
        lambda_pos, lambda_neg: λ_pos, λ_neg of Eq. 9.
        chunk_size: queries per chunk for S_max / S_min (default: 2^18 scores per (batch, head)
            on CPU, 2^26 scores over all pairs elsewhere).
        per_head: chunk per (batch, head) pair (default on CPU); see :func:`score_extrema`.
            The fused CPU path always works per (batch, head); ``chunk_size`` is then its
            queries per chunk (default :data:`FUSED_CPU_CHUNK`).
        _path: "auto" (on CPU: the compiled kernel for float32 where it is available, else for
            float32/float64 flash-LSE from :data:`FLASH_MIN_KEYS` keys on and fused below; SDPA
            otherwise), "kernel", "flash", "fused" or "sdpa"; for tests and benchmarks. The flash
            path chunks only its extrema pass (``chunk_size``, ``per_head`` as above); the kernel
            has fixed blocks (refocus_kernel.Q_BLOCK × K_BLOCK scores per thread).

    Returns:
        (batch, heads, N, d), dtype of ``v``.
    """
    _check(q, k, v, labels)
    if _path not in ("auto", "kernel", "flash", "fused", "sdpa"):
        raise ValueError(f"_path must be 'auto', 'kernel', 'flash', 'fused' or 'sdpa', got {_path!r}")
    if _path == "auto":
        _path = _auto_path(q, k, v)
    if _path == "kernel":
        return _kernel_cpu(q, k, v, labels, lambda_pos, lambda_neg)
    if _path == "flash":
        return _flash_lse_cpu(q, k, v, labels, lambda_pos, lambda_neg, chunk_size, per_head)
    if _path == "fused":
        return _fused_cpu(q, k, v, labels, lambda_pos, lambda_neg, chunk_size or FUSED_CPU_CHUNK)
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


def _fused_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, lambda_pos: float, lambda_neg: float, chunk: int
) -> torch.Tensor:
    """Single-pass Eq. 5-9 per (batch, head) and chunk of queries; see the module docstring."""
    b, h, n, d = q.shape
    dv = v.shape[-1]
    dt = q.dtype
    scale = 1.0 / math.sqrt(d)
    pos = torch.tensor(POS_TABLE, dtype=dt, device=q.device)
    neg = torch.tensor(NEG_TABLE, dtype=dt, device=q.device)
    # c_i[L] = S_max[i]·coef_max(l_i, L) + S_min[i]·coef_min(l_i, L) (Eq. 6 and 9 expanded); linear
    # in the scores, so it holds for the scaled scores S/√d as well.
    coef_max = lambda_pos * pos - lambda_neg * neg
    coef_min = (1.0 - lambda_pos) * pos
    lo = math.log(torch.finfo(dt).tiny) + 1.0  # exp(lo) is a normal number: no denormals below
    chunk = max(1, min(chunk, n))
    out = torch.empty(b, h, n, dv, dtype=v.dtype, device=v.device)
    flat = torch.empty(chunk * n, dtype=dt, device=q.device)  # scratch for one chunk's scores, reused
    pv = torch.empty(chunk, dv + 1, dtype=dt, device=q.device)
    lab_all = labels.to(device=q.device, dtype=torch.long)
    for bi in range(b):
        lab = lab_all[bi]
        counts = torch.bincount(lab, minlength=3).tolist()
        present = [label for label in range(3) if counts[label]]
        idx = [(lab == label).nonzero().squeeze(1) for label in present]
        kb = k[bi] * scale
        kts = [kb.index_select(1, i).transpose(1, 2).contiguous() for i in idx]  # (H, d, n_L) each
        ones = v.new_ones(h, 1, 1)
        vs = [torch.cat([v[bi].index_select(1, i), ones.expand(h, len(i), 1)], dim=-1) for i in idx]  # (H, n_L, dv+1)
        a_rows = coef_max[lab][:, present]  # (N, #present)
        b_rows = coef_min[lab][:, present]
        ext_max = torch.empty(chunk, len(present), dtype=dt, device=q.device)
        ext_min = torch.empty_like(ext_max)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            m = stop - start
            blocks, off = [], 0
            for label in present:  # the chunk's scores, one contiguous block per key label
                blocks.append(flat[off : off + m * counts[label]].view(m, counts[label]))
                off += m * counts[label]
            used = flat[:off]
            mx, mn, acc = ext_max[:m], ext_min[:m], pv[:m]
            a_c, b_c = a_rows[start:stop], b_rows[start:stop]
            for hi in range(h):
                q_c = q[bi, hi, start:stop]
                for t, blk in enumerate(blocks):
                    torch.mm(q_c, kts[t][hi], out=blk)
                    torch.amax(blk, dim=-1, out=mx[:, t])
                    torch.amin(blk, dim=-1, out=mn[:, t])
                s_max = mx.amax(-1, keepdim=True)
                s_min = mn.amin(-1, keepdim=True)
                c = torch.addcmul(s_max * a_c, s_min, b_c)  # (m, #present): M per key label
                c.sub_((mx + c).amax(-1, keepdim=True))  # minus the exact row max of S + M
                for t, blk in enumerate(blocks):
                    blk.add_(c[:, t : t + 1])
                used.clamp_min_(lo).exp_()
                torch.mm(blocks[0], vs[0][hi], out=acc)
                for t in range(1, len(blocks)):
                    acc.addmm_(blocks[t], vs[t][hi])
                torch.div(acc[:, :dv], acc[:, dv:], out=out[bi, hi, start:stop])
    return out


def _refocus_coefficients(lambda_pos: float, lambda_neg: float, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(coef_max, coef_min), 3×3 each: c_i[L] = S_max[i]·coef_max[l_i, L] + S_min[i]·coef_min[l_i, L] (Eq. 6, 9)."""
    pos = torch.tensor(POS_TABLE, dtype=dtype, device=device)
    neg = torch.tensor(NEG_TABLE, dtype=dtype, device=device)
    return lambda_pos * pos - lambda_neg * neg, (1.0 - lambda_pos) * pos


def _rows_sharing_labels(labels: torch.Tensor) -> list[slice]:
    """Batch slices whose rows have identical labels: the whole batch when every row is the same
    (the processor expands one image's labels over the CFG pair), else one slice per row."""
    b = labels.shape[0]
    if b > 1 and bool((labels == labels[:1]).all()):
        return [slice(0, b)]
    return [slice(i, i + 1) for i in range(b)]


def _key_groups(lab: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(label, indices of the keys with that label) for every label present in ``lab`` (N,)."""
    groups = []
    for label in range(3):
        idx = (lab == label).nonzero().squeeze(1)
        if idx.numel():  # the flash kernel must never see an empty key set
            groups.append((label, idx))
    return groups


def _combine_groups(logits: list[torch.Tensor], outs: list[torch.Tensor]) -> torch.Tensor:
    """Σ_L softmax_L(logits)[..., None] · outs[L]: the group results weighted by their total mass."""
    if len(outs) == 1:
        return outs[0]
    weights = torch.softmax(torch.stack(logits), dim=0).unsqueeze(-1)  # (G, B, H, N, 1)
    result = outs[0] * weights[0]
    for t in range(1, len(outs)):
        result.addcmul_(outs[t], weights[t])
    return result


def _flash_lse_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    labels: torch.Tensor,
    lambda_pos: float,
    lambda_neg: float,
    chunk_size: int | None,
    per_head: bool | None,
) -> torch.Tensor:
    """Eq. 5-9 from one stock CPU flash-attention call per key-label group; see the module docstring."""
    flash = _cpu_flash_kernel()
    if flash is None:
        raise RuntimeError("this torch has no aten._scaled_dot_product_flash_attention_for_cpu: use _path='fused'")
    b, h, n, d = q.shape
    dv = v.shape[-1]
    scale = 1.0 / math.sqrt(d)
    s_max, s_min = score_extrema(q, k, chunk_size, per_head)
    coef_max, coef_min = _refocus_coefficients(lambda_pos, lambda_neg, q.dtype, q.device)
    # The kernel wants one head size for q, k and v; zero value columns change nothing.
    v_full = torch.cat([v, v.new_zeros(b, h, n, d - dv)], dim=-1) if dv < d else v
    lab_all = labels.to(device=q.device, dtype=torch.long)
    out = torch.empty(b, h, n, dv, dtype=v.dtype, device=v.device)
    for rows in _rows_sharing_labels(lab_all):
        lab = lab_all[rows.start]
        q_r, k_r, v_r = q[rows], k[rows], v_full[rows]
        logits, outs = [], []
        for label, idx in _key_groups(lab):
            o, lse = flash(q_r, k_r.index_select(2, idx), v_r.index_select(2, idx), scale=scale)
            shift = torch.addcmul(s_max[rows] * coef_max[lab, label], s_min[rows], coef_min[lab, label])  # c_i[label]
            logits.append(lse.to(q.dtype) + shift * scale)
            outs.append(o)
        out[rows] = _combine_groups(logits, outs)[..., :dv]
    return out


def _kernel_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, lambda_pos: float, lambda_neg: float
) -> torch.Tensor:
    """Eq. 5-9 from the one-pass compiled kernel (refocus_kernel, which checks dtype, device and
    availability); see the module docstring."""
    coef_max, coef_min = _refocus_coefficients(lambda_pos, lambda_neg, torch.float32, "cpu")
    return refocus_kernel.refocus(q, k, v, labels.to(device=q.device, dtype=torch.long), coef_max, coef_min)
