"""A full disk, a quota, a read-only mount or a refused write: one line for the user, not a traceback.

Every command writes results somewhere the user chose (shards, latent caches, checkpoints, the
export, erased images). When that storage refuses a write, the cause is the user's to fix (free
space, another folder, permissions), so it is a :class:`~magiceraser.errors.UserError`: one line
naming the path, what was being written and the free space there, exit status 2. What was written
half-way is never taken for complete: on a filesystem every writer goes through a temporary name
and a rename (:mod:`magiceraser.atomic`); on an object store each object is one PUT and a set of
them counts only once its marker is written, last.

Writers wrap their work in :func:`writing`; :func:`as_write_error` is the same translation for
the command line's last resort (an OSError that escaped without context).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from magiceraser.errors import UserError

#: errno -> what the user reads, for errors only a write meets. EDQUOT is absent on some platforms.
SPACE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "the file is too large for the file system",
}
if hasattr(errno, "EDQUOT"):
    SPACE_ERRNOS[errno.EDQUOT] = "the disk quota is exceeded"
#: Refusals a read meets too: translated only inside a writer's own :func:`writing` block.
PERMISSION_ERRNOS: dict[int, str] = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
WRITE_ERRNOS = {**SPACE_ERRNOS, **PERMISSION_ERRNOS}

_ADVICE = {
    errno.ENOSPC: "free space there or write to another location",
    errno.EROFS: "write to a writable location",
    errno.EACCES: "write to a location this user may write to",
    errno.EPERM: "write to a location this user may write to",
    errno.EFBIG: "write to another file system",
}


class WriteError(UserError):
    """The storage refused a write (full, over quota, read-only, not permitted)."""


def is_write_error(exc: BaseException, permissions: bool = True) -> bool:
    """Whether ``exc`` is an OSError that says the storage refused a write (``permissions``: counting
    EACCES/EPERM, which a read can meet too)."""
    return isinstance(exc, OSError) and exc.errno in (WRITE_ERRNOS if permissions else SPACE_ERRNOS)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_space(path: str | os.PathLike) -> str:
    """``'12.0 KiB free of 1.0 MiB'`` on the file system holding ``path`` (its nearest existing parent)."""
    text = os.fspath(path)
    if "://" in text and not text.startswith("file://"):
        return "free space unknown (object store)"
    p = Path(text.removeprefix("file://")).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return "free space unknown"
    return f"{_human(usage.free)} free of {_human(usage.total)}"


def write_error_message(exc: OSError, path: str | os.PathLike | None, what: str) -> str:
    """``cannot write WHAT to PATH: REASON (FREE); ADVICE`` for a refused write."""
    where = os.fspath(path) if path is not None else (exc.filename or "?")
    reason = WRITE_ERRNOS.get(exc.errno or 0, exc.strerror or str(exc))
    advice = _ADVICE.get(exc.errno or 0, "write to another location")
    return (f"cannot write {what} to {where}: {reason} ({free_space(where)} there); {advice}; "
            "what was written half-way is never taken for complete")


def as_write_error(exc: BaseException, path: str | os.PathLike | None = None, what: str = "a file",
                   permissions: bool = False) -> WriteError | None:
    """The :class:`WriteError` for ``exc`` if it is a refused write, else None.

    Without ``permissions`` (the command line's last resort, which cannot tell a read from a
    write) only the errors a write alone meets count: a full disk, a quota, a read-only mount.
    """
    if not is_write_error(exc, permissions):
        return None
    assert isinstance(exc, OSError)
    return WriteError(write_error_message(exc, path if path is not None else exc.filename, what))


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a refused write inside the block into a :class:`WriteError` naming ``path`` and ``what``."""
    try:
        yield
    except OSError as exc:
        error = as_write_error(exc, path, what, permissions=True)
        if error is None:
            raise
        raise error from exc
