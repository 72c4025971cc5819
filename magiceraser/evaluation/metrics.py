"""Pixel metrics of the paper's protocol, as pure functions: PSNR, SSIM and the Fréchet distance.

All image metrics take HxWx3 uint8 arrays (data range 255) and optionally a bool HxW mask; with a
mask the statistic is averaged over the masked pixels only (docs/method.md, "Masked-region
metrics", beyond the paper).

* PSNR: per image, 10·log10(255² / MSE) with the MSE over all pixels and channels (the dataset
  figure is the mean of per-image values, as the paper reports). Identical images would give +inf;
  the value is capped at ``PSNR_CAP_DB`` so that means and JSON stay finite.
* SSIM: Wang et al. 2004 with an 11x11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03,
  population (not sample) covariances, per channel then averaged over channels. The whole-image
  value is the mean of the SSIM map over pixels whose window lies inside the image (scikit-image's
  ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``);
  the masked value is the mean over masked pixels of the full map computed with symmetric border
  extension (scikit-image's ``full=True`` map). Both come from one scikit-image call.
* Fréchet distance between Gaussians N(μ1, Σ1), N(μ2, Σ2): |μ1 − μ2|² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½),
  the quantity FID evaluates on Inception features.
"""

from __future__ import annotations

import math

import numpy as np

PSNR_CAP_DB = 100.0
SSIM_SIGMA = 1.5
SSIM_WIN = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0


def _check_pair(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    if pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"expected HxWx3 images, got {pred.shape}")
    if mask is not None:
        if mask.shape != pred.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} differs from image size {pred.shape[:2]}")
        if not mask.any():
            raise ValueError("the mask is empty: a masked metric needs at least one masked pixel")


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of one image pair (over ``mask`` pixels only when given), capped at PSNR_CAP_DB."""
    _check_pair(pred, target, mask)
    diff = pred.astype(np.float64) - target.astype(np.float64)
    sq = diff * diff
    mse = float(sq[mask].mean()) if mask is not None else float(sq.mean())
    if mse <= DATA_RANGE**2 * 10 ** (-PSNR_CAP_DB / 10):
        return PSNR_CAP_DB
    return 10.0 * math.log10(DATA_RANGE**2 / mse)


def ssim_full_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Channel-mean SSIM map (H, W) of two HxWx3 uint8 images, borders extended symmetrically.

    scikit-image's ``structural_similarity(..., full=True)`` with the protocol's settings: the
    library does what our own float64 filter did (same window, constants and border rule; the maps
    agree to 1e-15) and is faster in ``benchmarks/bench_metrics.py``, so the whole-image and the
    masked value both come from its one map.
    """
    from skimage.metrics import structural_similarity

    if min(pred.shape[:2]) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {pred.shape[0]}x{pred.shape[1]}")
    _, smap = structural_similarity(
        pred, target, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False, K1=SSIM_K1, K2=SSIM_K2,
        data_range=DATA_RANGE, channel_axis=-1, full=True,
    )
    return smap.mean(axis=-1)


def _whole_from_map(smap: np.ndarray) -> float:
    r = SSIM_WIN // 2  # pixels whose window lies inside the image, as scikit-image averages
    if min(smap.shape) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {smap.shape}")
    return float(smap[r:-r, r:-r].mean())


def ssim(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SSIM of one image pair: whole image (interior mean) or the mean over ``mask`` pixels."""
    _check_pair(pred, target, mask)
    smap = ssim_full_map(pred, target)
    return _whole_from_map(smap) if mask is None else float(smap[mask].mean())


def ssim_whole_and_masked(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Both SSIM figures from one filtering pass."""
    _check_pair(pred, target, mask)
    smap = ssim_full_map(pred, target)
    return _whole_from_map(smap), float(smap[mask].mean())


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (N, D) feature matrix, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need an (N >= 2, D) feature matrix for Gaussian statistics, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (covariances symmetric PSD).

    Tr (Σ1Σ2)^½ is computed as Tr (Σ1^½ Σ2 Σ1^½)^½ from the eigenvalues of that symmetric PSD
    matrix: exact for PSD inputs, real by construction (``sqrtm`` of the non-symmetric product returns
    complex rounding noise near singularity) and an order of magnitude faster at D = 2048 than a
    general eigen-decomposition.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"inconsistent shapes: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    diff = mu1 - mu2
    r1 = _psd_sqrt(s1)
    inner = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two (N, D) feature sets (FID on features).

    With fewer samples than dimensions (200 pairs vs 2048 Inception features) the covariances
    Σ = AAᵀ, A = centred featuresᵀ / √(N−1), have rank < N, and Tr (Σ1Σ2)^½ equals the sum of the
    singular values of BᵀA (an N2 x N1 matrix), so no D x D decomposition is needed.
    """
    x, y = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature matrices of one width, got {x.shape} and {y.shape}")
    if max(len(x), len(y)) >= x.shape[1]:
        return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    a = (x - x.mean(0)) / np.sqrt(len(x) - 1)
    b = (y - y.mean(0)) / np.sqrt(len(y) - 1)
    diff = x.mean(0) - y.mean(0)
    tr_covmean = float(np.linalg.svd(b @ a.T, compute_uv=False).sum())
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * tr_covmean)
