"""What every config-driven subcommand shares: its argument parser, config loading, user errors.

A leaf of the command line: the subcommands import it, and so does the dispatcher
(:mod:`magiceraser.cli`), which imports the subcommands only when chosen; nothing here imports
a subcommand, so dependencies point one way.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from magiceraser.errors import USER_ERROR_EXIT_CODE

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
_debug_from_argv = False  # set by the dispatcher for the duration of one command (debug_scope)


@contextlib.contextmanager
def debug_scope(debug: bool) -> Iterator[None]:
    """``--debug`` given to ``magiceraser`` itself holds for the one command it dispatches, and for the
    processes it starts (Ray workers, Serve replicas), which see ``MAGICERASER_DEBUG=1``."""
    global _debug_from_argv
    previous, _debug_from_argv = _debug_from_argv, _debug_from_argv or debug
    env_before = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"
    try:
        yield
    finally:
        _debug_from_argv = previous
        if debug and env_before is None:
            os.environ.pop(DEBUG_ENV, None)
        elif debug:
            os.environ[DEBUG_ENV] = env_before


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


def user_error_exit(command: str, exc: BaseException, args: argparse.Namespace | None = None) -> int | None:
    """For an exception that ended ``command``: the one-line report and exit code 2 if it is the user's
    to fix (a UserError, or a write the storage refused: full, quota, read-only); None for a bug, or
    under ``--debug``: re-raise it then."""
    from magiceraser.errors import UserError
    from magiceraser.write_errors import as_write_error

    error = exc if isinstance(exc, UserError) else as_write_error(exc)
    if error is None or debug_requested(args):
        return None
    return report_user_error(command, error)


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


class PlainTextHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help with the reStructuredText of docstrings rendered as plain text (``x`` -> 'x', :func:`f` -> f).

    Descriptions (often a module docstring's first paragraph) and epilogs keep their line breaks,
    as with :class:`argparse.RawDescriptionHelpFormatter`; option help is wrapped as usual. The
    rendering is :func:`magiceraser.config.plain_text`, the one the config key listing uses.
    Any parser can take it: ``argparse.ArgumentParser(..., formatter_class=PlainTextHelpFormatter)``.
    """

    def _format_text(self, text: str) -> str:
        from magiceraser.config import plain_text

        return super()._format_text(plain_text(text))

    def _expand_help(self, action: argparse.Action) -> str:
        from magiceraser.config import plain_text

        return plain_text(super()._expand_help(action))


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
        formatter_class=PlainTextHelpFormatter,
        config_cls=config_cls if config_cls is not None else CONFIG_CLASSES.get(prog),
    )
    parser.add_argument("--config", default=None, help="YAML config file (defaults are used without one)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="override config fields: dotted keys for nesting, key[i].field for element i of a list",
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
