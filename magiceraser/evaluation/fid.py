"""FID per (dataset, method): Inception features of the scored images and their ground truths,
cached next to the images (``methods/<dataset>/<method>/inception_{real,fake}.npz``) under a key of
the images' bytes and the weights setting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magiceraser.atomic import atomic_open
from magiceraser.evaluation.cache import digest, files_digest
from magiceraser.evaluation.config import EvalConfig
from magiceraser.evaluation.console import log
from magiceraser.evaluation.layout import method_dir, pairs_dir, target_path
from magiceraser.imageio import decode_image


def cached_features(cache: Path, paths: list[Path], weights: str, inception) -> np.ndarray:
    """Inception features of ``paths``, reused only when the cache was made from the same bytes (in
    order) with the same weights setting: a re-erased image or rebuilt pair recomputes them."""
    key = digest({"images": files_digest(paths), "weights": weights})
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as doc:
            if "key" in doc and str(doc["key"]) == key:
                return doc["features"]
        log(f"{cache}: cached Inception features are of other images or weights; recomputing them")
    feats = inception([decode_image(p) for p in paths])
    with atomic_open(cache, "wb") as fh:
        np.savez(fh, key=np.array(key), features=feats)
    return feats


@dataclass(frozen=True)
class FidSet:
    """The Inception features of one (dataset, method): ground truths and erased images, aligned by key."""

    keys: tuple[str, ...]
    real: np.ndarray
    fake: np.ndarray

    def fid(self, indices: np.ndarray | None = None) -> float:
        """FID over all images, or over ``indices`` (a bootstrap resample) of them."""
        from magiceraser.evaluation.metrics import frechet_distance_from_features

        if indices is None:
            return frechet_distance_from_features(self.real, self.fake)
        return frechet_distance_from_features(self.real[indices], self.fake[indices])

    def subset(self, keys: Sequence[str]) -> FidSet:
        """The same features restricted to ``keys`` (in that order), for a comparison over shared images."""
        where = {k: i for i, k in enumerate(self.keys)}
        idx = np.array([where[k] for k in keys], dtype=np.int64)
        return FidSet(tuple(keys), self.real[idx], self.fake[idx])


def fid_features(cfg: EvalConfig, ds: str, method: str, keys: Sequence[str], inception) -> FidSet | None:
    """Inception features of the method's erased images of ``keys`` (its scored pairs) and of their
    ground truths; pairs without a ground truth are left out; None with fewer than two images."""
    out = Path(cfg.out_dir)
    mdir, root = method_dir(out, ds, method), pairs_dir(out, ds)
    ok = [k for k in keys if (mdir / "images" / f"{k}.png").is_file() and target_path(root, k).is_file()]
    if len(ok) < 2:
        return None
    weights = cfg.metrics.fid_inception_weights
    real = cached_features(mdir / "inception_real.npz", [target_path(root, k) for k in ok], weights, inception)
    fake = cached_features(mdir / "inception_fake.npz", [mdir / "images" / f"{k}.png" for k in ok], weights, inception)
    return FidSet(tuple(ok), real, fake)
