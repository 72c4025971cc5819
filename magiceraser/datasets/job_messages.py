"""How ``magiceraser olrd`` speaks to its user: the one-line refusal and the ``[olrd]`` log line.

:class:`JobError` is a mistake the job refuses to start on (one line, exit code 2);
:func:`log` writes a progress or warning line to stderr; :func:`first_line` shortens an
exception to the line a message quotes.
"""

from __future__ import annotations

import sys

from magiceraser.errors import UserError


class JobError(UserError):
    """A user error the job refuses to start on (wrong or foreign output, no inputs): one line, exit code 2."""


def log(message: str) -> None:
    print(f"[olrd] {message}", file=sys.stderr, flush=True)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""
