"""The driver's rows-to-shards bookkeeping: rows arrive in any order, a shard is written once complete.

Ray Data returns rows in whatever order the cluster finishes them, so the driver holds the rows of
every shard that has some but not all of its inputs back ("open" shards). Left alone that set can
grow with the cluster (a straggler, a node retried late): :class:`ShardAssembler` keeps the rows of
at most ``max_open`` shards in memory and appends the rows of any further open shard to a
temporary spill file in the output folder (``.tmp-spill-olrd-XXXXXX``, swept like every temporary
when a job starts), read back when that shard completes. Driver memory is therefore bounded by
``max_open * samples_per_shard`` rows however the work is reordered; the spill costs disk I/O
only when the bound is hit.

Spilled rows are encoded at once and written in batches: they wait in a buffer of at most
``spill_buffer_bytes`` (plus one row), which is then appended to the spill files, one open per
shard in it. One open per row cost ~40 us before any byte was written: a million small rows of a
badly reordered run took minutes. A shard completing reads its file and its rows still buffered.

Spill records are our own length-prefixed format (a JSON header of the text/number columns and the
lengths of the byte columns, then the bytes): no pickle, and nothing but this run reads them.
The spill's file I/O is in :func:`append_records` and :func:`read_rows`, the two functions to
replace for another storage.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from magiceraser.atomic import TMP_PREFIX
from magiceraser.datasets.inputs import shard_name

BYTE_COLUMNS = ("original", "blended", "mask")
_LEN = struct.Struct("<Q")


_BUILTIN = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """numpy scalars (what Ray's numpy batches hold) as JSON-able Python values."""
    if type(value) in _BUILTIN:  # no ``item``: skip the failing attribute lookup
        return value
    return value.item() if hasattr(value, "item") else value


def encode_row(row: dict[str, Any]) -> bytes:
    """One row as ``len(header) | header JSON | bytes columns``."""
    blobs = [bytes(row.get(c, b"")) for c in BYTE_COLUMNS]
    header = {k: _plain(v) for k, v in row.items() if k not in BYTE_COLUMNS}
    header["_lengths"] = [len(b) for b in blobs]
    head = json.dumps(header).encode()
    return _LEN.pack(len(head)) + head + b"".join(blobs)


def decode_rows(data: bytes) -> list[dict[str, Any]]:
    """The rows :func:`encode_row` wrote, in order."""
    rows, pos = [], 0
    while pos < len(data):
        (n,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        row = json.loads(data[pos : pos + n])
        pos += n
        for col, length in zip(BYTE_COLUMNS, row.pop("_lengths")):
            row[col] = data[pos : pos + length]
            pos += length
        rows.append(row)
    return rows


def spill_path(out: Path, shard: int) -> Path:
    return out / f"{TMP_PREFIX}spill-{shard_name(shard)}"


def append_records(path: Path, records: Iterable[bytes]) -> None:
    """Append rows encoded by :func:`encode_row` to the spill file ``path`` (one open for them all)."""
    with open(path, "ab") as fh:
        fh.write(b"".join(records))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows spilled to ``path``; the file is removed (the shard is about to be written)."""
    rows = decode_rows(path.read_bytes())
    os.unlink(path)
    return rows


class ShardAssembler:
    """Collect rows per shard; hand back a shard's rows (listing order) when its last input arrives.

    ``expected`` maps each shard to build to its number of inputs. At most ``max_open`` shards
    keep their rows in memory; the others are spilled (module docstring), through a write buffer
    of ``spill_buffer_bytes``. ``max_pending_rows`` is the largest number of rows held in memory
    at once (the buffer aside), ``spilled_shards`` how many shards went to disk and
    ``spill_writes`` how many appends to spill files were made.
    """

    def __init__(self, out: Path, expected: dict[int, int], max_open: int, spill_buffer_bytes: int = 16 << 20):
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.out, self.expected, self.max_open = out, expected, max_open
        self.spill_buffer_bytes = spill_buffer_bytes
        self.memory: dict[int, list[dict[str, Any]]] = {}
        self.spilled: dict[int, int] = {}  # shard -> rows spilled (in its file or still buffered)
        self.buffer: dict[int, list[bytes]] = {}  # shard -> encoded rows not written yet
        self.buffered_bytes = 0
        self.on_disk: set[int] = set()  # spilled shards that have a spill file
        self.pending_rows = self.max_pending_rows = self.spilled_shards = self.spill_writes = 0

    def add(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Take one row; the shard's rows sorted by listing index when it is complete, else None."""
        shard = int(row["shard"])
        if shard in self.spilled:
            self._spill(shard, row)
        elif shard in self.memory or len(self.memory) < self.max_open:
            self.memory.setdefault(shard, []).append(row)
            self.pending_rows += 1
            self.max_pending_rows = max(self.max_pending_rows, self.pending_rows)
        else:
            self.spilled[shard] = 0
            self.spilled_shards += 1
            self._spill(shard, row)
        return self._complete(shard)

    def _spill(self, shard: int, row: dict[str, Any]) -> None:
        record = encode_row(row)
        self.buffer.setdefault(shard, []).append(record)
        self.buffered_bytes += len(record)
        self.spilled[shard] += 1
        if self.buffered_bytes >= self.spill_buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Write every buffered row to its shard's spill file (one append per shard)."""
        for shard in list(self.buffer):
            records = self.buffer[shard]
            append_records(spill_path(self.out, shard), records)
            self.on_disk.add(shard)
            self.spill_writes += 1
            del self.buffer[shard]  # only once written: a failed write leaves the rows buffered
            self.buffered_bytes -= sum(map(len, records))

    def _take_spilled(self, shard: int) -> list[dict[str, Any]]:
        """The rows spilled for ``shard`` (its file, removed, then its buffer); the shard is no longer spilled."""
        rows = read_rows(spill_path(self.out, shard)) if shard in self.on_disk else []
        self.on_disk.discard(shard)
        records = self.buffer.pop(shard, [])
        self.buffered_bytes -= sum(map(len, records))
        del self.spilled[shard]
        return rows + decode_rows(b"".join(records))

    def _complete(self, shard: int) -> list[dict[str, Any]] | None:
        have = len(self.memory.get(shard, ())) + self.spilled.get(shard, 0)
        if have < self.expected[shard]:
            return None
        rows = self.memory.pop(shard, [])
        self.pending_rows -= len(rows)
        if shard in self.spilled:
            rows += self._take_spilled(shard)
        return sorted(rows, key=lambda r: int(r["index"]))

    def open_shards(self) -> list[int]:
        return sorted([*self.memory, *self.spilled])

    def discard(self) -> list[float]:
        """Forget every open shard (their inputs will be processed again); returns the dropped rows' ``done_at``."""
        dropped = [float(r["done_at"]) for rows in self.memory.values() for r in rows]
        for shard in list(self.spilled):
            dropped += [float(r["done_at"]) for r in self._take_spilled(shard)]
        self.memory.clear()
        self.pending_rows = 0
        return dropped
