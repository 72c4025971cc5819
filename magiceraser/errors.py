"""Exceptions that mean "the user made a mistake", as opposed to a bug in magiceraser.

This is a leaf module (it imports nothing from the project) so that every subcommand can raise
:class:`UserError` without import cycles. ``magiceraser.cli.main`` catches it and prints one line,
``magiceraser <command>: <message>``, with exit code 2; anything else keeps its traceback because
it is a bug. ``--debug`` or ``MAGICERASER_DEBUG=1`` re-raise user errors too, with the traceback.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["UserError", "USER_ERROR_EXIT_CODE", "Interrupted", "INTERRUPTED_EXIT_CODE", "exception_chain"]

#: Exit status for a user mistake (the same code argparse uses for bad arguments).
USER_ERROR_EXIT_CODE = 2
#: Exit status after Ctrl-C (128 + SIGINT, what a shell reports for a process SIGINT ended).
INTERRUPTED_EXIT_CODE = 130


class UserError(Exception):
    """A mistake the user can fix (bad value, missing input file, ...).

    The message must stand on its own as one line: say what is wrong, name the key, file or
    option involved, and, where it is not obvious, what to do instead.
    """


class Interrupted(Exception):
    """Ctrl-C ended a command; the message says what was kept (one line, exit code 130).

    The command's ``main`` adds the command line that continues.
    """


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: ``__cause__``, ``__context__`` and a ``cause`` attribute (Ray's
    errors keep the original there), each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
