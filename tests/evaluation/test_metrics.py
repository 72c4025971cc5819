"""PSNR / SSIM against scikit-image on the same images; the Fréchet distance against direct maths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from magiceraser.evaluation import metrics as M

pytestmark = pytest.mark.numeric


def _pair(rng, h, w, noise):
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # smooth content so SSIM is far from both 0 and 1
    a = np.cumsum(a.astype(np.int64), axis=1) % 256
    b = np.clip(a + rng.normal(0, noise, a.shape), 0, 255).astype(np.uint8)
    return a.astype(np.uint8), b


def _sk_ssim(a, b, full=False):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, channel_axis=-1, full=full)


@pytest.mark.parametrize("shape,noise", [((64, 64), 5.0), ((37, 91), 20.0), ((128, 75), 60.0)])
def test_psnr_and_ssim_match_scikit_image(shape, noise):
    rng = np.random.default_rng(sum(shape))
    a, b = _pair(rng, *shape, noise)
    assert M.psnr(b, a) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    assert M.ssim(b, a) == pytest.approx(_sk_ssim(a, b), abs=1e-9)


def test_masked_metrics_match_scikit_image_maps():
    rng = np.random.default_rng(3)
    a, b = _pair(rng, 70, 90, 25.0)
    mask = np.zeros((70, 90), bool)
    mask[0:20, 60:90] = True  # touches the border: exercises the symmetric extension
    mask[40:55, 10:30] = True
    _, full = _sk_ssim(a, b, full=True)
    assert M.ssim(b, a, mask) == pytest.approx(full.mean(axis=-1)[mask].mean(), abs=1e-9)
    whole, masked = M.ssim_whole_and_masked(b, a, mask)
    assert whole == pytest.approx(_sk_ssim(a, b), abs=1e-9) and masked == pytest.approx(M.ssim(b, a, mask), abs=1e-12)
    sub_a, sub_b = a[mask], b[mask]  # (n, 3): PSNR over masked pixels only
    assert M.psnr(b, a, mask) == pytest.approx(peak_signal_noise_ratio(sub_a, sub_b, data_range=255), abs=1e-9)


def test_identical_images_and_bad_input():
    a = np.full((32, 32, 3), 77, np.uint8)
    assert M.psnr(a, a) == M.PSNR_CAP_DB
    assert M.ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mask is empty"):
        M.psnr(a, a, np.zeros((32, 32), bool))
    with pytest.raises(ValueError, match="differs"):
        M.ssim(a, a[:, :30])
    with pytest.raises(ValueError, match="at least 11x11 pixels, got 10x32"):
        M.ssim(a[:10], a[:10])


def _direct_frechet(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean.real))


def test_frechet_distance_on_known_gaussians():
    # Commuting (diagonal) covariances have the closed form sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    d1, d2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert M.frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-12)
    # General SPD covariances against scipy's matrix square root.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    assert M.frechet_distance(m1, s1, m2, s2) == pytest.approx(_direct_frechet(m1, s1, m2, s2), rel=1e-9)
    assert M.frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)
    # singular (rank-deficient) covariances, as from few samples
    c = rng.normal(size=(6, 2))
    s3 = c @ c.T
    assert M.frechet_distance(m1, s3, m2, s2) == pytest.approx(_direct_frechet(m1, s3, m2, s2), rel=1e-6)


def test_gaussian_stats_then_frechet_from_samples():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 4))
    y = rng.normal(loc=2.0, size=(400, 4)) * 1.5
    mu1, s1 = M.gaussian_stats(x)
    np.testing.assert_allclose(s1, np.cov(x.T), rtol=1e-12)
    mu2, s2 = M.gaussian_stats(y)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_direct_frechet(mu1, s1, mu2, s2), rel=1e-9)
    with pytest.raises(ValueError):
        M.gaussian_stats(x[:1])


@pytest.mark.parametrize("n1,n2,d", [(5, 7, 40), (30, 20, 8)])
def test_frechet_from_features_few_and_many_samples(n1, n2, d):
    rng = np.random.default_rng(n1)
    x = rng.normal(size=(n1, d))
    y = rng.normal(loc=0.3, size=(n2, d)) * 2.0
    mu1, s1 = np.mean(x, 0), np.cov(x.T)
    mu2, s2 = np.mean(y, 0), np.cov(y.T)
    assert M.frechet_distance_from_features(x, y) == pytest.approx(_direct_frechet(mu1, s1, mu2, s2), rel=1e-6)
