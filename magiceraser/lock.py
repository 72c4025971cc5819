"""One job per output folder: a lock file with its owner and a heartbeat.

Two jobs writing one output would do all the work twice and sweep each other's temporaries, so
a job takes ``OUT/job.lock`` before it touches anything there and keeps it until it ends. Every
command that writes a folder of results takes it: ``olrd`` (its output), ``train`` (its out_dir
and its checkpoint folder), ``cache-latents``, ``evaluate`` and a folder ``erase --out``. The
lock records who holds it (host, pid, start time, a random token) and ``heartbeat_at``, which a
background thread of the owner refreshes every ``stale_after_s / 4`` seconds. Another job that
finds the lock refuses at once, naming the owner, unless the lock is *stale*: its heartbeat is
older than ``stale_after_s`` (the owner died on some host: clocks must agree to well within that),
or its pid is gone on this very host (a killed job). A stale lock is taken over with a message.

A job may name itself (``job=``): a trainer restarted by its launcher (torchrun ``--max_restarts``,
a new pod of the same Job) is the same launch as the process that died holding the lock, possibly
on another node, so it need not wait ``stale_after_s``: a lock of the same name whose owner has
stopped beating (no heartbeat for two heartbeat periods; it waits that long at most) or whose
pid is gone on this host is taken over. A live owner of the same name is still refused: two
launches given one name must not write one folder.

The I/O is confined to the ``_create``, ``_read``, ``_replace`` and ``_remove`` functions, which
go through :class:`magiceraser.storage.Folder`: the same protocol runs on a local or shared disk
and on object storage (``s3://``: conditional PUT and DELETE, see the block comment there).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magiceraser.errors import UserError
from magiceraser.storage import Folder

LOCK_NAME = "job.lock"


class LockHeld(UserError):
    """The output folder is locked by a live job; the message names it (a user error: exit code 2)."""


class LockLost(UserError):
    """Another job took this job's lock over (it judged ours stale): stop before writing more."""


# --- storage: the only functions that touch the lock file --------------------------------------
#
# Local folders: create = hard link of a complete temporary file (atomic, also on NFS); replace =
# temporary file + rename. S3: create = conditional PUT ``If-None-Match: *``; replace and remove
# are conditional on the ETag last read (``If-Match``), so a job whose lock was taken over can
# neither overwrite nor delete the new owner's lock, even in the moment between its read and its
# write. Other object stores: create with the backend's exclusive mode ("xb"), replace and remove
# unconditional after a read-and-compare (the same window as on a local disk). ``_create`` reads
# the lock back and checks its token, so a store that ignored the condition and let a second job
# overwrite the lock loses that race visibly rather than silently.


def _create(folder: Folder, record: dict[str, Any]) -> bool:
    """Create the lock holding ``record`` only if there is none yet; False if there is one.

    The lock never exists without its content (see the block comment above for how, per store).
    """
    if not folder.create_exclusive(LOCK_NAME, (json.dumps(record) + "\n").encode()):
        return False
    if folder.remote:  # a store that does not honour If-None-Match would have let another job overwrite it
        current = _read(folder)
        return current is not None and current.get("token") == record["token"]
    return True


def _read(folder: Folder) -> dict[str, Any] | None:
    """The lock's record (with its ``_version`` on S3); None if there is no lock.

    An unreadable lock (a half-written record of an old version, garbage) reads as ``{}`` plus
    its modification time as ``heartbeat_at``, so it turns stale like a dead owner's.
    """
    try:
        data, version, mtime = folder.read_versioned(LOCK_NAME)
    except FileNotFoundError:
        return None
    try:
        record = json.loads(data)
        if isinstance(record, dict):
            return {**record, "_version": version} if version else record
    except ValueError:
        pass
    if mtime is None:
        return None
    return {"heartbeat_at": mtime, **({"_version": version} if version else {})}


def _replace(folder: Folder, record: dict[str, Any], version: str | None = None) -> bool:
    """Overwrite the lock with ``record`` (a reader sees the old or the new one).

    False if the store could check ``version`` and the lock has changed since (S3): then it is
    not ours any more and was not touched.
    """
    return folder.replace_if(LOCK_NAME, (json.dumps(_plain(record)) + "\n").encode(), version)


def _remove(folder: Folder, version: str | None = None) -> bool:
    """Delete the lock (S3: only if still at ``version``); False if nothing was deleted."""
    return folder.remove(LOCK_NAME, version)


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """The record as stored (without the ``_version`` that :func:`_read` adds)."""
    return {k: v for k, v in record.items() if k != "_version"}


# --- protocol ------------------------------------------------------------------------------------


def _log_stderr(message: str) -> None:
    print(f"[lock] {message}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def stale_reason(record: dict[str, Any], stale_after_s: float, now: float | None = None) -> str:
    """Why the lock ``record`` is stale ('' while its owner looks alive)."""
    now = time.time() if now is None else now
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        if not _pid_alive(record["pid"]):
            return f"its process {record['pid']} is gone"
    try:
        age = now - float(record.get("heartbeat_at", 0.0))
    except (TypeError, ValueError):
        age = float("inf")
    if age > stale_after_s:
        return f"its last heartbeat was {age:.0f} s ago (stale after {stale_after_s:g} s)"
    return ""


def describe_owner(record: dict[str, Any], now: float | None = None) -> str:
    """``host h, pid p, started <UTC time>, last heartbeat N s ago`` (what is known of it)."""
    now = time.time() if now is None else now
    parts = [f"host {record.get('host', '?')}", f"pid {record.get('pid', '?')}"]
    if isinstance(record.get("started_at"), (int, float)):
        parts.append("started " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["started_at"])))
    if isinstance(record.get("heartbeat_at"), (int, float)):
        parts.append(f"last heartbeat {max(now - record['heartbeat_at'], 0):.0f} s ago")
    return ", ".join(parts)


