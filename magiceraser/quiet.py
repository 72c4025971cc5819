"""Messages of the libraries that are expected in this project and ask nothing of the user: one list, silenced.

A message a new user reads as a problem ("Install torchvision", "open an issue", a red ``E``
line) must either be fixed where it comes from or, when it is expected here, be silenced at its
source with the reason written down. This module is the written-down list; the fixes live with
the code that caused them (``training.model.cast_frozen``, ``models.stable_diffusion.load_lora``).
``--debug`` (or ``MAGICERASER_DEBUG=1``) shows everything: nothing is installed then.

Two kinds: Python log records, dropped by a filter on the logger that emits them
(:func:`silence_known_warnings`, installed by the command-line dispatcher and by the processes
a command starts that print to its terminal: Serve replicas, Ray Train workers), and a line Ray's
C++ core worker writes to the process's stderr (:func:`filtered_stderr`, around the OLRD pipeline).
``--debug`` is passed on to those processes as ``MAGICERASER_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["KNOWN_LOG_MESSAGES", "KNOWN_STDERR_LINES", "silence_known_warnings", "filtered_stderr", "debugging"]


@dataclass(frozen=True)
class Known:
    logger: str
    text: str
    why: str


KNOWN_LOG_MESSAGES: tuple[Known, ...] = (
    Known("transformers.utils.import_utils", "requires torchvision (not installed)",
          "magiceraser never installs torchvision (its wheels pull a second torch build); transformers then uses "
          "the PIL image processors, which give the models the same inputs. Nothing to install."),
    Known("transformers.modeling_utils", "initialized from a multivariate normal",
          "diffusers' load_textual_inversion grows the text encoder's embedding matrix by the learned token and "
          "writes v* into the new row right after: the row's initial values are never used."),
)

# Ray Data passes every actor pool's constructor arguments (its DataContext and the map
# transformer) as object references, and Ray's core worker logs an error for each actor with
# max_restarts > 0 because such arguments would be gone if their owner died. Their owner is this
# driver, which holds them for the whole pipeline (a restart after a crashed actor works: the
# olrd tests kill one), so the line warns of nothing that can happen here.
KNOWN_STDERR_LINES: tuple[str, ...] = (
    "has constructor arguments in the object store and max_restarts > 0",
)


def debugging() -> bool:
    """``--debug`` or ``MAGICERASER_DEBUG=1``: every message is shown."""
    from magiceraser.cli_args import debug_requested

    return debug_requested()


class _DropKnown(logging.Filter):
    def __init__(self, texts: Sequence[str]):
        super().__init__()
        self.texts = tuple(texts)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


_installed: dict[str, _DropKnown] = {}


def silence_known_warnings() -> None:
    """Filter :data:`KNOWN_LOG_MESSAGES` on their loggers (idempotent; nothing under ``--debug``)."""
    if debugging():
        return
    by_logger: dict[str, list[str]] = {}
    for known in KNOWN_LOG_MESSAGES:
        by_logger.setdefault(known.logger, []).append(known.text)
    for name, texts in by_logger.items():
        if name not in _installed:
            _installed[name] = _DropKnown(texts)
            logging.getLogger(name).addFilter(_installed[name])


@contextlib.contextmanager
def filtered_stderr(drop: Sequence[str] = KNOWN_STDERR_LINES) -> Iterator[None]:
    """Within the block, lines written to file descriptor 2 that contain one of ``drop`` are not shown.

    For lines written below Python (a C++ library's log). fd 2 is pointed at a pipe that a thread
    copies, line by line, to the real stderr; at the end fd 2 is restored and the rest is copied.
    Processes started within the block would inherit the pipe, so enter it only after they
    started (the OLRD driver enters it after Ray). A crash of this process inside the block (an
    abort right after a C++ fatal message) may lose the last lines not yet copied: rerun with
    ``--debug``, under which nothing is filtered.
    """
    if debugging() or not drop:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, False)

    def copy() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                _write(saved, [line for line in lines if not _known(line, drop)])
            if pending and not _known(pending, drop):
                os.write(saved, pending)

    thread = threading.Thread(target=copy, name="stderr-filter", daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end is closed: the thread reads to its end
        thread.join(timeout=5)
        os.close(saved)


def _known(line: bytes, drop: Sequence[str]) -> bool:
    text = line.decode("utf-8", "replace")
    return any(d in text for d in drop)


def _write(fd: int, lines: list[bytes]) -> None:
    if lines:
        data = b"\n".join(lines) + b"\n"
        while data:
            data = data[os.write(fd, data):]
