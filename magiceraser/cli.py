"""The ``magiceraser`` console script: one command, one subcommand per job.

Each subcommand is a plain ``main(argv) -> int`` function in the module that owns the job; it is
imported only when chosen, so ``magiceraser --help`` stays fast and needs no GPU.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("magiceraser.demo", "main", "run the whole system on its embedded default under demo/"),
    "tiny-models": ("magiceraser.tiny_models", "main", "write random-weight models in their real on-disk formats"),
    "demo-scenes": ("magiceraser.datasets.demo_scenes", "main", "build demo scenes with panoptic annotations from skimage.data"),
    "olrd": ("magiceraser.datasets.olrd_job", "main", "build OLRD training shards on Ray"),
    "preview": ("magiceraser.datasets.preview", "main", "render a grid of samples from an OLRD shard to PNG"),
    "cache-latents": ("magiceraser.training.latent_cache", "main", "precompute VAE latents of OLRD shards"),
    "train": ("magiceraser.training.train", "main", "prompt-tune v* and LoRA on SD 1.5 Inpainting"),
    "erase": ("magiceraser.pipelines.erase.cli", "main", "erase masked objects from images"),
    "evaluate": ("magiceraser.evaluation.run", "main", "evaluate methods with the paper's protocol and metrics"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(n) for n in COMMANDS)
        lines = [f"  {name:<{width}}  {helptext}" for name, (_, _, helptext) in COMMANDS.items()]
        print("usage: magiceraser COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines))
        print("\nRun `magiceraser COMMAND --help` for a command's options.")
        return 0
    if argv[0] in ("-V", "--version"):
        from magiceraser import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"magiceraser: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


def config_argparser(prog: str, description: str) -> argparse.ArgumentParser:
    """Standard parser for config-driven subcommands: ``--config FILE`` plus ``key=value`` overrides."""
    parser = argparse.ArgumentParser(prog=f"magiceraser {prog}", description=description)
    parser.add_argument("--config", default=None, help="YAML config file (defaults are used without one)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override config fields, dotted keys for nesting"
    )
    return parser


def load_cli_config(cls, args: argparse.Namespace):
    """Load ``cls`` from parsed ``--config`` and overrides, exiting with a clear message on error."""
    from magiceraser.config import ConfigError, load_config

    try:
        return load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        print(f"magiceraser: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
