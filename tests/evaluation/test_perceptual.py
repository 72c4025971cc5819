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
from magiceraser.evaluation.fid import FidSet
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
    assert FidSet(('a', 'b', 'c'), feats, feats).fid() == pytest.approx(0.0, abs=1e-12)
    sub, sub_other = feats[:, :64] * 1e6, other[:, :64] * 1e6
    assert FidSet(('a', 'b', 'c'), sub, sub_other).fid() == pytest.approx(
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


# The features.* tensors of torchvision's published AlexNet checkpoint (alexnet-owt-7be5be79.pth,
# the one LPIPS loads): names and shapes, as the file holds them.
PUBLISHED_FEATURES = {
    "0.weight": (64, 3, 11, 11), "0.bias": (64,), "3.weight": (192, 64, 5, 5), "3.bias": (192,),
    "6.weight": (384, 192, 3, 3), "6.bias": (384,), "8.weight": (256, 384, 3, 3), "8.bias": (256,),
    "10.weight": (256, 256, 3, 3), "10.bias": (256,),
}


def test_alexnet_features_load_the_published_checkpoint_and_tap_where_lpips_does():
    """The state dict is the published checkpoint's (so it loads unchanged), the output at 224 px is
    torchvision's documented 256x6x6, and the maps LPIPS taps (after layers 1, 4, 7, 9, 11) have the
    channels of torchmetrics' shipped heads and the sizes AlexNet's strides give (55, 27, 13, 13, 13)."""
    ours = P.AlexNetFeatures()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == PUBLISHED_FEATURES
    x = torch.randn(1, 3, 224, 224)
    taps, h = [], x
    with torch.no_grad():
        assert ours(x).shape == (1, 256, 6, 6)
        for i, layer in enumerate(ours):
            h = layer(h)
            if i in (1, 4, 7, 9, 11):
                taps.append(tuple(h.shape[1:]))
    assert taps == [(64, 55, 55), (192, 27, 27), (384, 13, 13), (256, 13, 13), (256, 13, 13)]


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="torchvision, which this project never installs, defines the reference; runs wherever it is present")
def test_alexnet_features_are_torchvisions_layer_for_layer():
    import torchvision

    ours, ref = P.AlexNetFeatures(), torchvision.models.alexnet(weights=None).features
    assert [repr(m) for m in ours] == [repr(m) for m in ref]
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_lpips_matches_torchmetrics_own_class_on_the_same_weights(weights, monkeypatch):
    """Where torchvision is installed, torchmetrics' public LearnedPerceptualImagePatchSimilarity (its
    backbone built by torchvision) gives our numbers on the same AlexNet weights."""
    tv = pytest.importorskip(
        "torchvision", reason="torchmetrics' LearnedPerceptualImagePatchSimilarity builds its AlexNet with torchvision, "
        "which this project never installs; this test runs wherever torchvision is present")
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    ours_state = torch.load(weights["alexnet"], weights_only=True)

    def same_weights(self, *args, **kwargs):  # torchvision would download its checkpoint; give it ours instead
        state = tv.models.alexnet(weights=None).state_dict()
        state.update(ours_state)
        return state

    monkeypatch.setattr(tv.models.AlexNet_Weights, "get_state_dict", same_weights)
    library = LearnedPerceptualImagePatchSimilarity(net_type="alex", reduction="mean", normalize=False)
    lp = P.LPIPSAlex(weights["alexnet"])
    rng = np.random.default_rng(2)
    for size in ((64, 64), (96, 80)):
        a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
        expected = float(library(P.LPIPSAlex._to_tensor(a, "cpu"), P.LPIPSAlex._to_tensor(b, "cpu")))
        assert lp(a, b)[0] == pytest.approx(expected, rel=1e-5)
