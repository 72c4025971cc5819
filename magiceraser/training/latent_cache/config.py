"""``LatentCacheConfig``: what ``magiceraser cache-latents`` encodes, with which model and settings, and where to."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)
CACHE_META = "cache.json"
CACHE_FORMAT = 2
MATCHED_FIELDS = ("resolution", "crop_scale_min", "mask_dilate_max", "seed")


@dataclass
class LatentCacheConfig:
    urls: list[str] = field(default_factory=list)
    """OLRD shards to encode (paths, globs, brace patterns, fsspec URLs)."""
    out_dir: str = "runs/latent-cache"
    """Directory of the cache shards: a local path or an fsspec URL (s3://bucket/cache)."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for an object-store out_dir (e.g. {endpoint_url: ...}); empty: AWS_* / FSSPEC_* variables. Masked in cache.json."""
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-inpainting"
    """Model whose VAE encodes the images (must be the model you train)."""
    revision: str | None = None
    """Hub revision of the base model."""
    resolution: int = 512
    """Training resolution (must equal data.resolution of the training run)."""
    crop_scale_min: float = 0.5
    """Must equal data.crop_scale_min of the training run."""
    mask_dilate_max: int = 0
    """Must equal data.mask_dilate_max of the training run."""
    seed: int = 0
    """Must equal data.seed of the training run (crops are a function of seed and key)."""
    batch_size: int = 16
    """Images per VAE forward pass."""
    storage_dtype: Literal["float32", "float16"] = "float16"
    """dtype of the stored latent parameters."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the VAE."""
    executor: Literal["local", "ray"] = "local"
    """``local``: shards one after another here; ``ray``: one Ray task per shard."""
    ray_address: str | None = None
    """Ray cluster address (None = RAY_ADDRESS or a local Ray)."""
    gpus_per_task: float = 0.0
    """GPUs per Ray task (e.g. 0.25 packs four encoders on a GPU)."""

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.crop_scale_min <= 1:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if self.gpus_per_task < 0:
            raise ValueError(f"gpus_per_task must be >= 0, got {self.gpus_per_task}")
