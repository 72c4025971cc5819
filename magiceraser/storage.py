"""Output folders on a local disk or an object store (``s3://``, ``gs://``, any fsspec URL).

The jobs that write outputs (``olrd``, ``cache-latents``) need only a few operations on their
output folder: write a file so that it appears complete or not at all, read, test, list, delete,
and create-if-absent for the lock. :class:`Folder` does those on both kinds of storage, because
the two make "complete or not at all" true in different ways:

* **local paths** (and ``file://``): write to a temporary sibling (``.tmp-...``), fsync, rename
  (:mod:`magiceraser.atomic`). Leftovers of a killed writer are swept on start.
* **object stores**: there is no rename, and none is needed: a PUT (or a multipart upload, which
  becomes visible only when completed) is atomic. Every object is written once under its final
  key; no temporary key is ever created, so there is nothing to sweep. What marks an object as
  *done* is the job's own protocol: a shard counts when its sidecar exists (written after it).

Credentials and the endpoint come from the standard places, so nothing in the code changes per
site: the AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ...) that
botocore reads, fsspec's own configuration (``FSSPEC_S3_ENDPOINT_URL``, ``FSSPEC_S3='{...}'``,
files in ``FSSPEC_CONFIG_DIR``), or a ``storage_options`` mapping from the job's config, passed
to fsspec unchanged (e.g. ``{endpoint_url: ..., anon: false}``). Records the jobs write (job.json,
cache.json) hold :func:`public_options`: secrets in ``storage_options`` never land in the output.

Create-if-absent and conditional replace (the lock) use S3's conditional requests
(``If-None-Match: *`` / ``If-Match: <etag>``) on ``s3://``; on other object stores the
backend's exclusive-create mode (``"xb"``) and an unconditional replace (see ``lock.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from magiceraser.atomic import TMP_PREFIX, atomic_open, atomic_write_bytes, remove_stale_temporaries

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET_RE = re.compile(r"key|secret|token|password|passwd|credential|session", re.IGNORECASE)
S3_PROTOCOLS = frozenset({"s3", "s3a"})


def is_object_store(url: str | os.PathLike) -> bool:
    """True for an fsspec URL other than ``file://`` (``s3://b/p``, ``gs://b/p``, ``memory://p``)."""
    text = os.fspath(url)
    return bool(_URL_RE.match(text)) and not text.startswith(("file://", "local://"))


def protocol(url: str | os.PathLike) -> str:
    """The URL's scheme (``s3``, ``gs``, ...); ``file`` for a local path."""
    text = os.fspath(url)
    return text.split("://", 1)[0].lower() if is_object_store(text) else "file"


