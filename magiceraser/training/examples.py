"""One OLRD sample -> one training example: decode, crop containing the whole mask, the stock
``StableDiffusionInpaintPipeline`` inputs; or a latent-cache sample decoded as stored.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from magiceraser.olrd_samples import CorruptSample, _member
from magiceraser.training.sampling import crop_box_containing, mask_bbox, random_mask, stable_seed


@dataclass
class ExampleSpec:
    """How samples become examples (everything a DataLoader worker needs, picklable)."""

    resolution: int
    vae_scale_factor: int = 8
    mode: str = "olrd"
    crop_scale_min: float = 0.5
    mask_dilate_max: int = 0
    random_mask_max_boxes: int = 4
    seed: int = 0


class InpaintingInputs:
    """Stock ``StableDiffusionInpaintPipeline`` preprocessing of an image/mask pair (its own processors)."""

    def __init__(self, vae_scale_factor: int):
        from diffusers.image_processor import VaeImageProcessor

        # Exactly the two processors StableDiffusionInpaintPipeline.__init__ builds.
        self.vae_scale_factor = vae_scale_factor
        self.image_processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )

    def __call__(
        self, target: np.ndarray, condition: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int] | None, size: int
    ) -> dict[str, torch.Tensor]:
        """Tensors of one example: target I and masked Ĩ in [-1, 1], mask at latent size (as the pipeline)."""
        from PIL import Image

        kw = dict(height=size, width=size, crops_coords=box)
        target_t = self.image_processor.preprocess(Image.fromarray(target), **kw).float()
        cond_t = self.image_processor.preprocess(Image.fromarray(condition), **kw).float()
        mask_t = self.mask_processor.preprocess(Image.fromarray(mask.astype(np.uint8) * 255), **kw)
        # pipeline: masked_image = init_image * (mask_condition < 0.5)
        masked_t = cond_t * (mask_t < 0.5)
        # pipeline.prepare_mask_latents: F.interpolate(mask, size=latent size), default (nearest) mode
        lat = size // self.vae_scale_factor
        mask_latent = torch.nn.functional.interpolate(mask_t, size=(lat, lat))
        return dict(pixel_values=target_t[0], masked_pixel_values=masked_t[0], mask_latent=mask_latent[0])


def make_pixel_example(decoded: dict[str, Any], spec: ExampleSpec, inputs: InpaintingInputs) -> dict[str, Any]:
    """Crop/resize/mask one decoded sample into pixel-space training tensors (deterministic per key)."""
    import cv2

    rng = np.random.default_rng(stable_seed("geometry", spec.seed, decoded["key"]))
    original = decoded["original"]
    h, w = original.shape[:2]
    if spec.mode == "random_mask":
        short = min(h, w)
        side = int(rng.integers(int(np.ceil(spec.crop_scale_min * short)), short + 1))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        target = condition = original[y0 : y0 + side, x0 : x0 + side]
        mask = random_mask(side, rng, spec.random_mask_max_boxes)
        box = None
    else:
        target, condition, mask = original, decoded["blended"], decoded["mask"]
        box = crop_box_containing(mask_bbox(mask), h, w, spec.crop_scale_min, rng)
    if spec.mask_dilate_max > 0:
        r = int(rng.integers(0, spec.mask_dilate_max + 1))
        if r:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            mask = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    tensors = inputs(target, condition, mask, box, spec.resolution)
    return dict(key=decoded["key"], tags=decoded["tags"], caption=decoded["caption"], **tensors)


def decode_cached(sample: dict[str, Any]) -> dict[str, Any]:
    """Decode a latent-cache sample (see latent_cache.py): latent distribution parameters + mask."""
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(_member(sample, "json"))
        arrays = {
            name: torch.from_numpy(np.load(io.BytesIO(_member(sample, f"{name}.npy")), allow_pickle=False)).float()
            for name in ("image_latent_params", "masked_latent_params", "mask_latent")
        }
    except CorruptSample:
        raise
    except Exception as exc:
        raise CorruptSample("bad_cache_entry", f"latent-cache sample {key} cannot be decoded: {exc}") from exc
    return dict(key=key, tags=list(meta.get("tags") or []), caption=str(meta.get("caption") or ""), **arrays)
