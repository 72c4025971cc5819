"""The trainer's side of the cache: the shards ``cache.json`` lists and the check of its settings."""

from __future__ import annotations

import json
import logging
from typing import Any

from magiceraser.errors import UserError
from magiceraser.fingerprint import changed, describe_changes
from magiceraser.training.latent_cache.config import CACHE_FORMAT, CACHE_META, MATCHED_FIELDS

log = logging.getLogger(__name__)


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
