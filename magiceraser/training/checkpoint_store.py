"""Where training checkpoints live, and how one is known to be whole: a folder or an object-store prefix.

Layout, the same on both kinds of storage::

    ROOT/checkpoint-00001000/   the files of one checkpoint, then state.json (the marker) last
    ROOT/damaged-checkpoint-00002000-20261202T061500Z/   one that failed verification, set aside

``state.json`` records the size and sha256 of every other file of its checkpoint (``files``).
A checkpoint counts only once its marker exists, and is used only after every file has been
read back with the recorded size and digest (:meth:`CheckpointStore.load`); a damaged one is
renamed aside (never deleted) so a person can look at it.

How "whole or absent" is made true differs by storage (as in :mod:`magiceraser.storage`):

* **a folder** (local or shared filesystem): the checkpoint is built under a temporary name
  (``.tmp-...``, files fsynced) and renamed into place; leftovers of a killed save are swept by
  the next run that holds the folder's lock.
* **an object store** (``s3://...``): no rename exists; each file is one PUT under its final key
  and ``state.json`` is written last, so a save killed half-way leaves files without a marker,
  which no listing counts. A later save of the same step first removes such leftovers.

Removing (pruning, ``--overwrite``) deletes the marker first, so a half-removed checkpoint is
never taken for a whole one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from magiceraser.atomic import TMP_PREFIX, atomic_directory, remove_stale_temporaries, write_synced
from magiceraser.storage import Folder

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{8})$")
STATE_NAME = "state.json"
DAMAGED_PREFIX = "damaged-"


class DamagedCheckpoint(Exception):
    """A checkpoint whose files are not what its marker recorded (missing, short, other bytes, unreadable)."""

    def __init__(self, name: str, file: str, reason: str):
        super().__init__(f"{name}/{file}: {reason}")
        self.name, self.file, self.reason = name, file, reason


@dataclass(frozen=True)
class CheckpointRef:
    """A complete checkpoint (its marker exists): folder name, step, where it is (for messages)."""

    name: str
    step: int
    url: str


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_records(files: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    """``{name: {"size": n, "sha256": hex}}`` of a checkpoint's files, as ``state.json`` records them."""
    return {name: {"size": len(data), "sha256": sha256_bytes(data)} for name, data in files.items()}


