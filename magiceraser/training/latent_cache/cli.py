"""``magiceraser cache-latents``: the command."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from magiceraser.training.latent_cache.config import LatentCacheConfig

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli_args import config_argparser, load_cli_config

    parser = config_argparser("cache-latents", "precompute VAE latents of OLRD shards for the trainer")
    args = parser.parse_args(argv)
    cfg = load_cli_config(LatentCacheConfig, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from magiceraser.training.latent_cache.build import build_cache  # imports torch: not for --help

    summary = build_cache(cfg)
    print(json.dumps(summary))
    return 0
