"""LPIPS (AlexNet) and FID (Inception) through torchmetrics / torch-fidelity, offline, without torchvision.

Which parts of the libraries need torchvision (checked against torchmetrics 1.9 and torch-fidelity
0.4, the versions ``pyproject.toml`` pins):

* ``torch_fidelity/__init__.py`` eagerly imports its CLIP and DINOv2 extractors, which
  ``import torchvision``; ``import torchmetrics`` imports ``torchmetrics.image.fid``, which imports
  ``torch_fidelity.feature_extractor_inceptionv3``, so *any* ``import torchmetrics`` fails when
  torch-fidelity is installed without torchvision. The Inception extractor itself (and its helpers)
  is plain torch. :func:`import_torchmetrics` therefore registers ``torch_fidelity`` as a bare
  package (its ``__path__`` only, ``__init__`` not run) before importing torchmetrics; submodules
  then load normally. This happens only when torchvision is absent.
* torchmetrics' LPIPS builds its backbone with ``torchvision.models.alexnet(...).features``; the
  LPIPS linear heads ship inside torchmetrics (``lpips_models/alex.pth``). :class:`AlexNetFeatures`
  is that ``features`` stack layer for layer (same module indices, so torchvision's checkpoint
  ``alexnet-owt-7be5be79.pth`` loads into it unchanged), handed to torchmetrics' own ``_LPIPS``.
  ``_LPIPS`` builds its backbone inside its constructor through ``_get_tv_model_features`` and
  takes no backbone argument, so that one function is replaced for the duration of the
  constructor. The alternatives are worse: a stub ``torchvision`` in ``sys.modules`` would change
  what every later import sees, and writing LPIPS' formula ourselves would no longer be the
  library's. The tests check the architecture against torchvision's definition layer for layer,
  the value against the paper's formula, and, wherever torchvision is installed, against
  torchmetrics' public ``LearnedPerceptualImagePatchSimilarity`` on the same weights.

Weights are never downloaded here: each metric resolves a local file (config path, else the
torch hub cache where torchvision / torch-fidelity would have stored it) and raises
:class:`MissingWeightsError` saying where to put it when absent.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from magiceraser.errors import UserError

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


class MissingWeightsError(UserError, FileNotFoundError):
    """A metric's backbone weights are not on this machine (and nothing is downloaded)."""


class MissingDependencyError(UserError, ImportError):
    """A metric's library is not installed; the message says how to install it without torchvision."""


TORCH_FIDELITY_INSTALL = "pip install --no-deps 'torch-fidelity>=0.3,<0.5'"
"""torch-fidelity declares torchvision, which must not be installed, so it cannot be in the ``eval``
extra: it is installed on its own without its dependencies (``make env`` does this). Its Inception
is plain torch."""


def require_torch_fidelity() -> None:
    """Refuse FID up front when torch-fidelity is missing. torchmetrics' own message would say
    ``pip install torch-fidelity``, which installs torchvision; this one says what works here."""
    # sys.modules first: the bare package import_torchmetrics registers has no __spec__ for find_spec
    if "torch_fidelity" not in sys.modules and importlib.util.find_spec("torch_fidelity") is None:
        raise MissingDependencyError(
            f"FID needs torch-fidelity, which is not installed (the eval extra cannot declare it: it requires "
            f"torchvision, which must not be installed). Install it without its dependencies: "
            f"`{TORCH_FIDELITY_INSTALL}`, or turn FID off (metrics.fid=false)."
        )


def hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` caches ``url`` (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def resolve_weights(path: str | Path | None, url: str, metric: str, config_key: str) -> Path:
    """The local weights file for ``metric``: ``path`` if given, else the hub cache; or a clear error."""
    candidate = Path(path).expanduser() if path else hub_checkpoint(url)
    if candidate.is_file():
        return candidate
    where = f"{candidate} (given as {config_key})" if path else f"the torch hub cache at {candidate}"
    raise MissingWeightsError(
        f"{metric} needs backbone weights that are not on this machine: looked for {where}. "
        f"Download {url} on a machine with internet and copy it there (or set {config_key}=PATH), "
        f"or turn the metric off in the config (metrics.{metric.lower()}=false)."
    )


def import_torchmetrics() -> types.ModuleType:
    """``import torchmetrics`` that works with torch-fidelity installed without torchvision."""
    if "torchmetrics" in sys.modules:
        return sys.modules["torchmetrics"]
    if importlib.util.find_spec("torchvision") is None and "torch_fidelity" not in sys.modules:
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is not None and spec.submodule_search_locations:
            # A bare package: submodules resolve through __path__, the eager __init__ never runs.
            pkg = types.ModuleType("torch_fidelity")
            pkg.__path__ = list(spec.submodule_search_locations)
            pkg.__file__ = spec.origin
            sys.modules["torch_fidelity"] = pkg
    try:
        return importlib.import_module("torchmetrics")
    except ImportError as exc:
        raise MissingDependencyError(
            f"LPIPS/FID need torchmetrics and torch-fidelity ({exc}); install the eval extra: "
            f"`pip install -c constraints.txt -e '.[eval]'` and `{TORCH_FIDELITY_INSTALL}`"
        ) from exc


class AlexNetFeatures(nn.Sequential):
    """``torchvision.models.alexnet().features``, layer for layer (indices 0..12)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )


def load_alexnet_features(weights: Path) -> AlexNetFeatures:
    """AlexNet features with torchvision's ImageNet checkpoint (keys ``features.N.*``; classifier ignored)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not feats:
        raise ValueError(f"{weights} holds no 'features.*' tensors: expected torchvision's alexnet checkpoint")
    model = AlexNetFeatures()
    model.load_state_dict(feats, strict=True)
    return model


class LPIPSAlex:
    """LPIPS with the AlexNet backbone (torchmetrics' implementation and linear heads).

    ``__call__(pred, target, mask=None)`` on HxWx3 uint8 returns the paper's whole-image distance
    and, with a mask, the mean of LPIPS' spatial map over the masked pixels.
    """

    def __init__(self, alexnet_weights: str | Path | None = None, device: str = "cpu") -> None:
        weights = resolve_weights(alexnet_weights, ALEXNET_URL, "LPIPS", "metrics.lpips_alexnet_weights")
        import_torchmetrics()
        from torchmetrics.functional.image import lpips as tm_lpips

        backbone = load_alexnet_features(weights)

        def _features(net: str, pretrained: bool = False) -> nn.Sequential:
            if net != "alexnet":
                raise ValueError(f"only the AlexNet backbone is available without torchvision, not {net!r}")
            return backbone

        if not hasattr(tm_lpips, "_get_tv_model_features"):
            raise ImportError("this torchmetrics version changed its LPIPS internals; use torchmetrics>=1.9,<1.10")
        original = tm_lpips._get_tv_model_features
        tm_lpips._get_tv_model_features = _features
        try:
            # spatial=True keeps the per-pixel map; its plain mean is not the paper's value (the
            # layers are upsampled first), so the whole-image figure uses the spatial average path.
            self.net = tm_lpips._NoTrainLpips(net="alex", spatial=True).to(device)
            self.net_avg = tm_lpips._NoTrainLpips(net="alex", spatial=False).to(device)
        finally:
            tm_lpips._get_tv_model_features = original
        self.net_avg.net = self.net.net  # one backbone for both heads
        self.device = device

    @staticmethod
    def _to_tensor(img: np.ndarray, device: str) -> torch.Tensor:
        t = torch.from_numpy(np.array(img)).permute(2, 0, 1).unsqueeze(0).float()
        return (t / 127.5 - 1.0).to(device)  # LPIPS expects [-1, 1]

    @torch.no_grad()
    def __call__(self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float | None]:
        a, b = self._to_tensor(pred, self.device), self._to_tensor(target, self.device)
        whole = float(self.net_avg(a, b).reshape(()))
        if mask is None:
            return whole, None
        spatial = self.net(a, b)[0, 0].cpu()
        return whole, float(spatial[torch.from_numpy(mask)].mean())


class InceptionFeatures:
    """2048-d pool3 features of torch-fidelity's TF-ported InceptionV3 (the standard FID network)."""

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", batch_size: int = 16) -> None:
        require_torch_fidelity()
        path = resolve_weights(weights, INCEPTION_URL, "FID", "metrics.fid_inception_weights")
        import_torchmetrics()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.model = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
        ).to(device)
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, 2048) float64 features of HxWx3 uint8 images (resized to 299 inside the network)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(np.stack(images[i : i + self.batch_size])).permute(0, 3, 1, 2).contiguous()
            out.append(self.model(batch.to(self.device)).double().cpu().numpy())
        return np.concatenate(out, axis=0)


@contextlib.contextmanager
def _no_load_state_dict(cls):  # pragma: no cover - used by write_random_weights only
    original = cls.load_state_dict
    cls.load_state_dict = lambda self, *a, **k: None
    try:
        yield
    finally:
        cls.load_state_dict = original


def write_random_weights(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Random-weight AlexNet and InceptionV3 checkpoints in the real formats (tests, benchmarks).

    The files load through exactly the code paths above; their metric values are meaningless.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    alex = out / ALEXNET_URL.rsplit("/", 1)[-1]
    torch.save({f"features.{k}": v for k, v in AlexNetFeatures().state_dict().items()}, alex)
    import_torchmetrics()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    inc = out / INCEPTION_URL.rsplit("/", 1)[-1]
    torch.save({}, inc)  # the constructor insists on reading a file; its (random) init is what we keep
    with _no_load_state_dict(FeatureExtractorInceptionV3):
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(inc))
    torch.save(model.state_dict(), inc)
    return {"alexnet": alex, "inception": inc}