def public_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` with every secret-looking value (keys, tokens, passwords) masked.

    For the records a job writes into its output (job.json, cache.json): who can read the shards
    must not learn the credentials that wrote them.
    """
    out: dict[str, Any] = {}
    for k, v in (options or {}).items():
        if isinstance(v, Mapping):
            out[k] = public_options(v)
        elif _SECRET_RE.search(str(k)) and "url" not in str(k).lower():
            out[k] = "***"
        else:
            out[k] = v
    return out


def _local_path(url: str | os.PathLike) -> Path:
    text = os.fspath(url)
    for prefix in ("file://", "local://"):
        text = text.removeprefix(prefix)
    return Path(os.path.expanduser(text))


class Folder:
    """A folder of final files on local disk or under an object-store prefix.

    Names passed to the methods are plain file names (no ``/``): the jobs' outputs are flat.
    ``str(folder)`` is the URL (or path) as the user gave it, for messages; :meth:`url` names a
    file in it the way fsspec, webdataset and Ray Data open it.
    """

    def __init__(self, url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None):
        self.given = os.fspath(url).rstrip("/") or os.fspath(url)
        self.options = dict(storage_options or {})
        self.remote = is_object_store(self.given)
        self.protocol = protocol(self.given)
        self._fs: Any = None
        self._root = "" if self.remote else str(_local_path(self.given))

    # -- plumbing ------------------------------------------------------------------------------

    def __str__(self) -> str:
        return self.given

    def __repr__(self) -> str:
        return f"Folder({self.given!r})"

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for Ray tasks without the fsspec instance (rebuilt from URL and options there)."""
        return {**self.__dict__, "_fs": None}

    @property
    def fs(self) -> Any:
        """The fsspec file system (object stores only), built from the URL and ``storage_options``."""
        if self._fs is None:
            import fsspec

            self._fs, root = fsspec.core.url_to_fs(self.given, **self.options)
            self._root = root.rstrip("/")
        return self._fs

    @property
    def root(self) -> str:
        """The folder's path as the file system names it (``bucket/prefix`` on S3)."""
        if self.remote:
            self.fs  # noqa: B018 - resolves _root
        return self._root

    @property
    def path(self) -> Path:
        """The local folder (local folders only)."""
        if self.remote:
            raise TypeError(f"{self.given} is on an object store, not a local path")
        return Path(self._root)

    def _p(self, name: str) -> str:
        if "/" in name:
            raise ValueError(f"{name!r}: names in a Folder are plain file names")
        return f"{self.root}/{name}"

    def url(self, name: str) -> str:
        """``name`` inside the folder, as readers open it (a path, or ``s3://bucket/prefix/name``)."""
        if self.remote:
            return f"{self.given}/{name}"
        return str(Path(self._root) / name)

    def child(self, name: str) -> Folder:
        """The sub-folder ``name`` (same storage options, same file system instance)."""
        if "/" in name or not name:
            raise ValueError(f"{name!r}: a sub-folder is named by one plain name")
        sub = Folder(self.url(name), self.options)
        sub._fs = self._fs
        if self.remote and self._fs is not None:
            sub._root = f"{self.root}/{name}"
        return sub

    # -- preparing ------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Make sure the folder can be written to: create a local directory; reach the bucket.

        Object stores have no directories to create; a missing bucket is not created (that is an
        administrator's decision with its own permissions and region): FileNotFoundError.
        """
        if not self.remote:
            self.path.mkdir(parents=True, exist_ok=True)
            return
        bucket = self.root.split("/", 1)[0]
        if not self.fs.exists(bucket):
            raise FileNotFoundError(f"bucket {bucket!r} of {self.given} does not exist (or is not visible with these credentials)")

    def sweep_temporaries(self) -> list[str]:
        """Remove leftovers of killed local writers; object stores never hold any (no-op)."""
        if self.remote:
            return []
        return [str(p) for p in remove_stale_temporaries(self.path)]

    # -- writing --------------------------------------------------------------------------------

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` so that readers see the old content or the new, never a part.

        Local: temporary sibling, fsync, rename. Object store: one PUT of the final key.
        """
        if not self.remote:
            atomic_write_bytes(Path(self._root) / name, data)
            return
        self.fs.pipe_file(self._p(name), data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_json(self, name: str, obj: Any, indent: int | None = 2) -> None:
        self.write_text(name, json.dumps(obj, indent=indent, sort_keys=False) + "\n")

    @contextlib.contextmanager
    def open_final(self, name: str) -> Iterator[IO[bytes]]:
        """A binary file to stream ``name`` into; it appears under its name only when complete.

        Object stores: the bytes are spooled to a local temporary file (memory stays flat for
        large shards) and uploaded once the block ends without error; nothing is uploaded
        otherwise. The upload (PUT, or multipart upload for large files) becomes visible whole.
        """
        if not self.remote:
            with atomic_open(Path(self._root) / name, "wb") as fh:
                yield fh
            return
        spool = tempfile.NamedTemporaryFile(prefix="magiceraser-upload-", delete=False)
        try:
            with spool:
                yield spool
            self.fs.put_file(spool.name, self._p(name))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool.name)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create ``name`` holding ``data`` only if it does not exist; False if it does.

        Local: written to a temporary file and hard-linked onto the name (fails if the name
        exists; the name never exists without its content, also on NFS). S3: a conditional PUT
        (``If-None-Match: *``). Other object stores: the backend's exclusive mode ``"xb"``.
        """
        if not self.remote:
            path = Path(self._root) / name
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
        try:
            if self.protocol in S3_PROTOCOLS:
                self.fs.pipe_file(self._p(name), data, mode="create")
            else:
                with self.fs.open(self._p(name), "xb") as fh:
                    fh.write(data)
        except FileExistsError:
            return False
        return True

    def replace_if(self, name: str, data: bytes, version: str | None) -> bool:
        """Overwrite ``name`` if it is still at ``version`` (from :meth:`read_versioned`); False if not.

        Only S3 can make the condition atomic (``If-Match: <etag>``); local files and other
        object stores are overwritten unconditionally (the caller read and compared just before).
        """
        if self.remote and self.protocol in S3_PROTOCOLS and version:
            bucket, key = self._p(name).split("/", 1)
            try:
                self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=version)
            except OSError as exc:
                if _precondition_failed(exc):
                    return False
                raise
            finally:
                self.fs.invalidate_cache(self._p(name))
            return True
        self.write_bytes(name, data)
        return True

    # -- reading --------------------------------------------------------------------------------

    def read_bytes(self, name: str) -> bytes:
        """The content of ``name``; FileNotFoundError if there is none."""
        if not self.remote:
            return (Path(self._root) / name).read_bytes()
        return self._get(name)[0]

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def read_versioned(self, name: str) -> tuple[bytes, str | None, float | None]:
        """Content, version (S3: the ETag the content was read under) and modification time.

        Object stores: one GET returns the content with its ETag and LastModified, so content and
        version always belong together (no separate HEAD that a concurrent replace could split).
        """
        if not self.remote:
            path = Path(self._root) / name
            data = path.read_bytes()
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                mtime = None
            return data, None, mtime
        data, info = self._get(name)
        return data, info.get("ETag"), _timestamp(info)

    def _get(self, name: str) -> tuple[bytes, dict[str, Any]]:
        """One GET of ``name`` on an object store: its bytes and the response's metadata."""
        path = self._p(name)
        if self.protocol not in S3_PROTOCOLS:
            self.fs.invalidate_cache(path)
            return self.fs.cat_file(path), dict(self.fs.info(path))
        from fsspec.asyn import sync

        bucket, key = path.split("/", 1)

        async def get() -> tuple[bytes, dict[str, Any]]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                return await resp["Body"].read(), {k: v for k, v in resp.items() if k != "Body"}
            finally:
                resp["Body"].close()

        return sync(self.fs.loop, get)

    def exists(self, name: str) -> bool:
        if not self.remote:
            return (Path(self._root) / name).exists()
        self.fs.invalidate_cache(self._p(name))
        return bool(self.fs.exists(self._p(name)))

    def size(self, name: str) -> int | None:
        """Size in bytes of ``name``; None if it does not exist."""
        if not self.remote:
            try:
                return (Path(self._root) / name).stat().st_size
            except FileNotFoundError:
                return None
        self.fs.invalidate_cache(self._p(name))
        try:
            return int(self.fs.info(self._p(name))["size"])
        except FileNotFoundError:
            return None

    def list(self) -> dict[str, int]:
        """Every file directly in the folder: name -> size (one listing; empty if there is no folder)."""
        if not self.remote:
            out = {}
            try:
                entries = list(os.scandir(self._root))
            except (FileNotFoundError, NotADirectoryError):
                return {}
            for e in entries:
                with contextlib.suppress(FileNotFoundError):
                    if e.is_file():
                        out[e.name] = e.stat().st_size
            return out
        try:
            self.fs.invalidate_cache(self.root)
            entries = self.fs.ls(self.root, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
                for e in entries if e.get("type") == "file"}

    def list_tree(self) -> dict[str, int]:
        """Every file in the folder and in its sub-folders, one level down: ``name`` or ``sub/name`` -> size.

        One recursive listing on an object store (no request per sub-folder).
        """
        if not self.remote:
            out = self.list()
            try:
                entries = list(os.scandir(self._root))
            except (FileNotFoundError, NotADirectoryError):
                return {}
            for e in entries:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    if e.is_dir():
                        out.update({f"{e.name}/{n}": size for n, size in self.child(e.name).list().items()})
            return out
        try:
            self.fs.invalidate_cache(self.root)
            found = self.fs.find(self.root, maxdepth=2, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        prefix = self.root + "/"
        return {name[len(prefix):]: int(info.get("size") or 0) for name, info in found.items()
                if name.startswith(prefix) and info.get("type", "file") == "file"}

    # -- deleting -------------------------------------------------------------------------------

    def remove(self, name: str, version: str | None = None) -> bool:
        """Delete ``name`` (only if still at ``version``, where S3 can check it); False if nothing was deleted."""
        if not self.remote:
            try:
                (Path(self._root) / name).unlink()
                return True
            except FileNotFoundError:
                return False
        path = self._p(name)
        if self.protocol in S3_PROTOCOLS and version:
            bucket, key = path.split("/", 1)
            try:
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
            except FileNotFoundError:
                return False
            except OSError as exc:
                if _precondition_failed(exc):
                    return False
                raise
            finally:
                self.fs.invalidate_cache(path)
            return True
        if not self.exists(name):  # S3's DELETE of a missing key succeeds: ask first, for the answer
            return False
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        return True

    def remove_all(self) -> None:
        """Delete the folder and everything in it (``--overwrite``-style resets; tests)."""
        if not self.remote:
            shutil.rmtree(self._root, ignore_errors=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.root, recursive=True)


def _precondition_failed(exc: BaseException) -> bool:
    """Whether an S3 error is HTTP 412 (a conditional request whose condition did not hold)."""
    if isinstance(exc, FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") in ("PreconditionFailed", "412") or \
        response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412


def _timestamp(info: Mapping[str, Any]) -> float | None:
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
