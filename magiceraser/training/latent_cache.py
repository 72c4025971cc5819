"""``magiceraser cache-latents``: VAE latents of OLRD shards, computed once, read back by the trainer.

For every input shard ``olrd-XXXXXX.tar`` a cache shard of the same name holds, per sample key:

    image_latent_params.npy   VAE posterior (mean ‖ logvar, 8 x h x w) of the target I
    masked_latent_params.npy  VAE posterior of the masked input Ĩ * (m < 0.5)
    mask_latent.npy           the mask at latent size (1 x h x w), as the stock pipeline resizes it
    json                      tags and caption (prompt mixing happens at training time)

The crop of each sample is a function of (seed, key) (see ``data.make_pixel_example``), so the
cache equals what on-the-fly encoding sees; the trainer samples the posteriors with its own noise,
so training on the cache equals training with encoding every step. Storing the posterior
parameters rather than one sample keeps the VAE's sampling noise fresh at every visit.

Shards are independent jobs (locally in a loop, or one Ray task each with ``executor=ray``).
A shard is done when its ``.stats.json`` (counts and skip reasons) exists; reruns skip done shards.
``cache.json`` records the preprocessing parameters that the trainer checks against its config.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from magiceraser.atomic import atomic_open, atomic_write_json

log = logging.getLogger(__name__)
CACHE_META = "cache.json"
MATCHED_FIELDS = ("resolution", "crop_scale_min", "mask_dilate_max", "seed")


@dataclass
class LatentCacheConfig:
    urls: list[str] = field(default_factory=list)
    """OLRD shards to encode (paths, globs, brace patterns, fsspec URLs)."""
    out_dir: str = "runs/latent-cache"
    """Directory of the cache shards (local path)."""
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


def _npy(arr: torch.Tensor, dtype: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr.detach().cpu().numpy().astype(dtype), allow_pickle=False)
    return buf.getvalue()


def encode_shard(url: str, out_path: str, cfg: LatentCacheConfig, vae=None) -> dict[str, Any]:
    """Encode one shard into ``out_path`` (atomically) and write its stats sidecar; returns the stats."""
    import webdataset as wds
    from diffusers import AutoencoderKL

    from magiceraser.training.data import (
        CorruptSample,
        ExampleSpec,
        InpaintingInputs,
        decode_olrd,
        make_pixel_example,
        read_tar_samples,
    )

    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    if vae is None:
        vae = AutoencoderKL.from_pretrained(cfg.base_model, subfolder="vae", revision=cfg.revision).to(device).eval()
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    spec = ExampleSpec(resolution=cfg.resolution, vae_scale_factor=scale, crop_scale_min=cfg.crop_scale_min,
                       mask_dilate_max=cfg.mask_dilate_max, seed=cfg.seed)
    inputs = InpaintingInputs(scale)
    stats: dict[str, Any] = {"url": url, "written": 0, "skipped": {}}
    pending: list[dict[str, Any]] = []

    def flush(sink) -> None:
        if not pending:
            return
        with torch.no_grad():
            pix = torch.stack([e["pixel_values"] for e in pending]).to(device, vae.dtype)
            masked = torch.stack([e["masked_pixel_values"] for e in pending]).to(device, vae.dtype)
            p_img = vae.encode(pix).latent_dist.parameters.float()
            p_msk = vae.encode(masked).latent_dist.parameters.float()
        for i, e in enumerate(pending):
            sink.write({
                "__key__": e["key"],
                "image_latent_params.npy": _npy(p_img[i], cfg.storage_dtype),
                "masked_latent_params.npy": _npy(p_msk[i], cfg.storage_dtype),
                "mask_latent.npy": _npy(e["mask_latent"], "uint8"),
                "json": json.dumps({"tags": e["tags"], "caption": e["caption"]}).encode(),
            })
        stats["written"] += len(pending)
        pending.clear()

    with atomic_open(out_path, "wb") as fh:
        sink = wds.TarWriter(fh)
        for sample in read_tar_samples([url]):
            try:
                pending.append(make_pixel_example(decode_olrd(sample), spec, inputs))
            except CorruptSample as exc:
                stats["skipped"][sample.get("__key__", "?")] = exc.reason
                log.warning("cache: skipping corrupt sample (%s): %s", exc.reason, exc)
                continue
            if len(pending) == cfg.batch_size:
                flush(sink)
        flush(sink)
        sink.close()
    atomic_write_json(str(out_path)[: -len(".tar")] + ".stats.json", stats)
    return stats


def build_cache(cfg: LatentCacheConfig) -> dict[str, Any]:
    """Encode every shard not yet done; write ``cache.json`` last. Returns the summary."""
    from magiceraser.atomic import remove_stale_temporaries
    from magiceraser.config import config_to_dict
    from magiceraser.training.data import expand_urls

    urls = expand_urls(cfg.urls)
    if not urls:
        raise ValueError(f"urls {cfg.urls} matched no shards")
    names = [Path(u.rstrip("/").split("/")[-1]).name for u in urls]
    if len(set(names)) != len(names):
        raise ValueError("shard file names must be unique across urls (cache shards are named after them)")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    todo = [(u, str(out / n)) for u, n in zip(urls, names) if not (out / (n[: -len(".tar")] + ".stats.json")).is_file()]
    log.info("latent cache: %d of %d shards to encode into %s", len(todo), len(urls), out)
    if cfg.executor == "ray" and todo:
        import ray

        if not ray.is_initialized():
            ray.init(address=cfg.ray_address, ignore_reinit_error=True)
        task = ray.remote(num_gpus=cfg.gpus_per_task, num_cpus=1)(encode_shard)
        results = ray.get([task.remote(u, o, cfg) for u, o in todo])
    else:
        results = [encode_shard(u, o, cfg) for u, o in todo]
    written = sum(r["written"] for r in results)
    meta = {k: getattr(cfg, k) for k in MATCHED_FIELDS}
    meta.update(base_model=cfg.base_model, shards=names, config=config_to_dict(cfg))
    atomic_write_json(out / CACHE_META, meta)
    return {"encoded_shards": len(results), "written": written, "out_dir": str(out)}


def check_cache_matches(cache_dir: str, train_cfg) -> None:
    """Raise ValueError if the cache was made with other preprocessing than ``train_cfg.data``."""
    import fsspec

    path = f"{cache_dir.rstrip('/')}/{CACHE_META}"
    try:
        with fsspec.open(path, "r") as fh:
            meta = json.load(fh)
    except FileNotFoundError as exc:
        raise ValueError(f"data.latent_cache={cache_dir!r} has no {CACHE_META}; build it with `magiceraser cache-latents`") from exc
    for name in MATCHED_FIELDS:
        if meta.get(name) != getattr(train_cfg.data, name):
            raise ValueError(
                f"data.{name}={getattr(train_cfg.data, name)!r} but the latent cache was built with {name}={meta.get(name)!r}; "
                "rebuild the cache or set the same value"
            )


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli import config_argparser, load_cli_config

    parser = config_argparser("cache-latents", "precompute VAE latents of OLRD shards for the trainer")
    args = parser.parse_args(argv)
    cfg = load_cli_config(LatentCacheConfig, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = build_cache(cfg)
    print(json.dumps(summary))
    return 0