class OutputLock:
    """Exclusive ownership of an output folder for one job (a context manager).

    ``acquire`` raises :class:`LockHeld` when a live job holds the folder; ``check`` raises
    :class:`LockLost` once another job has taken the lock over; ``release`` removes the lock
    if it is still ours. The heartbeat thread is a daemon: a killed job simply stops beating.
    """

    def __init__(self, directory: str | Path | Folder, stale_after_s: float = 120.0, heartbeat_s: float | None = None,
                 log: Callable[[str], None] | None = None, job: str | None = None):
        self.folder = directory if isinstance(directory, Folder) else Folder(directory)
        self.job = job
        self.path = self.folder.url(LOCK_NAME)  # for messages
        self.log = log or _log_stderr
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else stale_after_s / 4
        self.record: dict[str, Any] = {}
        self.lost: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _new_record(self) -> dict[str, Any]:
        now = time.time()
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now, "heartbeat_at": now,
                  "token": secrets.token_hex(16)}
        if self.job:
            record["job"] = self.job
        return record

    def acquire(self) -> None:
        """Take the lock (taking a stale one over, with a message on stderr) and start beating."""
        record = self._new_record()
        for _ in range(3):  # a lost race against another starting job: look again
            if _create(self.folder, record):
                break
            current = _read(self.folder)
            if current is None:
                continue
            reason = stale_reason(current, self.stale_after_s)
            if not reason and self.job and current.get("job") == self.job:
                reason = self._same_job_stopped(current)
            if not reason:
                raise LockHeld(
                    f"{self.folder} is in use by another job ({describe_owner(current)}); wait for it to end, "
                    f"or stop it: its lock {self.path} counts as stale {self.stale_after_s:g} s after its last "
                    f"heartbeat (lock_stale_s)"
                )
            self.log(f"taking over the stale lock {self.path} of {describe_owner(current)}: {reason}")
            if _read(self.folder) == current:  # not replaced meanwhile by a job that got there first
                _remove(self.folder, current.get("_version"))  # S3: and not in the moment since
        else:
            current = _read(self.folder) or {}
            raise LockHeld(f"{self.folder} is in use by another job ({describe_owner(current)}); try again")
        self.record = record
        self._thread = threading.Thread(target=self._beat, name="output-lock-heartbeat", daemon=True)
        self._thread.start()

    def _same_job_stopped(self, current: dict[str, Any]) -> str:
        """Why a lock of this job's own name may be taken over now ('' while its owner still beats).

        Its owner on this host is alive (its pid exists): ''. Elsewhere: wait until no heartbeat
        came for two heartbeat periods, watching whether it still beats.
        """
        if current.get("host") == socket.gethostname():
            return ""  # its pid exists, or stale_reason would have said so
        deadline = time.monotonic() + 2 * self.heartbeat_s + 1.0
        seen = current.get("heartbeat_at")
        while True:
            try:
                age = time.time() - float(seen or 0.0)
            except (TypeError, ValueError):
                age = float("inf")
            if age > 2 * self.heartbeat_s:
                return f"it was left by an earlier attempt of this same job, which stopped beating {age:.0f} s ago"
            if time.monotonic() > deadline:
                return ""
            time.sleep(min(1.0, self.heartbeat_s / 4))
            now = _read(self.folder)
            if now is None or now.get("token") != current.get("token"):
                return "it is gone"  # released or replaced meanwhile: try again
            if now.get("heartbeat_at") != seen:
                return ""  # it still beats: a live job of the same name

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.refresh()
            except OSError as exc:  # a storage hiccup: keep beating; a long outage makes the lock stale
                self.log(f"could not refresh the lock {self.path}: {exc}")

    def refresh(self) -> None:
        """Renew the heartbeat, unless another job owns the lock now (then remember it in ``lost``)."""
        current = _read(self.folder)
        if current is None or current.get("token") != self.record["token"]:
            self.lost = current or {}
            self._stop.set()
            return
        record = {**self.record, "heartbeat_at": time.time()}
        if not _replace(self.folder, record, current.get("_version")):  # S3: changed since we read it
            self.lost = _read(self.folder) or {}
            self._stop.set()
            return
        self.record = record

    def check(self) -> None:
        """Raise :class:`LockLost` if another job has taken the lock over since we took it."""
        if self.lost is not None:
            raise LockLost(f"lost the lock {self.path} to another job ({describe_owner(self.lost)}); "
                           "stopped so that the two jobs do not write the same files")

    def release(self) -> None:
        """Stop beating and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        current = (_read(self.folder) or {}) if self.record else {}
        if self.record and current.get("token") == self.record.get("token"):
            _remove(self.folder, current.get("_version"))
        self.record = {}

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
