"""The ``magiceraser`` console script: one command, one subcommand per job.

Each subcommand is a plain ``main(argv) -> int`` function in the module that owns the job; it is
imported only when chosen, so ``magiceraser --help`` stays fast and needs no GPU.

User errors: a subcommand raises :class:`~magiceraser.errors.UserError` (``ConfigError`` is one)
for a mistake the user can fix; :func:`main` prints it as one line, ``magiceraser <command>:
<message>``, and exits 2. Every other exception is a bug and keeps its traceback. ``--debug``
(before or after the command) or ``MAGICERASER_DEBUG=1`` re-raise user errors with their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from magiceraser.errors import USER_ERROR_EXIT_CODE, UserError

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
    "serve": ("magiceraser.serve.cli", "main", "serve the eraser on Ray Serve: HTTP API and a browser page"),
    "evaluate": ("magiceraser.evaluation.run", "main", "evaluate methods with the paper's protocol and metrics"),
}

# Config-driven subcommand -> "module:Class" of the config it loads, for the key listing in its
# --help. Named here (not imported) to keep `magiceraser --help` light; tests/test_cli.py checks
# that each subcommand really loads this class, so the listing cannot drift from the code.
CONFIG_CLASSES: dict[str, str] = {
    "olrd": "magiceraser.datasets.config:OLRDConfig",
    "cache-latents": "magiceraser.training.latent_cache:LatentCacheConfig",
    "train": "magiceraser.training.config:TrainConfig",
    "erase": "magiceraser.pipelines.erase.config:EraseConfig",
    "serve": "magiceraser.serve.config:ServeConfig",
    "evaluate": "magiceraser.evaluation.config:EvalConfig",
}

DEBUG_FLAG = "--debug"
DEBUG_ENV = "MAGICERASER_DEBUG"
_debug_from_argv = False  # set by main() for the duration of one command


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``magiceraser [--debug] COMMAND [ARGS...]``; user errors become one line + exit 2."""
    global _debug_from_argv
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, argv = _pop_debug_flags(argv)
    previous, _debug_from_argv = _debug_from_argv, _debug_from_argv or debug
    try:
        return _dispatch(argv)
    finally:
        _debug_from_argv = previous


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
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
    command = getattr(importlib.import_module(module), func)
    try:
        return int(command(rest) or 0)
    except UserError as exc:
        if debug_requested():
            raise
        return report_user_error(name, exc)


def _top_level_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"  {name:<{width}}  {helptext}" for name, (_, _, helptext) in COMMANDS.items()]
    return (
        "usage: magiceraser [--debug] COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines)
        + "\n\nRun `magiceraser COMMAND --help` for a command's options (config-driven commands list every"
        + "\nconfig key with its type, default and meaning)."
        + f"\n\n{DEBUG_FLAG} (before or after COMMAND) or {DEBUG_ENV}=1: show the traceback of a user error"
        + "\ninstead of the one-line message."
    )


def _pop_debug_flags(argv: list[str]) -> tuple[bool, list[str]]:
    """Remove every ``--debug`` before a ``--`` separator: it is global, whatever its position.

    Subcommands that are not config-driven have their own parsers, which would reject it.
    """
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    return len(kept) != len(argv), kept


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """True under ``--debug`` (given to ``magiceraser`` or to the subcommand) or ``MAGICERASER_DEBUG=1``."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return _debug_from_argv or bool(getattr(args, "debug", False)) or env in ("1", "true", "yes", "on")


def user_error_line(command: str, exc: BaseException) -> str:
    """``magiceraser <command>: <message>`` on one line (a message with newlines is joined)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"magiceraser {command}: {message}"


def report_user_error(command: str, exc: BaseException) -> int:
    """Print the one-line message on stderr and return the exit code for a user error."""
    print(user_error_line(command, exc), file=sys.stderr)
    return USER_ERROR_EXIT_CODE


class ConfigArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose help ends with the config keys of ``config_cls``.

    The listing is built only when help is printed (it imports the config module and reads the
    class source), so ordinary runs pay nothing for it.
    """

    def __init__(self, *args: Any, config_cls: type | str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_cls = config_cls

    def format_help(self) -> str:
        text = super().format_help()
        cls = resolve_config_class(self.config_cls)
        if cls is None:
            return text
        from magiceraser.config import config_help

        return text + "\n" + config_help(cls)


def resolve_config_class(ref: type | str | None) -> type | None:
    """A config class, or ``"module:Class"`` imported, or ``None``."""
    if ref is None or isinstance(ref, type):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def config_argparser(prog: str, description: str, config_cls: type | None = None) -> argparse.ArgumentParser:
    """Standard parser for config-driven subcommands: ``--config FILE`` plus ``key=value`` overrides.

    ``--help`` ends with every config key of ``config_cls`` (by default the class registered for
    ``prog`` in :data:`CONFIG_CLASSES`): key, type, default and the docstring under the field.
    """
    parser = ConfigArgumentParser(
        prog=f"magiceraser {prog}", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        config_cls=config_cls if config_cls is not None else CONFIG_CLASSES.get(prog),
    )
    parser.add_argument("--config", default=None, help="YAML config file (defaults are used without one)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override config fields, dotted keys for nesting"
    )
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help=f"show the traceback of a user error (also {DEBUG_ENV}=1)"
    )
    parser.set_defaults(_magiceraser_command=prog)
    return parser


def load_cli_config(cls, args: argparse.Namespace):
    """Load ``cls`` from parsed ``--config`` and overrides; a config error is one line and exit 2.

    It exits here (rather than raising to :func:`main`) so a subcommand's ``main`` called on its
    own behaves the same; with ``--debug`` the ConfigError propagates with its traceback.
    """
    from magiceraser.config import ConfigError, load_config

    try:
        return load_config(cls, args.config, args.overrides)
    except ConfigError as exc:
        if debug_requested(args):
            raise
        command = getattr(args, "_magiceraser_command", "config")
        raise SystemExit(report_user_error(command, exc)) from None
