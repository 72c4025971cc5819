"""Methods under evaluation, all configurations of the same code.

``telea`` and ``lama`` are the eraser's content initialisers used on their own; ``sd`` and
``magiceraser`` are :class:`~magiceraser.pipelines.MagicEraserPipeline` with components switched
on or off. Plain SD inpainting is the pipeline on the base model with no trained directory, no
content initialisation, no refocus and a user prompt; the paper's ablation rows i–vi are
``magiceraser`` entries that differ in trained directory and flags (``configs/eval/ablations.yaml``).

Heavy imports happen in :func:`build_method`; a method whose weights are not on this machine
raises :class:`MethodUnavailable` with the reason, and the run skips it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from magiceraser.pipelines.erase.settings import EraseSettings

DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"

# A crop margin this large makes every region's crop the whole image (crop_box clamps to it), so the
# pipeline runs once on the full letterboxed square, as the paper's protocol does.
WHOLE_IMAGE_MARGIN = 1e4


class MethodUnavailable(RuntimeError):
    """The method cannot run here (weights or a module missing); the message says what to provide."""


@dataclass
class MethodConfig:
    name: str = "telea"
    """Row label in the results table; also the output folder name."""
    kind: Literal["telea", "lama", "sd", "magiceraser"] = "telea"
    """telea / lama: classical inpainters; sd / magiceraser: the diffusion pipeline."""
    base_model: str = DEFAULT_BASE_MODEL
    """SD 1.5 inpainting weights: a Hugging Face id (from the local cache) or a directory."""
    trained_dir: str = ""
    """Trained MagicEraser output (LoRA + v*); empty for the base model."""
    content_init: Literal["telea", "lama", "none"] = "lama"
    """Content initialisation for kind=magiceraser (paper: Big-LaMa)."""
    lama_path: str = ""
    """Big-LaMa TorchScript file (kind=lama, or content_init=lama)."""
    telea_radius: int = 5
    """Neighbourhood radius of OpenCV's Telea inpainting (kind=telea, content_init=telea)."""
    learned_prompt: bool = True
    """Prompt tuning at inference: 'A photo of R* {tag}' (needs trained_dir); false uses ``prompt``."""
    prompt: str = ""
    """Fixed text prompt when learned_prompt is false (plain SD inpainting's user prompt)."""
    prompts: str = ""
    """Optional JSON file {pair key: prompt} overriding ``prompt`` per image (e.g. LLaVA captions,
    as the paper prompts SD Inpainting); keys it lacks use ``prompt``."""
    refocus: bool = True
    """Semantics-aware attention refocus (kind=magiceraser); needs ``segmenter`` for its positive/negative
    labels, so refocus: true without one is refused at config load (set refocus: false for a row without it)."""
    segmenter: str = ""
    """Panoptic segmenter (Mask2Former id or directory) for the tag and refocus; empty: none."""
    num_inference_steps: int = 50
    """Denoising steps of the scheduler."""
    strength: float = 0.9
    """Share of the schedule that runs (paper: 0.9 with content initialisation; 1.0 without)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale."""
    seed: int = 0
    """Noise seed (each image gets seed + its index, so reruns reproduce)."""
    whole_image: bool = True
    """Paper protocol: one pass over the whole letterboxed image; false: the pipeline's crop around the mask."""
    mask_dilation: int = 0
    """Pixels the mask is grown by before erasing (paper: 0; the eraser's interactive default is 8)."""
    enabled: bool = True
    """Set false to keep an entry in a config without running it."""
    optional: bool = False
    """True: when its weights are not on this machine the method is skipped and the run still exits 0;
    false (default): the other methods still run, but the run exits 2 naming what is missing, so a
    scheduled job cannot publish a table that silently lacks this row."""

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\"):
            raise ValueError(f"name: {self.name!r} must be a non-empty label without path separators")
        if self.kind == "lama" and not self.lama_path:
            raise ValueError("lama_path: kind=lama needs the Big-LaMa TorchScript file")
        if self.kind == "magiceraser" and self.content_init == "lama" and not self.lama_path:
            raise ValueError("lama_path: content_init=lama needs the Big-LaMa TorchScript file (or content_init=telea)")
        if self.kind in ("sd", "magiceraser") and not self.base_model:
            raise ValueError("base_model: the diffusion methods need SD 1.5 inpainting weights")
        if self.kind == "magiceraser" and self.refocus and not self.segmenter:
            # Without a segmentation the refocus only keeps the hole from attending to itself (every
            # other pixel counts as background): a different method from the paper's, and the table
            # row would not say so. No config means that, so it is refused rather than run.
            raise ValueError("refocus: true needs segmenter (a Mask2Former id or directory) for its background/object "
                             "labels; set segmenter, or refocus: false")
        if self.kind == "sd" and self.trained_dir:
            raise ValueError("trained_dir: kind=sd is the plain base model; use kind=magiceraser for a trained directory")
        self.erase_settings()  # the eraser's own checks of steps, strength, seed, mask_dilation (naming the field)
        if self.telea_radius < 1:
            raise ValueError(f"telea_radius: must be >= 1, got {self.telea_radius}")


    def erase_settings(self) -> EraseSettings:
        """The eraser's per-call settings of this row (the seed is the first image's; each image adds its index).

        Plain SD inpainting (kind=sd) starts from pure noise (strength 1) without refocus; the paper's
        protocol is one pass over the whole letterboxed image (``whole_image``).
        """
        plain = self.kind == "sd"
        return EraseSettings(
            num_inference_steps=self.num_inference_steps, strength=1.0 if plain else self.strength,
            guidance_scale=self.guidance_scale, refocus=self.refocus and not plain, seed=self.seed,
            mask_dilation=self.mask_dilation, crop_margin=WHOLE_IMAGE_MARGIN if self.whole_image else 0.5,
        )


