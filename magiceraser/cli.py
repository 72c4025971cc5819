"""The ``magiceraser`` console script: one command, one subcommand per job.

Each subcommand is a plain ``main(argv) -> int`` function in the module that owns the job; it is
imported only when chosen, so ``magiceraser --help`` stays fast and needs no GPU.

User errors: a subcommand raises :class:`~magiceraser.errors.UserError` (``ConfigError`` is one)
for a mistake the user can fix; :func:`main` prints it as one line, ``magiceraser <command>:
<message>``, and exits 2; so is a write the storage refused (full, over quota, read-only:
:mod:`magiceraser.write_errors`). Every other exception is a bug and keeps its traceback. ``--debug``
(before or after the command) or ``MAGICERASER_DEBUG=1`` re-raise user errors with their traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from magiceraser.cli_args import DEBUG_ENV, DEBUG_FLAG, debug_scope, user_error_exit
from magiceraser.errors import UserError

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("magiceraser.demo", "main", "run the whole system on its embedded default under demo/"),
    "tiny-models": ("magiceraser.tiny_models", "main", "write random-weight models in their real on-disk formats"),
    "demo-scenes": ("magiceraser.datasets.demo_scenes", "main", "build demo scenes with panoptic annotations from skimage.data"),
    "olrd": ("magiceraser.datasets.olrd_job", "main", "build OLRD training shards on Ray"),
    "preview": ("magiceraser.datasets.preview", "main", "render a grid of samples from an OLRD shard to PNG"),
    "cache-latents": ("magiceraser.training.latent_cache.cli", "main", "precompute VAE latents of OLRD shards"),
    "train": ("magiceraser.training.train", "main", "prompt-tune v* and LoRA on SD 1.5 Inpainting"),
    "erase": ("magiceraser.pipelines.erase.cli", "main", "erase masked objects from images"),
    "serve": ("magiceraser.serve.cli", "main", "serve the eraser on Ray Serve: HTTP API and a browser page"),
    "evaluate": ("magiceraser.evaluation.run", "main", "evaluate methods with the paper's protocol and metrics"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``magiceraser [--debug] COMMAND [ARGS...]``; user errors become one line + exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, argv = _pop_debug_flags(argv)
    with debug_scope(debug):
        from magiceraser.quiet import silence_known_warnings

        silence_known_warnings()  # the libraries' expected alarms, each with its reason (quiet.py); not under --debug
        return _dispatch(argv)


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
    except (UserError, OSError) as exc:
        # An OSError here is a full disk, a quota or a read-only mount that no writer named in its own
        # words (writers wrap their work in write_errors.writing): still one line, path and free space.
        code = user_error_exit(name, exc)
        if code is None:
            raise
        return code


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


