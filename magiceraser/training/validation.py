"""Validation: erase fixed held-out OLRD samples with the stock diffusers inpainting pipeline.

The pipeline is assembled from the components being trained (LoRA active, v* in the text
encoder), the prompt is the learned one ``A photo of R* {dominant tag}``, and each sample becomes a
row (input Ĩ, mask, result, target I) of an image grid. During training rank 0 reads the
held-out samples once (:func:`held_out_samples`) and writes each validation step's grid to
``{out_dir}/validation/step-{step:08d}.png`` and to W&B (:func:`write_validation_grid`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from magiceraser.prompts import learned_prompt
from magiceraser.training.config import TrainConfig
from magiceraser.training.sampling import crop_box_containing, mask_bbox, stable_seed
from magiceraser.training.tracking import NullLogger, image_grid
from magiceraser.write_errors import writing


def prepare_validation_samples(decoded: list[dict[str, Any]], resolution: int, crop_scale_min: float, seed: int) -> list[dict[str, Any]]:
    """Crop (containing the mask, same rule as training) and resize held-out samples once."""
    from PIL import Image

    out = []
    for s in decoded:
        h, w = s["mask"].shape
        rng = np.random.default_rng(stable_seed("geometry", seed, s["key"]))
        box = crop_box_containing(mask_bbox(s["mask"]), h, w, crop_scale_min, rng)

        def crop(a: np.ndarray, mode: str, box: tuple[int, int, int, int] = box) -> np.ndarray:
            img = Image.fromarray(a[box[1] : box[3], box[0] : box[2]])
            return np.asarray(img.resize((resolution, resolution), Image.NEAREST if mode == "mask" else Image.LANCZOS))

        mask = crop(s["mask"].astype(np.uint8) * 255, "mask")
        out.append(dict(key=s["key"], input=crop(s["blended"], "rgb"), target=crop(s["original"], "rgb"), mask=mask, tags=s["tags"]))
    return out


@torch.no_grad()
def run_validation(model, base_scheduler_config: dict[str, Any], samples: list[dict[str, Any]], token: str, num_inference_steps: int, guidance_scale: float, seed: int, device: torch.device) -> np.ndarray:
    """Erase every sample with the current weights; return the (input, mask, result, target) grid."""
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline
    from PIL import Image

    was_training = model.unet.training
    model.unet.eval()
    pipe = StableDiffusionInpaintPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=PNDMScheduler.from_config(base_scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    rows = []
    try:
        for s in samples:
            size = s["input"].shape[0]
            result = pipe(
                prompt=learned_prompt(token, s["tags"][0] if s["tags"] else None),
                image=Image.fromarray(s["input"]),
                mask_image=Image.fromarray(s["mask"]),
                height=size,
                width=size,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=torch.Generator(device="cpu").manual_seed(seed),
                output_type="np",
            ).images[0]
            result = (np.clip(result, 0, 1) * 255).round().astype(np.uint8)
            rows.append([s["input"], s["mask"], result, s["target"]])
    finally:
        model.unet.train(was_training)
    return image_grid(rows)


def held_out_samples(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The first ``validation.num_samples`` samples of ``validation.urls``, cropped and resized for validation."""
    from magiceraser.training.data import read_first_samples

    v = cfg.validation
    decoded = read_first_samples(v.urls, v.num_samples)
    return prepare_validation_samples(decoded, cfg.data.resolution, cfg.data.crop_scale_min, cfg.data.seed)


def validation_grid_path(out_dir: Path, step: int) -> Path:
    """Where the grid of ``step`` is written."""
    return Path(out_dir) / "validation" / f"step-{step:08d}.png"


def latest_validation_grid(out_dir: Path, step: int) -> Path | None:
    """The newest grid written at or before ``step`` (this run's: a replaced run's folder is cleared), or None."""
    grids = sorted((Path(out_dir) / "validation").glob("step-*.png"))
    grids = [g for g in grids if g.stem.removeprefix("step-").isdigit() and int(g.stem.removeprefix("step-")) <= step]
    return grids[-1] if grids else None


def write_validation_grid(model, base_scheduler_config: dict[str, Any], samples: list[dict[str, Any]], cfg: TrainConfig,
                          device: torch.device, out_dir: Path, step: int, logger: NullLogger) -> None:
    """Erase ``samples`` with the current weights; write the grid of ``step`` under ``out_dir`` and to W&B."""
    from magiceraser.atomic import atomic_write_bytes
    from magiceraser.imageio import encode_image

    v = cfg.validation
    grid = run_validation(
        model, base_scheduler_config, samples, cfg.model.token,
        v.num_inference_steps, v.guidance_scale, v.seed, device,
    )
    path = validation_grid_path(out_dir, step)
    with writing(path, "a validation grid"):
        atomic_write_bytes(path, encode_image(grid, "png"))
    logger.log_image("validation/grid", grid, "rows: input, mask, result, target", step=step)
