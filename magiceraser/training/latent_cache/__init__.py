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

import importlib
from typing import TYPE_CHECKING, Any

from magiceraser.training.latent_cache.cli import main
from magiceraser.training.latent_cache.config import (
    CACHE_FORMAT,
    CACHE_META,
    MATCHED_FIELDS,
    LatentCacheConfig,
)
from magiceraser.training.latent_cache.reader import cache_shard_urls, check_cache_matches

if TYPE_CHECKING:
    from magiceraser.training.latent_cache.build import build_cache
    from magiceraser.training.latent_cache.encode import (
        encode_shard,
        shard_dependencies,
        source_identity,
        stored_vae_digest,
        vae_digest,
    )

# Names whose modules import torch (encode.py, and build.py through it) are imported on first use
# (PEP 562 module __getattr__), so that ``magiceraser cache-latents --help``, which imports this
# package for its command and for LatentCacheConfig, does not load torch (about 1 s warm, several
# from a cold disk). tests/test_config_help_text.py checks it for every command's --help.
_LAZY = {
    "build_cache": "build",
    "encode_shard": "encode",
    "shard_dependencies": "encode",
    "source_identity": "encode",
    "stored_vae_digest": "encode",
    "vae_digest": "encode",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CACHE_FORMAT", "CACHE_META", "MATCHED_FIELDS", "LatentCacheConfig", "build_cache", "cache_shard_urls",
    "check_cache_matches", "encode_shard", "main", "shard_dependencies", "source_identity", "stored_vae_digest", "vae_digest",
]
