"""Building the eraser: the one place a :class:`MagicEraserPipeline` is made from a configuration.

``magiceraser erase``, the service's replicas and the evaluation's diffusion methods all call
:func:`build_eraser` (the first two through :func:`eraser_from_config`): the base model, the
trained output (LoRA + v*), the segmenter, the content initialiser, the device and the dtype are
put together the same way everywhere. Nothing here catches errors: each caller says in its own
terms what a missing model means (a one-line user error, a 500, a skipped table row).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from magiceraser.pipelines.erase.config import EraseConfig
    from magiceraser.pipelines.erase.pipeline import MagicEraserPipeline

__all__ = ["build_eraser", "eraser_from_config"]


def build_eraser(
    base_model: str | Path,
    *,
    trained_dir: str | Path | None = None,
    segmenter: Any = None,
    content_init: str = "telea",
    lama_path: str | Path | None = None,
    telea_radius: int = 5,
    device: str = "auto",
    dtype: Any = None,
    model_size: int = 512,
    lambda_pos: float = 0.8,
    lambda_neg: float = 1.0,
) -> MagicEraserPipeline:
    """The eraser with its models loaded.

    ``segmenter``: None (no segmentation: no tag, refocus labels from the mask alone), a
    Mask2Former id or folder (loaded on ``device``), or a segmenter already built (the service
    builds its own, with its post-processing thresholds). ``device``: ``auto``, ``cpu`` or
    ``cuda[:N]`` (:func:`~magiceraser.devices.resolve_device`). ``dtype``: a torch dtype or its
    name; None: float16 on CUDA, float32 elsewhere.
    """
    from magiceraser.devices import resolve_device
    from magiceraser.pipelines.erase.content_init import make_content_initializer
    from magiceraser.pipelines.erase.pipeline import MagicEraserPipeline

    device = resolve_device(device)
    if isinstance(segmenter, (str, Path)):
        from magiceraser.models.segmenter import Mask2FormerSegmenter

        segmenter = Mask2FormerSegmenter(str(segmenter), device=device)
    initializer: Any = content_init
    if content_init == "telea":
        initializer = make_content_initializer("telea", telea_radius=telea_radius)
    return MagicEraserPipeline.from_pretrained(
        base_model, trained_dir=trained_dir or None, segmenter=segmenter, content_init=initializer,
        lama_path=lama_path or None, device=device, dtype=dtype, model_size=model_size,
        lambda_pos=lambda_pos, lambda_neg=lambda_neg,
    )


def eraser_from_config(cfg: EraseConfig, segmenter: Any = None) -> MagicEraserPipeline:
    """:func:`build_eraser` with the models of an ``EraseConfig`` (or ``ServeConfig``).

    ``segmenter``: None loads ``cfg.segmenter`` (if set); a segmenter object replaces it.
    """
    return build_eraser(
        cfg.base_model, trained_dir=cfg.trained_dir, segmenter=segmenter if segmenter is not None else cfg.segmenter,
        content_init=cfg.content_init, lama_path=cfg.lama_path, telea_radius=cfg.telea_radius, device=cfg.device,
        dtype=cfg.dtype, model_size=cfg.model_size, lambda_pos=cfg.lambda_pos, lambda_neg=cfg.lambda_neg,
    )
