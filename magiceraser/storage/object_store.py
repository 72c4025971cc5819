"""The operations of a :class:`~magiceraser.storage.Folder` on an object store, through fsspec.

An object store has no rename, and none is needed: a PUT (or a multipart upload, which becomes
visible only when completed) is atomic. Every object is written once under its final key; no
temporary key is ever created, so there is nothing to sweep. What marks an object as *done* is
the job's own protocol: a shard counts when its sidecar exists (written after it).

Create-if-absent and conditional replace or delete (the lock, ``lock.py``) use S3's conditional
requests (``If-None-Match: *`` / ``If-Match: <etag>``) on ``s3://``; other object stores get the
backend's exclusive-create mode (``"xb"``), and their replace is unconditional.

fsspec caches listings, so every existence test, size and listing drops the cached entry first:
other processes may have written the folder since. Every function takes the folder (its fsspec
file system is built on first use) and a plain file name in it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import IO, Any, Protocol

S3_PROTOCOLS = frozenset({"s3", "s3a"})


class Location(Protocol):
    """What these functions need of a folder on an object store (:class:`~magiceraser.storage.Folder`)."""

    given: str
    protocol: str

    @property
    def fs(self) -> Any: ...

    @property
    def root(self) -> str: ...

    def key(self, name: str) -> str: ...


def is_s3(folder: Location) -> bool:
    return folder.protocol in S3_PROTOCOLS


def ensure(folder: Location) -> None:
    """Reach the folder's bucket; FileNotFoundError when it does not exist."""
    bucket = folder.root.split("/", 1)[0]
    if not folder.fs.exists(bucket):
        raise FileNotFoundError(f"bucket {bucket!r} of {folder.given} does not exist (or is not visible with these credentials)")


def write_bytes(folder: Location, name: str, data: bytes) -> None:
    folder.fs.pipe_file(folder.key(name), data)


@contextlib.contextmanager
def open_final(folder: Location, name: str) -> Iterator[IO[bytes]]:
    """Spool to a local temporary file (memory stays flat for large shards), upload when the block ends without error."""
    spool = tempfile.NamedTemporaryFile(prefix="magiceraser-upload-", delete=False)
    try:
        with spool:
            yield spool
        folder.fs.put_file(spool.name, folder.key(name))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool.name)


def create_exclusive(folder: Location, name: str, data: bytes) -> bool:
    try:
        if is_s3(folder):
            folder.fs.pipe_file(folder.key(name), data, mode="create")
        else:
            with folder.fs.open(folder.key(name), "xb") as fh:
                fh.write(data)
    except FileExistsError:
        return False
    return True


def replace_if_s3(folder: Location, name: str, data: bytes, version: str) -> bool:
    """Overwrite ``name`` if its ETag is still ``version`` (``If-Match``); False if it changed."""
    bucket, key = folder.key(name).split("/", 1)
    try:
        folder.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=version)
    except OSError as exc:
        if precondition_failed(exc):
            return False
        raise
    finally:
        folder.fs.invalidate_cache(folder.key(name))
    return True


def get(folder: Location, name: str) -> tuple[bytes, dict[str, Any]]:
    """One GET of ``name``: its bytes and the response's metadata."""
    path = folder.key(name)
    if not is_s3(folder):
        folder.fs.invalidate_cache(path)
        return folder.fs.cat_file(path), dict(folder.fs.info(path))
    from fsspec.asyn import sync

    bucket, key = path.split("/", 1)

    async def fetch() -> tuple[bytes, dict[str, Any]]:
        resp = await folder.fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            return await resp["Body"].read(), {k: v for k, v in resp.items() if k != "Body"}
        finally:
            resp["Body"].close()

    return sync(folder.fs.loop, fetch)


def read_versioned(folder: Location, name: str) -> tuple[bytes, str | None, float | None]:
    """Content, ETag and modification time from one GET, so content and version belong together."""
    data, info = get(folder, name)
    return data, info.get("ETag"), timestamp(info)


def exists(folder: Location, name: str) -> bool:
    folder.fs.invalidate_cache(folder.key(name))
    return bool(folder.fs.exists(folder.key(name)))


def size(folder: Location, name: str) -> int | None:
    folder.fs.invalidate_cache(folder.key(name))
    try:
        return int(folder.fs.info(folder.key(name))["size"])
    except FileNotFoundError:
        return None


def list_files(folder: Location) -> dict[str, int]:
    try:
        folder.fs.invalidate_cache(folder.root)
        entries = folder.fs.ls(folder.root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
            for e in entries if e.get("type") == "file"}


def list_tree(folder: Location) -> dict[str, int]:
    """One recursive listing, two levels deep (no request per sub-folder)."""
    try:
        folder.fs.invalidate_cache(folder.root)
        found = folder.fs.find(folder.root, maxdepth=2, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    prefix = folder.root + "/"
    return {name[len(prefix):]: int(info.get("size") or 0) for name, info in found.items()
            if name.startswith(prefix) and info.get("type", "file") == "file"}


def remove(folder: Location, name: str, version: str | None) -> bool:
    """Delete ``name`` (with ``version`` on S3: only if its ETag is still that); False if nothing was deleted."""
    path = folder.key(name)
    if is_s3(folder) and version:
        bucket, key = path.split("/", 1)
        try:
            folder.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if precondition_failed(exc):
                return False
            raise
        finally:
            folder.fs.invalidate_cache(path)
        return True
    if not exists(folder, name):  # S3's DELETE of a missing key succeeds: ask first, for the answer
        return False
    try:
        folder.fs.rm_file(path)
    except FileNotFoundError:
        return False
    return True


def remove_all(folder: Location) -> None:
    with contextlib.suppress(FileNotFoundError):
        folder.fs.rm(folder.root, recursive=True)


def precondition_failed(exc: BaseException) -> bool:
    """Whether an S3 error is HTTP 412 (a conditional request whose condition did not hold)."""
    if isinstance(exc, FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") in ("PreconditionFailed", "412") or \
        response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412


def timestamp(info: Mapping[str, Any]) -> float | None:
    """A modification time in seconds from an fsspec ``info`` record (S3's LastModified, mtime)."""
    for key in ("LastModified", "mtime", "updated", "last_modified"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None
