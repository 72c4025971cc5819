"""Per-image metrics of one erased image against its ground truth, as the run's config asks for them."""

from __future__ import annotations

from typing import Any

import numpy as np

from magiceraser.errors import UserError
from magiceraser.evaluation.config import MetricsConfig
from magiceraser.evaluation.methods import MethodUnavailable, load_segmenter
from magiceraser.evaluation.metrics import psnr, ssim, ssim_whole_and_masked


class Scorer:
    """Per-image metrics; heavy models are loaded once, up front, so missing weights fail early."""

    def __init__(self, cfg: MetricsConfig, device: str) -> None:
        from magiceraser.evaluation.perceptual import LPIPSAlex

        self.cfg = cfg
        self.lpips = LPIPSAlex(cfg.lpips_alexnet_weights or None, device=device) if cfg.lpips else None
        self.segmenter = None
        if cfg.regrowth:
            try:
                self.segmenter = load_segmenter(cfg.regrowth_segmenter, device)
            except MethodUnavailable as exc:
                raise UserError(f"metrics.regrowth is on but {exc}: set metrics.regrowth_segmenter, or metrics.regrowth=false") from exc

    def required(self) -> list[str]:
        keys = ["psnr", "ssim"]
        if self.cfg.masked:
            keys += ["psnr_mask", "ssim_mask"]
        if self.lpips is not None:
            keys += ["lpips"] + (["lpips_mask"] if self.cfg.masked else [])
        if self.segmenter is not None:
            keys.append("regrowth")
        return keys

    def score(self, erased: np.ndarray, mask: np.ndarray, target: np.ndarray, have: dict[str, Any]) -> dict[str, float]:
        from magiceraser.panoptic import regrowth_fraction

        out: dict[str, float] = {}
        need = [k for k in self.required() if k not in have]
        if "psnr" in need:
            out["psnr"] = psnr(erased, target)
        if "psnr_mask" in need:
            out["psnr_mask"] = psnr(erased, target, mask)
        if "ssim_mask" in need:
            out["ssim"], out["ssim_mask"] = ssim_whole_and_masked(erased, target, mask)
        elif "ssim" in need:
            out["ssim"] = ssim(erased, target)
        if "lpips" in need or "lpips_mask" in need:
            whole, masked = self.lpips(erased, target, mask if self.cfg.masked else None)
            out["lpips"] = whole
            if masked is not None:
                out["lpips_mask"] = masked
        if "regrowth" in need:
            out["regrowth"] = regrowth_fraction(mask, self.segmenter.segment([erased])[0])
        return out
