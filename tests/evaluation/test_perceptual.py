"""LPIPS / FID through torchmetrics + torch-fidelity without torchvision, weights from local files.

The backbones carry random weights written in the real checkpoint formats; the checks are about the
plumbing (the right weights reach the right layers, the library's formula is what runs, missing
weights fail clearly), not about perceptual quality.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magiceraser.evaluation import perceptual as P
from magiceraser.evaluation.metrics import frechet_distance, gaussian_stats


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return P.write_random_weights(tmp_path_factory.mktemp("metric-weights"))


def test_no_torchvision_needed():
    assert importlib.util.find_spec("torchvision") is None, "torchvision must stay uninstalled"
    tm = P.import_torchmetrics()
    assert hasattr(tm, "Metric")


def _direct_lpips(lp: P.LPIPSAlex, a: np.ndarray, b: np.ndarray, lin_state: dict) -> float:
    """LPIPS written out from the paper's definition with the shipped linear heads."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    x = (P.LPIPSAlex._to_tensor(a, "cpu") - shift) / scale
    y = (P.LPIPSAlex._to_tensor(b, "cpu") - shift) / scale
    feats = lp.net.net.slice1, lp.net.net.slice2, lp.net.net.slice3, lp.net.net.slice4, lp.net.net.slice5
    total = 0.0
    for i, layer in enumerate(feats):
        x, y = layer(x), layer(y)
        nx = x / torch.sqrt(1e-8 + (x * x).sum(1, keepdim=True))
        ny = y / torch.sqrt(1e-8 + (y * y).sum(1, keepdim=True))
        total += float(F.conv2d((nx - ny) ** 2, lin_state[f"lin{i}.model.1.weight"]).mean())
    return total


def test_lpips_alexnet_uses_local_backbone_and_library_heads(weights):
    lp = P.LPIPSAlex(weights["alexnet"])
    from torchmetrics.functional.image import lpips as tm_lpips

    lin_file = Path(inspect.getfile(tm_lpips)).parent / "lpips_models" / "alex.pth"
    lin_state = torch.load(lin_file, map_location="cpu", weights_only=True)
    torch.testing.assert_close(lp.net_avg.lin2.model[1].weight, lin_state["lin2.model.1.weight"])
    alex_state = torch.load(weights["alexnet"], weights_only=True)
    torch.testing.assert_close(lp.net.net.slice3[1].weight, alex_state["features.6.weight"])  # conv3

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    b = a.copy()
    b[20:60, 30:80] = 255 - b[20:60, 30:80]
    mask = np.zeros((96, 96), bool)
    mask[20:60, 30:80] = True
    whole, masked = lp(b, a, mask)
    assert whole == pytest.approx(_direct_lpips(lp, b, a, lin_state), rel=1e-5)
    assert masked is not None and masked > 0
    same, same_masked = lp(a, a, mask)
    assert same == pytest.approx(0.0, abs=1e-7) and same_masked == pytest.approx(0.0, abs=1e-7)


def test_fid_features_and_distance(weights):
    inc = P.InceptionFeatures(weights["inception"], batch_size=2)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(3)]
    feats = inc(imgs)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    np.testing.assert_allclose(inc(imgs[:1]), feats[:1], rtol=1e-5, atol=1e-9)  # batch-independent
    other = feats[::-1] * 1.5
    # 3 samples in 2048 dimensions take the rank-deficient path (checked against the D x D formula
    # in test_metrics); on 64 of the dimensions both paths must agree here too
    assert P.fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-12)
    sub, sub_other = feats[:, :64] * 1e6, other[:, :64] * 1e6
    assert P.fid_from_features(sub, sub_other) == pytest.approx(
        frechet_distance(*gaussian_stats(sub), *gaussian_stats(sub_other)), rel=1e-6
    )


def test_missing_weights_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(P.MissingWeightsError, match="alexnet-owt-7be5be79.pth") as exc:
        P.LPIPSAlex()
    assert "torch hub cache" in str(exc.value) and "metrics.lpips=false" in str(exc.value)
    with pytest.raises(P.MissingWeightsError, match="metrics.fid_inception_weights"):
        P.InceptionFeatures(tmp_path / "nope.pth")


def test_weights_found_in_torch_hub_cache(tmp_path, monkeypatch, weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = P.hub_checkpoint(P.ALEXNET_URL)
    target.parent.mkdir(parents=True)
    target.write_bytes(Path(weights["alexnet"]).read_bytes())
    assert P.resolve_weights(None, P.ALEXNET_URL, "LPIPS", "k") == target