class CheckpointStore:
    """The checkpoints under one root (a path or an fsspec URL); see the module docstring."""

    def __init__(self, root: str | os.PathLike, storage_options: Mapping[str, Any] | None = None):
        self.folder = Folder(root, storage_options)
        self.remote = self.folder.remote

    def __str__(self) -> str:
        return str(self.folder)

    def url(self, name: str) -> str:
        return self.folder.url(name)

    # -- listing --------------------------------------------------------------------------------

    def _tree(self) -> dict[str, int]:
        return self.folder.list_tree()

    def list(self) -> list[CheckpointRef]:
        """Complete checkpoints (marker present), oldest first."""
        found = []
        for path in self._tree():
            sub, _, name = path.partition("/")
            m = CHECKPOINT_RE.match(sub)
            if m and name == STATE_NAME:
                found.append(CheckpointRef(sub, int(m.group(1)), self.url(sub)))
        return sorted(found, key=lambda r: r.step)

    def set_aside_names(self) -> list[str]:
        """Checkpoints set aside as damaged (by name)."""
        return sorted({p.split("/", 1)[0] for p in self._tree() if p.startswith(DAMAGED_PREFIX) and "/" in p})

    # -- writing --------------------------------------------------------------------------------

    def write(self, step: int, files: Mapping[str, bytes], state: Mapping[str, Any]) -> CheckpointRef:
        """Write checkpoint ``step``: ``files``, then ``state.json`` (``state`` + the files' sizes and digests)."""
        name = checkpoint_name(step)
        marker = (json.dumps({**state, "files": file_records(files)}, indent=1) + "\n").encode()
        if not self.remote:
            self.folder.ensure()
            with atomic_directory(self.folder.path / name) as tmp:
                for fname, data in [*files.items(), (STATE_NAME, marker)]:
                    write_synced(tmp / fname, data)
            return CheckpointRef(name, step, self.url(name))
        sub = self.folder.child(name)
        leftovers = sub.list()  # a save of this step killed before its marker (or an older one): replaced
        for leftover in sorted(leftovers, key=lambda n: n != STATE_NAME):  # its marker first
            sub.remove(leftover)
        for fname, data in files.items():
            sub.write_bytes(fname, data)
        sub.write_bytes(STATE_NAME, marker)
        return CheckpointRef(name, step, self.url(name))

    # -- reading --------------------------------------------------------------------------------

    def read_state(self, ref: CheckpointRef) -> dict[str, Any]:
        """The marker of ``ref``; :class:`DamagedCheckpoint` if it cannot be read as a JSON object."""
        try:
            state = json.loads(self.folder.child(ref.name).read_bytes(STATE_NAME))
        except FileNotFoundError:
            raise DamagedCheckpoint(ref.name, STATE_NAME, "missing") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise DamagedCheckpoint(ref.name, STATE_NAME, f"not readable JSON ({exc})") from None
        if not isinstance(state, dict):
            raise DamagedCheckpoint(ref.name, STATE_NAME, "not a JSON object")
        return state

    def load(self, ref: CheckpointRef, expected: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The marker and the bytes of every file of ``ref``, each checked against its size and sha256.

        A checkpoint written before digests were recorded has no ``files`` in its marker: then
        the ``expected`` names are read, and their content is checked when it is decoded.
        Raises :class:`DamagedCheckpoint` naming the first file that is not as recorded.
        """
        state = self.read_state(ref)
        sub = self.folder.child(ref.name)
        records = state.get("files")
        names = list(records) if isinstance(records, dict) else list(expected)
        missing = [n for n in expected if n not in names]
        if missing:
            raise DamagedCheckpoint(ref.name, missing[0], f"not listed in {STATE_NAME}")
        out = {}
        for name in names:
            try:
                data = sub.read_bytes(name)
            except FileNotFoundError:
                raise DamagedCheckpoint(ref.name, name, "missing") from None
            if isinstance(records, dict):
                rec = records[name] if isinstance(records[name], dict) else {}
                if len(data) != rec.get("size"):
                    raise DamagedCheckpoint(ref.name, name, f"{len(data)} bytes where {rec.get('size')} were written")
                if sha256_bytes(data) != rec.get("sha256"):
                    raise DamagedCheckpoint(ref.name, name, "its sha256 differs from the one recorded when it was written")
            out[name] = data
        return state, out

    # -- removing and setting aside ---------------------------------------------------------------

    def remove(self, ref: CheckpointRef) -> None:
        """Delete a checkpoint, its marker first."""
        if not self.remote:
            path = self.folder.path / ref.name
            doomed = path.with_name(f"{TMP_PREFIX}removing-{ref.name}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, doomed)  # one rename: it stops counting at once
            shutil.rmtree(doomed, ignore_errors=True)
            return
        sub = self.folder.child(ref.name)
        sub.remove(STATE_NAME)
        for name in sub.list():
            sub.remove(name)

    def prune(self, run_id: str, keep_last: int) -> None:
        """Delete all but the newest ``keep_last`` checkpoints of run ``run_id``; another run's are never touched
        (nor one whose marker cannot be read: resume sets damaged ones aside)."""
        mine = []
        for ref in self.list():
            try:
                if self.read_state(ref).get("run_id") == run_id:
                    mine.append(ref)
            except DamagedCheckpoint:
                continue
        for old in mine[:-keep_last]:
            self.remove(old)

    def set_aside(self, ref: CheckpointRef) -> str:
        """Rename a damaged checkpoint to ``damaged-<name>-<UTC time>`` (never deleted); returns the new URL."""
        new = f"{DAMAGED_PREFIX}{ref.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        if not self.remote:
            os.replace(self.folder.path / ref.name, self.folder.path / new)
            return self.url(new)
        src, dst = self.folder.child(ref.name), self.folder.child(new)
        names = src.list()
        for name in names:  # copy everything, then delete the original, marker first
            dst.write_bytes(name, src.read_bytes(name))
        if STATE_NAME in names:
            src.remove(STATE_NAME)
        for name in names:
            if name != STATE_NAME:
                src.remove(name)
        return self.url(new)

    def sweep(self) -> list[str]:
        """Remove what killed saves and removals left (a folder's ``.tmp-*``; an object store has none)."""
        if self.remote:
            return []
        return [str(p) for p in remove_stale_temporaries(self.folder.path)]

