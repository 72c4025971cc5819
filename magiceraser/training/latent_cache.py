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
Each cache shard's ``.stats.json`` (counts, skip reasons, written after its tar) records what the
shard was encoded from (:func:`shard_dependencies`: the source shard's URL, size and
modification stamp, the base model and a digest of its VAE config, resolution, crop seed and
scale, mask jitter, storage dtype) and its fingerprint. A rerun reuses a shard only when that
record equals the current one and re-encodes it otherwise, saying which keys changed.

``cache.json`` is the completion marker: removed before any shard is (re)encoded, written last,
it lists the shards with their fingerprints and the settings the trainer checks against its
config (and the base model's VAE). The trainer reads exactly the shards it lists. A source shard
that cannot be read fails the build with its URL: it is never an empty cache shard marked done.

``out_dir`` may be an object store (``s3://bucket/cache``, any fsspec URL; credentials from the
AWS variables, fsspec's configuration or ``storage_options``): each shard is encoded into a local
temporary file and uploaded once under its final key (no temporary keys), its ``.stats.json``
after it and ``cache.json`` last, exactly the order that makes the local folder safe.
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

from magiceraser.errors import UserError
from magiceraser.fingerprint import changed, config_digest, describe_changes, digest
from magiceraser.storage import Folder, public_options

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
    from magiceraser.training.data import ExampleSpec, InpaintingInputs, make_pixel_example

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
    with folder.open_final(name) as fh:
        sink = wds.TarWriter(fh)
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
        sink.close()
    folder.write_json(_stats_name(name), stats)
    return stats


def _stats_name(name: str) -> str:
    return name[: -len(".tar")] + ".stats.json"


def _reusable(out: Folder, name: str, deps: dict[str, Any], listing: dict[str, int]) -> tuple[bool, str]:
    """Whether cache shard ``name``'s stats record ``deps``; else why not (for the log).

    ``listing``: the folder's files (one listing for all shards, one request on object storage).
    """
    if _stats_name(name) not in listing:
        return False, "not built"
    try:
        old = json.loads(out.read_text(_stats_name(name)))
    except FileNotFoundError:
        return False, "not built"
    except ValueError:
        return False, "unreadable stats"
    if old.get("fingerprint") == digest(deps) and name in listing:
        return True, ""
    return False, describe_changes(changed(old.get("dependencies") or {}, deps))


def build_cache(cfg: LatentCacheConfig) -> dict[str, Any]:
    """Encode every shard whose cache is missing or stale; write ``cache.json`` last. Returns the summary."""
    from magiceraser.config import config_to_dict
    from magiceraser.olrd_samples import expand_urls

    urls = expand_urls(cfg.urls, key="urls")
    names = [Path(u.rstrip("/").split("/")[-1]).name for u in urls]
    if len(set(names)) != len(names):
        raise UserError("urls: shard file names must be unique across urls (cache shards are named after them)")
    out = Folder(cfg.out_dir, cfg.storage_options)
    try:
        out.ensure()
    except (OSError, ValueError) as exc:
        raise UserError(f"out_dir={cfg.out_dir!r} cannot be used ({exc}); check the path, or the bucket, "
                        "credentials (AWS_* variables, storage_options) and endpoint") from None
    out.sweep_temporaries()
    vae_config = stored_vae_digest(cfg)
    deps = {n: shard_dependencies(u, cfg, vae_config) for u, n in zip(urls, names)}
    todo, reasons = [], {}
    listing = out.list()
    for u, n in zip(urls, names):
        ok, why = _reusable(out, n, deps[n], listing)
        if not ok:
            todo.append((u, out.url(n), deps[n]))
            reasons[why] = reasons.get(why, 0) + 1
    log.info("latent cache: %d of %d shards to encode into %s%s", len(todo), len(urls), out,
             "".join(f"; {k} x{v}" for k, v in reasons.items()))
    if todo:
        # The marker goes first: a build killed half-way must not leave a cache.json vouching for it.
        out.remove(CACHE_META)
    results, failures = _run_encodes(cfg, todo)
    if failures:
        raise UserError(f"latent cache: {len(failures)} source shard(s) could not be encoded; "
                        f"first: {failures[0]}; fix or remove them from urls and rerun (finished shards are kept)")
    written = sum(r["written"] for r in results)
    meta = {k: getattr(cfg, k) for k in MATCHED_FIELDS}
    meta.update(format=CACHE_FORMAT, base_model=cfg.base_model, revision=cfg.revision, vae_config=vae_config,
                storage_dtype=cfg.storage_dtype, shards={n: digest(deps[n]) for n in names},
                config={**config_to_dict(cfg), "storage_options": public_options(cfg.storage_options)})
    out.write_json(CACHE_META, meta)
    return {"encoded_shards": len(results), "written": written, "out_dir": str(out)}


def _run_encodes(cfg: LatentCacheConfig, todo: list[tuple[str, str, dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Encode ``todo`` here or as Ray tasks; every shard is tried, failures are returned as messages."""
    results, failures = [], []
    if cfg.executor == "ray" and todo:
        import ray

        if not ray.is_initialized():
            ray.init(address=cfg.ray_address, ignore_reinit_error=True)
        task = ray.remote(num_gpus=cfg.gpus_per_task, num_cpus=1)(encode_shard)
        refs = {task.remote(u, o, cfg, d): u for u, o, d in todo}
        for ref, url in refs.items():
            try:
                results.append(ray.get(ref))
            except Exception as exc:  # a task's OSError arrives wrapped in a RayTaskError
                failures.append(f"{url}: {getattr(exc, 'cause', None) or exc}")
        return results, failures
    vae = None
    for u, o, d in todo:
        try:
            vae = vae or _load_vae(cfg)
            results.append(encode_shard(u, o, cfg, d, vae=vae))
        except OSError as exc:
            log.error("latent cache: %s", exc)
            failures.append(str(exc))
    return results, failures


def _load_vae(cfg: LatentCacheConfig):
    from diffusers import AutoencoderKL

    from magiceraser.devices import resolve_device

    device = torch.device(resolve_device(cfg.device))
    return AutoencoderKL.from_pretrained(cfg.base_model, subfolder="vae", revision=cfg.revision).to(device).eval()


def _read_cache_meta(cache_dir: str) -> dict[str, Any]:
    import fsspec

    path = f"{cache_dir.rstrip('/')}/{CACHE_META}"
    try:
        with fsspec.open(path, "r") as fh:
            meta = json.load(fh)
    except FileNotFoundError as exc:
        raise UserError(f"data.latent_cache={cache_dir!r} has no {CACHE_META} (not built, or its build did not finish); "
                        "build it with `magiceraser cache-latents`") from exc
    if meta.get("format") != CACHE_FORMAT:
        raise UserError(f"data.latent_cache={cache_dir!r} was built by an older version (format {meta.get('format')}); "
                        "rebuild it with `magiceraser cache-latents`")
    return meta


def cache_shard_urls(cache_dir: str) -> list[str]:
    """The cache shards ``cache.json`` lists (never a glob: stale shards beside them are not read)."""
    from magiceraser.olrd_samples import missing_urls

    meta = _read_cache_meta(cache_dir)
    urls = [f"{cache_dir.rstrip('/')}/{name}" for name in meta["shards"]]
    missing = missing_urls(urls)
    if missing:
        raise UserError(f"data.latent_cache={cache_dir!r}: {len(missing)} of the {len(urls)} shards {CACHE_META} lists are missing "
                        f"(first: {missing[0]}); rebuild it with `magiceraser cache-latents`")
    return urls


def check_cache_matches(cache_dir: str, train_cfg, train_vae_digest: str) -> None:
    """Refuse (UserError) a cache made with other preprocessing than ``train_cfg.data`` or another VAE."""
    meta = _read_cache_meta(cache_dir)
    want = {name: getattr(train_cfg.data, name) for name in MATCHED_FIELDS}
    have = {name: meta.get(name) for name in MATCHED_FIELDS}
    diff = {f"data.{k}": v for k, v in changed(have, want).items()}
    if meta.get("vae_config") != train_vae_digest:
        diff["model.base_model (VAE config)"] = (meta.get("base_model"), train_cfg.model.base_model)
    if diff:
        raise UserError(
            f"data.latent_cache={cache_dir!r} was built with other settings than this run ({describe_changes(diff)}); "
            "rebuild the cache with the run's settings or set the same values"
        )


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli_args import config_argparser, load_cli_config

    parser = config_argparser("cache-latents", "precompute VAE latents of OLRD shards for the trainer")
    args = parser.parse_args(argv)
    cfg = load_cli_config(LatentCacheConfig, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = build_cache(cfg)
    print(json.dumps(summary))
    return 0
