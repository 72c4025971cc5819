"""Per-image metrics of one erased image, as the run's config asks for them.

Reference metrics (PSNR, SSIM, LPIPS) need the pair's ground truth; the reference-free ones (ReMOVE,
CFD, the re-generation rate, the two success judges) need only the erased image, its mask and, for
the judges, the removed object's class. A pair without a ground truth gets only the latter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from magiceraser.errors import UserError
from magiceraser.evaluation.config import MetricsConfig
from magiceraser.evaluation.methods import MethodUnavailable, load_segmenter
from magiceraser.evaluation.metrics import psnr, ssim, ssim_whole_and_masked

# What each metric family writes into a record (the keys of cache.METRIC_DEPS).
REMOVE_KEYS = ("remove",)
CFD_KEYS = ("cfd", "cfd_context", "cfd_invented")
DETECTOR_KEYS = ("success_detector", "detector_fraction")
VLM_KEYS = ("success_vlm", "vlm_p_yes")


def _value(x: float) -> float | None:
    """A metric value as recorded: None where the metric is undefined for the image (e.g. ReMOVE when no grid
    cell lies wholly inside a thin mask, as in the reference), so JSON stays standard and the means skip it."""
    x = float(x)
    return None if math.isnan(x) else x


def _load(what: str, switch: str, key: str, name: str, build: Callable[[], Any]) -> Any:
    """Build a metric's model up front; a checkpoint that cannot be loaded is the user's to fix (one line)."""
    try:
        return build()
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(f"metrics.{switch} is on but the {what} {name!r} cannot be loaded ({exc}): "
                        f"set metrics.{key} to a local directory or cached Hub id, or metrics.{switch}=false") from exc


class Scorer:
    """Per-image metrics; heavy models are loaded once, up front, so missing weights fail before any work."""

    def __init__(self, cfg: MetricsConfig, device: str) -> None:
        from magiceraser.evaluation.perceptual import LPIPSAlex

        self.cfg = cfg
        self.lpips = LPIPSAlex(cfg.lpips_alexnet_weights or None, device=device) if cfg.lpips else None
        self.segmenter = None
        if cfg.regrowth or cfg.cfd or cfg.judge_detector:
            try:
                self.segmenter = load_segmenter(cfg.segmenter, device)
            except MethodUnavailable as exc:
                switches = "/".join(s for s in ("regrowth", "cfd", "judge_detector") if getattr(cfg, s))
                raise UserError(f"metrics.{switches} is on but {exc}: set metrics.segmenter, or switch it off") from exc
        self.remove = self.cfd = self.vlm = None
        if cfg.remove:
            from magiceraser.evaluation.remove import RemoveScorer

            self.remove = _load("SAM checkpoint", "remove", "remove_model", cfg.remove_model,
                                lambda: RemoveScorer(cfg.remove_model, device=device))
        if cfg.cfd:
            from magiceraser.evaluation.cfd import CfdScorer

            self.cfd = _load("DINOv2 checkpoint", "cfd", "cfd_model", cfg.cfd_model, lambda: CfdScorer(cfg.cfd_model, device=device))
        if cfg.judge_vlm:
            from magiceraser.evaluation.vlm_judge import VlmJudge

            self.vlm = _load("LLaVA checkpoint", "judge_vlm", "judge_vlm_model", cfg.judge_vlm_model, lambda: VlmJudge(
                cfg.judge_vlm_model, backend=cfg.judge_vlm_backend, device=device, prompt=cfg.judge_vlm_prompt,
                threshold=cfg.judge_vlm_threshold, context=cfg.judge_vlm_context, fallback=cfg.judge_vlm_fallback_class))

    def required(self, has_target: bool = True) -> list[str]:
        """The record keys this run asks of a pair (with or without its ground truth)."""
        keys: list[str] = []
        if has_target:
            keys += ["psnr", "ssim"]
            if self.cfg.masked:
                keys += ["psnr_mask", "ssim_mask"]
            if self.lpips is not None:
                keys += ["lpips"] + (["lpips_mask"] if self.cfg.masked else [])
        if self.cfg.regrowth:
            keys.append("regrowth")
        if self.remove is not None:
            keys += REMOVE_KEYS
        if self.cfd is not None:
            keys += CFD_KEYS
        if self.cfg.judge_detector:
            keys += DETECTOR_KEYS
        if self.vlm is not None:
            keys += VLM_KEYS
        return keys

    def score(self, erased: np.ndarray, mask: np.ndarray, target: np.ndarray | None, have: dict[str, Any],
              object_class: str | None = None) -> dict[str, float]:
        """The required metrics ``have`` lacks; ``target`` None: the reference-free ones only."""
        from magiceraser.panoptic import regrowth_fraction

        out: dict[str, Any] = {}
        need = [k for k in self.required(target is not None) if k not in have]
        if target is not None:
            out.update(self._reference(erased, mask, target, need))
        pan = None
        if self.segmenter is not None and any(k in need for k in ("regrowth", *CFD_KEYS, *DETECTOR_KEYS)):
            pan = self.segmenter.segment([erased])[0]
        if "regrowth" in need:
            out["regrowth"] = regrowth_fraction(mask, pan)
        if "remove" in need:
            out["remove"] = _value(self.remove(erased, mask))
        if any(k in need for k in CFD_KEYS):
            from magiceraser.evaluation.cfd import panoptic_segments

            context, invented = self.cfd.terms(erased, mask, panoptic_segments(pan))
            out.update(cfd=_value(context + invented), cfd_context=_value(context), cfd_invented=_value(invented))
        if any(k in need for k in DETECTOR_KEYS):
            from magiceraser.evaluation.judges import detector_verdict, target_labels

            ok, fraction = detector_verdict(mask, pan, target_labels(object_class), self.cfg.judge_detector_dilation,
                                            self.cfg.judge_detector_threshold)
            out.update(success_detector=float(ok), detector_fraction=float(fraction))
        if any(k in need for k in VLM_KEYS):
            ok, p_yes = self.vlm(erased, mask, object_class)
            out.update(success_vlm=float(ok), vlm_p_yes=_value(p_yes))
        return out

    def _reference(self, erased: np.ndarray, mask: np.ndarray, target: np.ndarray, need: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
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
        return out
