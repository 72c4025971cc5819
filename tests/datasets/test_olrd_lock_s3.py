"""The output lock on S3 (moto's server): refused while held, stale taken over, a taken-over owner stops.

The same protocol as on a local disk (lock.py), with S3's conditional requests: create is a PUT
``If-None-Match: *``, heartbeat and release are conditional on the ETag last read, and no
temporary key is ever written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from magiceraser.lock import LockHeld, LockLost, OutputLock
from magiceraser.storage import Folder


@pytest.fixture()
def out(s3_server):
    return Folder(f"s3://{s3_server.new_bucket('lock')}/olrd")


def _record(**over) -> bytes:
    now = time.time()
    rec = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now, "heartbeat_at": now, "token": "t0"}
    return json.dumps({**rec, **over}).encode()


def test_a_second_job_is_refused_naming_the_owner_and_the_lock_is_released(out, s3_server):
    with OutputLock(out, stale_after_s=60, heartbeat_s=30) as first:
        assert json.loads(out.read_bytes("job.lock"))["token"] == first.record["token"]
        with pytest.raises(LockHeld, match=rf"in use by another job \(host {socket.gethostname()}, pid {os.getpid()}"):
            OutputLock(out, stale_after_s=60).acquire()
    assert not out.exists("job.lock")
    bucket, prefix = out.root.split("/", 1)
    assert set(s3_server.written(bucket)) == {f"{prefix}/job.lock"}  # no temporary key, ever


def test_stale_locks_are_taken_over(out):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    messages = []
    out.write_bytes("job.lock", _record(pid=gone.pid))  # a killed job on this host
    with OutputLock(out, stale_after_s=60, log=messages.append):
        pass
    assert f"taking over the stale lock {out.url('job.lock')}" in messages[0] and "is gone" in messages[0]
    out.write_bytes("job.lock", _record(host="elsewhere", pid=1, heartbeat_at=time.time() - 3600))  # a dead host
    with OutputLock(out, stale_after_s=60, log=messages.append):
        pass
    assert "last heartbeat was 3600 s ago" in messages[1]
    out.write_bytes("job.lock", _record(host="elsewhere", pid=1))  # alive elsewhere
    with pytest.raises(LockHeld, match="host elsewhere, pid 1"):
        OutputLock(out, stale_after_s=60).acquire()


def test_heartbeat_is_refreshed_and_a_take_over_is_noticed(out):
    lock = OutputLock(out, stale_after_s=60, heartbeat_s=0.05)
    with lock:
        first = json.loads(out.read_bytes("job.lock"))
        deadline = time.monotonic() + 20
        while json.loads(out.read_bytes("job.lock"))["heartbeat_at"] == first["heartbeat_at"]:
            assert time.monotonic() < deadline, "the heartbeat was never refreshed"
            time.sleep(0.02)
        out.write_bytes("job.lock", _record(host="other", pid=7))  # another job judged us stale and took over
        deadline = time.monotonic() + 20
        while lock.lost is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(LockLost, match="host other, pid 7"):
            lock.check()
    assert json.loads(out.read_bytes("job.lock"))["pid"] == 7  # not removed: it is not ours


def test_a_take_over_between_read_and_write_is_not_overwritten(out, monkeypatch):
    """The heartbeat's replace is conditional on the ETag it read: a new owner that came in between wins."""
    from magiceraser import lock as lock_mod

    lock = OutputLock(out, stale_after_s=60, heartbeat_s=3600)
    with lock:
        real_read = lock_mod._read

        def read_then_taken_over(folder):
            record = real_read(folder)
            folder.write_bytes("job.lock", _record(host="other", pid=8))  # right after our read
            return record

        monkeypatch.setattr(lock_mod, "_read", read_then_taken_over)
        lock.refresh()
        monkeypatch.setattr(lock_mod, "_read", real_read)
        with pytest.raises(LockLost, match="host other, pid 8"):
            lock.check()
    assert json.loads(out.read_bytes("job.lock"))["pid"] == 8