# An eraser takes (image HxWx3 uint8, mask bool HxW, index, pair key) and returns (image, info).
Eraser = Callable[[np.ndarray, np.ndarray, int, str], tuple[np.ndarray, dict[str, Any]]]


def _need_file(path: str, what: str) -> None:
    if not path or not Path(path).exists():
        raise MethodUnavailable(f"{what} not found at {path!r}")


def build_method(cfg: MethodConfig, device: str = "cpu", dtype: str | None = None, size: int = 512) -> Eraser:
    """The callable that erases ``size`` x ``size`` images with ``cfg``; MethodUnavailable when weights are absent."""
    if cfg.kind in ("telea", "lama"):
        try:
            from magiceraser.models.lama import LamaInpainter
            from magiceraser.pipelines.erase.content_init import TeleaInpainter
        except ImportError as exc:
            raise MethodUnavailable(f"the eraser's content initialisers are not importable: {exc}") from exc
        if cfg.kind == "telea":
            inpaint = TeleaInpainter(radius=cfg.telea_radius)
        else:
            _need_file(cfg.lama_path, "Big-LaMa TorchScript weights (lama_path)")
            inpaint = LamaInpainter(cfg.lama_path, device=device)

        def erase_classical(image: np.ndarray, mask: np.ndarray, index: int, key: str = "") -> tuple[np.ndarray, dict[str, Any]]:
            return np.asarray(inpaint(image, mask), np.uint8), {}

        return erase_classical
    return _build_diffusion(cfg, device, dtype, size)


def _build_diffusion(cfg: MethodConfig, device: str, dtype: str | None, size: int) -> Eraser:
    try:
        from magiceraser.pipelines.erase.build import build_eraser
    except ImportError as exc:
        raise MethodUnavailable(f"the MagicEraser pipeline is not importable: {exc}") from exc

    plain = cfg.kind == "sd"
    trained = None if plain or not cfg.trained_dir else cfg.trained_dir
    if trained:
        _need_file(trained, "trained MagicEraser directory (trained_dir)")
    content_init = "none" if plain else cfg.content_init
    if content_init == "lama":
        _need_file(cfg.lama_path, "Big-LaMa TorchScript weights (lama_path)")
    segmenter = load_segmenter(cfg.segmenter, device) if cfg.segmenter and not plain else None
    try:
        pipe = build_eraser(
            cfg.base_model, trained_dir=trained, segmenter=segmenter, content_init=content_init,
            lama_path=cfg.lama_path or None, telea_radius=cfg.telea_radius, device=device, dtype=dtype, model_size=size,
        )
    except (OSError, ValueError) as exc:
        raise MethodUnavailable(f"cannot load {cfg.base_model!r} (+ {trained or 'no trained dir'}): {exc}") from exc
    use_learned = cfg.learned_prompt and trained is not None and not plain
    settings = cfg.erase_settings()
    per_image = read_prompts(cfg.prompts) if cfg.prompts and not use_learned else {}

    def erase_diffusion(image: np.ndarray, mask: np.ndarray, index: int, key: str = "") -> tuple[np.ndarray, dict[str, Any]]:
        prompt = None if use_learned else per_image.get(key, cfg.prompt)
        out = pipe(image, mask, settings=settings.replace(prompt=prompt, seed=cfg.seed + index))
        return np.asarray(out.image, np.uint8), {"prompt": getattr(out, "prompt", None), "tag": getattr(out, "tag", None)}

    return erase_diffusion


def read_prompts(path: str) -> dict[str, str]:
    """{pair key: prompt} from a JSON object file; MethodUnavailable when missing or malformed."""
    import json

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MethodUnavailable(f"cannot read the per-image prompts file {path!r}: {exc}") from exc
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise MethodUnavailable(f"{path} must hold a JSON object mapping pair keys to prompt strings")
    return doc


def load_segmenter(model: str, device: str = "cpu"):
    """Mask2Former panoptic segmenter from the data engine; MethodUnavailable when absent."""
    try:
        from magiceraser.models.segmenter import Mask2FormerSegmenter
    except ImportError as exc:
        raise MethodUnavailable(f"the data engine's segmenter is not importable: {exc}") from exc
    try:
        return Mask2FormerSegmenter(model, device=device)
    except (OSError, ValueError) as exc:
        raise MethodUnavailable(f"cannot load the panoptic segmenter {model!r}: {exc}") from exc
