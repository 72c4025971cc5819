"""The operations of a :class:`~magiceraser.storage.Folder` on a local (or shared, NFS) disk.

A file appears complete or not at all because it is written to a temporary sibling
(``.tmp-...``), fsynced and renamed onto its name (:mod:`magiceraser.atomic`); leftovers of a
killed writer are swept when a job starts. Create-if-absent hard-links a complete temporary file
onto the name, which fails when the name exists, also on NFS.

Every function takes the folder's directory (``root``) and a plain file name in it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from magiceraser.atomic import TMP_PREFIX, atomic_open, atomic_write_bytes, remove_stale_temporaries


def ensure(root: str) -> None:
    Path(root).mkdir(parents=True, exist_ok=True)


def sweep_temporaries(root: str) -> list[str]:
    return [str(p) for p in remove_stale_temporaries(Path(root))]


def write_bytes(root: str, name: str, data: bytes) -> None:
    atomic_write_bytes(Path(root) / name, data)


@contextlib.contextmanager
def open_final(root: str, name: str) -> Iterator[IO[bytes]]:
    with atomic_open(Path(root) / name, "wb") as fh:
        yield fh


def create_exclusive(root: str, name: str, data: bytes) -> bool:
    path = Path(root) / name
    tmp = path.with_name(f"{TMP_PREFIX}{name}.{secrets.token_hex(6)}")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_bytes(root: str, name: str) -> bytes:
    return (Path(root) / name).read_bytes()


def read_versioned(root: str, name: str) -> tuple[bytes, None, float | None]:
    """Content and modification time (local files carry no version)."""
    path = Path(root) / name
    data = path.read_bytes()
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        mtime = None
    return data, None, mtime


def exists(root: str, name: str) -> bool:
    return (Path(root) / name).exists()


def size(root: str, name: str) -> int | None:
    try:
        return (Path(root) / name).stat().st_size
    except FileNotFoundError:
        return None


def list_files(root: str) -> dict[str, int]:
    out = {}
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for e in entries:
        with contextlib.suppress(FileNotFoundError):
            if e.is_file():
                out[e.name] = e.stat().st_size
    return out


def list_tree(root: str) -> dict[str, int]:
    out = list_files(root)
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for e in entries:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if e.is_dir():
                out.update({f"{e.name}/{n}": n_bytes for n, n_bytes in list_files(str(Path(root) / e.name)).items()})
    return out


def remove(root: str, name: str) -> bool:
    try:
        (Path(root) / name).unlink()
        return True
    except FileNotFoundError:
        return False


def remove_all(root: str) -> None:
    shutil.rmtree(root, ignore_errors=True)
