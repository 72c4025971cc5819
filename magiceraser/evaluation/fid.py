"""FID per (dataset, method): Inception features of the scored images and their ground truths,
cached next to the images (``methods/<dataset>/<method>/inception_{real,fake}.npz``) under a key of
the images' bytes and the weights setting."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from magiceraser.atomic import atomic_open
from magiceraser.evaluation.cache import digest, files_digest
from magiceraser.evaluation.config import EvalConfig
from magiceraser.evaluation.console import log
from magiceraser.evaluation.layout import method_dir, pairs_dir
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


def compute_fid(cfg: EvalConfig, ds: str, method: str, keys: Sequence[str], device: str, inception) -> float | None:
    """FID of the method's erased images of ``keys`` (its scored pairs) against their ground truths."""
    from magiceraser.evaluation.perceptual import fid_from_features

    out = Path(cfg.out_dir)
    mdir = method_dir(out, ds, method)
    ok = [k for k in keys if (mdir / "images" / f"{k}.png").is_file()]
    if len(ok) < 2:
        return None
    weights = cfg.metrics.fid_inception_weights
    real = cached_features(mdir / "inception_real.npz", [pairs_dir(out, ds) / k / "target.png" for k in ok], weights, inception)
    fake = cached_features(mdir / "inception_fake.npz", [mdir / "images" / f"{k}.png" for k in ok], weights, inception)
    return fid_from_features(real, fake)
