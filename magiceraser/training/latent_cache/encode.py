"""Encoding one source shard into one cache shard, and what that cache shard depends on."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from typing import Any

import numpy as np
import torch

from magiceraser.errors import UserError
from magiceraser.fingerprint import config_digest, digest
from magiceraser.storage import Folder
from magiceraser.training.latent_cache.config import CACHE_FORMAT, MATCHED_FIELDS, LatentCacheConfig
from magiceraser.write_errors import writing

log = logging.getLogger(__name__)


def _stats_name(name: str) -> str:
    return name[: -len(".tar")] + ".stats.json"


def _npy(arr: torch.Tensor, dtype: str) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr.detach().cpu().numpy().astype(dtype), allow_pickle=False)
    return buf.getvalue()


def vae_digest(vae_config: Any) -> str:
    """Digest of a VAE's config (a loaded model's ``.config`` or the init dict of its config file)."""
    return config_digest(vae_config)


def stored_vae_digest(cfg: LatentCacheConfig) -> str:
    """:func:`vae_digest` of ``cfg.base_model``'s VAE from its config file alone (no weights loaded)."""
    from diffusers import AutoencoderKL

    try:
        raw = AutoencoderKL.load_config(cfg.base_model, subfolder="vae", revision=cfg.revision)
    except OSError as exc:
        raise UserError(f"base_model={cfg.base_model!r} has no loadable VAE config ({exc}); give a diffusers directory or Hub id") from exc
    return vae_digest(AutoencoderKL.extract_init_dict(raw)[0])


def source_identity(url: str) -> dict[str, Any]:
    """URL, size and modification stamp (ETag / mtime / LastModified) of a source shard.

    Read from the file system's metadata (one request on object storage): a rebuilt or replaced
    source shard under the same name has another identity.
    """
    import fsspec

    fs, _, (path,) = fsspec.get_fs_token_paths(url)
    try:
        info = fs.info(path)
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"source shard {url} cannot be read ({exc}); fix urls or restore the shard") from exc
    stamp = next((info[k] for k in ("ETag", "etag", "mtime", "LastModified", "updated", "md5Hash") if info.get(k) is not None), None)
    return {"url": url, "size": info.get("size"), "modified": str(stamp) if stamp is not None else None}


def shard_dependencies(url: str, cfg: LatentCacheConfig, vae_config_digest: str) -> dict[str, Any]:
    """What one cache shard's bytes depend on."""
    return {
        "format": CACHE_FORMAT,
        "source": source_identity(url),
        "base_model": cfg.base_model,
        "revision": cfg.revision,
        "vae_config": vae_config_digest,
        "storage_dtype": cfg.storage_dtype,
        **{k: getattr(cfg, k) for k in MATCHED_FIELDS},
    }


def _split(out_path: str, cfg: LatentCacheConfig) -> tuple[Folder, str]:
    """``out_path`` (a path or URL) as its folder and file name."""
    parent, _, name = str(out_path).rstrip("/").rpartition("/")
    return Folder(parent or ".", cfg.storage_options), name


def encode_shard(url: str, out_path: str, cfg: LatentCacheConfig, deps: dict[str, Any], vae=None) -> dict[str, Any]:
    """Encode one shard into ``out_path`` (complete or not at all) and write its stats sidecar; returns the stats.

    A source shard that cannot be opened or is damaged raises OSError naming ``url``; nothing is
    marked done for it.
    """
    import webdataset as wds

    from magiceraser.olrd_samples import CorruptSample, decode_olrd, read_tar_samples
    from magiceraser.training.examples import ExampleSpec, InpaintingInputs, make_pixel_example

    vae = vae if vae is not None else _load_vae(cfg)
    device = vae.device
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    spec = ExampleSpec(resolution=cfg.resolution, vae_scale_factor=scale, crop_scale_min=cfg.crop_scale_min,
                       mask_dilate_max=cfg.mask_dilate_max, seed=cfg.seed)
    inputs = InpaintingInputs(scale)
    stats: dict[str, Any] = {"url": url, "written": 0, "skipped": {}, "dependencies": deps, "fingerprint": digest(deps)}
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

    folder, name = _split(out_path, cfg)
    with writing(out_path, "a latent-cache shard"):  # a full disk: one line, no partial shard
        with folder.open_final(name) as fh:
            sink = wds.TarWriter(fh)
            try:
                try:
                    samples = list(read_tar_samples([url], strict=True))
                except OSError as exc:
                    raise OSError(f"source shard {url} cannot be read: {exc}") from exc
                for sample in samples:
                    try:
                        pending.append(make_pixel_example(decode_olrd(sample), spec, inputs))
                    except CorruptSample as exc:
                        stats["skipped"][sample.get("__key__", "?")] = exc.reason
                        log.warning("cache: skipping corrupt sample (%s): %s", exc.reason, exc)
                        continue
                    if len(pending) == cfg.batch_size:
                        flush(sink)
                flush(sink)
            except BaseException:
                with contextlib.suppress(Exception):  # its buffered tail goes to a file that is discarded anyway
                    sink.close()
                raise
            sink.close()
        folder.write_json(_stats_name(name), stats)
    return stats


def _load_vae(cfg: LatentCacheConfig):
    from diffusers import AutoencoderKL

    from magiceraser.devices import resolve_device

    device = torch.device(resolve_device(cfg.device))
    return AutoencoderKL.from_pretrained(cfg.base_model, subfolder="vae", revision=cfg.revision).to(device).eval()
