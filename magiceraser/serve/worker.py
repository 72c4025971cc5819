"""What one eraser replica does, without Ray: hold the models, erase a batch of requests, segment an image.

:class:`EraserWorker` is plain Python so the batching logic is the same in the service
(``app.EraserDeployment`` wraps it with ``@serve.batch``), in the benchmark and in tests. One
batch: class-based requests are segmented first (one segmenter batch per image size, so padding
never changes a segmentation), every request is planned on its own (a bad one fails alone), then
all crops of all requests are denoised together by :meth:`MagicEraserPipeline.run`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from magiceraser.class_masks import class_mask
from magiceraser.panoptic import PanopticResult
from magiceraser.pipelines.erase.settings import settings_of
from magiceraser.serve.config import ServeConfig
from magiceraser.serve.requests import ApiError, EraseParams

__all__ = ["EraseJob", "EraseResult", "EraserWorker", "build_segmenter"]


@dataclass
class EraseJob:
    """One checked erase request: the image, its mask (None: build it from ``params.classes``) and settings."""

    image: np.ndarray
    mask: np.ndarray | None
    params: EraseParams = field(default_factory=EraseParams)


@dataclass
class EraseResult:
    image: np.ndarray  # HxWx3 uint8, the input's size
    prompt: str
    tag: str | None
    regions: list[dict[str, Any]]  # one per crop: box, tag, prompt
    erased_segments: list[dict[str, Any]]  # classes= requests: the segments that made the mask
    batch_size: int  # requests erased in the same pass
    seconds: float  # time of that pass on the replica


def build_segmenter(cfg: ServeConfig, device: str):
    """The config's Mask2Former with the service's post-processing thresholds, or None."""
    if not cfg.segmenter:
        return None
    from magiceraser.models.segmenter import Mask2FormerSegmenter

    s = cfg.serve
    return Mask2FormerSegmenter(
        cfg.segmenter, device=device, dtype=cfg.dtype, batch_size=s.max_batch_size, threshold=s.segment_threshold,
        mask_threshold=s.segment_mask_threshold, overlap_mask_area_threshold=s.segment_overlap_threshold,
    )


class EraserWorker:
    """The pipeline and the segmenter of one replica."""

    def __init__(self, cfg: ServeConfig, pipe=None):
        """Load the config's models (``pipe`` given: use it, for tests and the benchmark)."""
        from magiceraser.quiet import silence_known_warnings

        silence_known_warnings()  # a replica is a process of its own: the command line's filters are not here
        self.cfg = cfg
        if cfg.num_threads:
            import torch

            torch.set_num_threads(cfg.num_threads)  # this replica's process only
        if pipe is None:
            from magiceraser.devices import resolve_device
            from magiceraser.pipelines.erase.build import eraser_from_config

            segmenter = build_segmenter(cfg, resolve_device(cfg.device))
            pipe = eraser_from_config(dataclasses.replace(cfg, segmenter=None), segmenter=segmenter)
        self.pipe = pipe
        self.settings = settings_of(cfg)

    @property
    def has_segmenter(self) -> bool:
        return self.pipe.segmenter is not None

    def segment(self, images: list[np.ndarray]) -> list[PanopticResult]:
        """Full-image panoptic segmentations, one segmenter batch per image size."""
        if self.pipe.segmenter is None:
            raise ApiError(501, "segmenter", "this service has no segmenter (set segmenter in its config)")
        out: list[PanopticResult | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            by_shape.setdefault(img.shape, []).append(i)
        for idx in by_shape.values():
            for i, pan in zip(idx, self.pipe.segmenter.segment([images[i] for i in idx])):
                out[i] = pan
        return out  # type: ignore[return-value]

    def _class_masks(self, jobs: list[EraseJob], outcome: list[Any]) -> dict[int, tuple[np.ndarray, PanopticResult, list]]:
        """Masks of the classes= jobs (index -> mask, segmentation, erased segments); failures go to ``outcome``."""
        idx = [i for i, j in enumerate(jobs) if j.mask is None]
        if not idx:
            return {}
        try:
            pans = self.segment([jobs[i].image for i in idx])
        except ApiError as exc:
            for i in idx:
                outcome[i] = exc
            return {}
        built = {}
        for i, pan in zip(idx, pans):
            classes = jobs[i].params.classes
            cm = class_mask(pan, classes, self.cfg.serve.class_mask_dilation)
            if not cm.segments:
                found = sorted({s.name for s in pan.segments if s.isthing})
                outcome[i] = ApiError(422, "classes", (
                    f"no {' or '.join(classes)} found in the image"
                    + (f" (objects found: {', '.join(found)})" if found else " (the segmenter found no objects)")
                    + "; send a mask instead"
                ))
                continue
            erased = [{"id": s.id, "class": s.name, "area": s.area, "score": round(s.score, 4)} for s in cm.segments]
            built[i] = (cm.mask, pan, erased)
        return built

    def erase_batch(self, jobs: list[EraseJob]) -> list[EraseResult | ApiError]:
        """Erase ``jobs`` in one pass; a job that cannot be erased gets its ApiError, the others their result."""
        t0 = time.perf_counter()
        outcome: list[Any] = [None] * len(jobs)
        built = self._class_masks(jobs, outcome)
        plans, planned, segments = [], [], {}
        for i, job in enumerate(jobs):
            if outcome[i] is not None:
                continue
            mask, pan, erased = built[i] if job.mask is None else (job.mask, None, [])
            try:
                plans.append(self.pipe.plan(job.image, mask, settings=job.params.settings(self.settings), pan=pan))
            except ApiError as exc:  # a setting out of range with this config's values
                outcome[i] = exc
                continue
            except ValueError as exc:
                outcome[i] = ApiError(422, "classes" if job.mask is None else "mask", str(exc))
                continue
            planned.append(i)
            segments[i] = erased
        if plans:
            results = self.pipe.run(plans, max_batch=self.cfg.serve.max_batch_size)
            seconds = time.perf_counter() - t0
            for i, res in zip(planned, results):
                outcome[i] = EraseResult(
                    image=res.image, prompt=res.prompt, tag=res.tag,
                    regions=[{"box": list(r.box), "tag": r.tag, "prompt": r.prompt} for r in res.regions],
                    erased_segments=segments[i], batch_size=len(plans), seconds=round(seconds, 4),
                )
        return outcome
