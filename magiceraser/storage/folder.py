""":class:`Folder`: an output folder on a local disk or under an object-store prefix, with the few
operations the jobs that write outputs need.

Those are: write a file so that it appears complete or not at all, read, test, list, delete, and
create-if-absent for the lock. Each operation is carried out by :mod:`.local` or by
:mod:`.object_store`, because the two kinds of storage make "complete or not at all" true in
different ways (a rename there, a single PUT here).

The fsspec file system of an object store is built from the URL and ``storage_options`` on first
use, and rebuilt after unpickling (Ray tasks receive folders without it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from magiceraser.storage import local, object_store
from magiceraser.storage.urls import is_object_store, local_path, protocol


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
        self._root = "" if self.remote else str(local_path(self.given))

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

    def key(self, name: str) -> str:
        """``name`` as the file system names it (``bucket/prefix/name`` on S3)."""
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
            local.ensure(self._root)
            return
        object_store.ensure(self)

    def sweep_temporaries(self) -> list[str]:
        """Remove leftovers of killed local writers; object stores never hold any (no-op)."""
        if self.remote:
            return []
        return local.sweep_temporaries(self._root)

    # -- writing --------------------------------------------------------------------------------

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` so that readers see the old content or the new, never a part.

        Local: temporary sibling, fsync, rename. Object store: one PUT of the final key.
        """
        if not self.remote:
            local.write_bytes(self._root, name, data)
            return
        object_store.write_bytes(self, name, data)

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
            with local.open_final(self._root, name) as fh:
                yield fh
            return
        with object_store.open_final(self, name) as fh:
            yield fh

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create ``name`` holding ``data`` only if it does not exist; False if it does.

        Local: written to a temporary file and hard-linked onto the name (fails if the name
        exists; the name never exists without its content, also on NFS). S3: a conditional PUT
        (``If-None-Match: *``). Other object stores: the backend's exclusive mode ``"xb"``.
        """
        if not self.remote:
            return local.create_exclusive(self._root, name, data)
        return object_store.create_exclusive(self, name, data)

    def replace_if(self, name: str, data: bytes, version: str | None) -> bool:
        """Overwrite ``name`` if it is still at ``version`` (from :meth:`read_versioned`); False if not.

        Only S3 can make the condition atomic (``If-Match: <etag>``); local files and other
        object stores are overwritten unconditionally (the caller read and compared just before).
        """
        if self.remote and object_store.is_s3(self) and version:
            return object_store.replace_if_s3(self, name, data, version)
        self.write_bytes(name, data)
        return True

    # -- reading --------------------------------------------------------------------------------

    def read_bytes(self, name: str) -> bytes:
        """The content of ``name``; FileNotFoundError if there is none."""
        if not self.remote:
            return local.read_bytes(self._root, name)
        return object_store.get(self, name)[0]

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def read_versioned(self, name: str) -> tuple[bytes, str | None, float | None]:
        """Content, version (S3: the ETag the content was read under) and modification time.

        Object stores: one GET returns the content with its ETag and LastModified, so content and
        version always belong together (no separate HEAD that a concurrent replace could split).
        """
        if not self.remote:
            return local.read_versioned(self._root, name)
        return object_store.read_versioned(self, name)

    def exists(self, name: str) -> bool:
        if not self.remote:
            return local.exists(self._root, name)
        return object_store.exists(self, name)

    def size(self, name: str) -> int | None:
        """Size in bytes of ``name``; None if it does not exist."""
        if not self.remote:
            return local.size(self._root, name)
        return object_store.size(self, name)

    def list(self) -> dict[str, int]:
        """Every file directly in the folder: name -> size (one listing; empty if there is no folder)."""
        if not self.remote:
            return local.list_files(self._root)
        return object_store.list_files(self)

    def list_tree(self) -> dict[str, int]:
        """Every file in the folder and in its sub-folders, one level down: ``name`` or ``sub/name`` -> size.

        One recursive listing on an object store (no request per sub-folder).
        """
        if not self.remote:
            return local.list_tree(self._root)
        return object_store.list_tree(self)

    # -- deleting -------------------------------------------------------------------------------

    def remove(self, name: str, version: str | None = None) -> bool:
        """Delete ``name`` (only if still at ``version``, where S3 can check it); False if nothing was deleted."""
        if not self.remote:
            return local.remove(self._root, name)
        return object_store.remove(self, name, version)

    def remove_all(self) -> None:
        """Delete the folder and everything in it (``--overwrite``-style resets; tests)."""
        if not self.remote:
            local.remove_all(self._root)
            return
        object_store.remove_all(self)
