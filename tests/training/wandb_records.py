"""Read the records of a W&B run file (``run-<id>.wandb``), as written by W&B's offline mode.

The file is W&B's header (``:W&B``, magic ``0xBEE1``, version 0) followed by LevelDB's log
format: 32 KiB blocks of chunks, each ``crc32c (4) | length (2) | type (1) | data``, a record
split over chunks of type FIRST/MIDDLE/LAST or held whole in one FULL chunk. Each record is a
``wandb_internal_pb2.Record`` protobuf. The installed wandb has no Python reader of its own
(its writer is the Go core), so the tests read the files with this one.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    assert data.startswith(HEADER), f"{path} is not a W&B run file"
    pos, pending = len(HEADER), b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # a block's tail too short for a chunk header is padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding (a file cut at a block boundary)
            pos += left_in_block
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def history_steps(path: str | Path) -> list[int]:
    """The ``_step`` of every history record in a run file, in file order."""
    from wandb.proto import wandb_internal_pb2

    steps = []
    for raw in records(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                if key == "_step":
                    steps.append(int(json.loads(item.value_json)))
    return steps


def run_files(wandb_dir: str | Path, run_id: str) -> list[Path]:
    """Every offline run file of ``run_id`` under ``wandb_dir`` (one per attempt that resumed it), oldest first."""
    return sorted(Path(wandb_dir).glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
