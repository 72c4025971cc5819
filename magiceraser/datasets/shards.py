"""WebDataset shard output: samples -> ``olrd-%06d.tar`` + sidecar, skip log, stats.

Layout of an output directory::

    job.lock             held by the running job (owner and heartbeat, see lock.py)
    job.json             what the shards were built from (a resume must match it)
    olrd-000000.tar      samples of inputs [0, n) in listing order (WebDataset: key.original.jpg, ...)
    olrd-000000.json     sidecar: the job fingerprint, the tar's size and sha256, keys, counts and skip records;
                         written after the tar
    ...
    skipped.jsonl        {source, key, reason, stage, message, retryable} of every input not turned into a sample
    stats.json           counts per stage and per skip reason, images/s; written last

A shard counts as finished when its sidecar exists and names the tar's exact size, and it
belongs to the current job when the sidecar's job fingerprint is the job's (``job.json`` alone
does not prove it: it can be deleted or rewritten). Tars and sidecars are written under
temporary names and renamed into place, so a killed job never leaves a partial file under a
final name; a tar without a sidecar is rebuilt. On an object store (``output=s3://...``, see
``magiceraser.storage``) there is no rename and none is needed: the tar object is written once
(one atomic PUT) under its final key, the sidecar object after it, and no temporary key is ever
created; the sidecar's existence is what makes the shard final there too.

Skip records say whether a rerun may turn them into a sample (``retryable``): reasons that are
facts about the input (an undecodable file, no eligible object) are final; an exception in a
model stage or a failed read may be a transient fault (a CUDA error, a storage hiccup), and
``retry_failed=true`` rebuilds exactly the shards holding such records.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magiceraser.datasets.inputs import shard_name
from magiceraser.olrd_samples import SIDECAR_BYTES, SIDECAR_SHA256, sidecar_name
from magiceraser.storage import Folder

# Skip reason -> the stage that produced it (for the per-stage counts in stats.json).
STAGES = ("read", "segment", "compose", "caption")
# Skip reasons a rerun may not repeat: the source could not be read (network, permissions being
# fixed) or a model raised (CUDA fault, out of memory, a killed backend). Every other reason is a
# fact about the input and stays final.
RETRYABLE_REASONS = frozenset({"unreadable", "segment_error", "caption_error"})


@dataclass
class Sample:
    key: str
    files: dict[str, bytes]  # extension (e.g. "original.jpg", "json") -> bytes


@dataclass
class Skip:
    source: str
    key: str
    reason: str
    stage: str
    message: str = ""
    retryable: bool | None = None
    """Whether a rerun may succeed; None: decided by the reason (:data:`RETRYABLE_REASONS`)."""

    def __post_init__(self) -> None:
        if self.retryable is None:
            self.retryable = self.reason in RETRYABLE_REASONS

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "key": self.key, "reason": self.reason, "stage": self.stage,
                "message": self.message, "retryable": bool(self.retryable)}


def is_retryable(record: dict[str, Any]) -> bool:
    """Whether a sidecar's skip record may succeed on a rerun (records of older versions: by reason)."""
    return bool(record.get("retryable", record.get("reason") in RETRYABLE_REASONS))


def retryable_skips(sidecar: dict[str, Any]) -> list[dict[str, Any]]:
    """The skip records of a shard that ``retry_failed=true`` would try again."""
    return [rec for rec in sidecar.get("skips", []) if is_retryable(rec)]


@dataclass
class ShardResult:
    shard: int
    inputs: int
    samples: list[Sample] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


def _tar_bytes(samples: Iterable[Sample]) -> bytes:
    """A deterministic tar (fixed mtime/owner/mode) of the samples' files, in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for ext, data in sample.files.items():
                info = tarfile.TarInfo(f"{sample.key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def as_folder(out_dir: str | Path | Folder) -> Folder:
    """``out_dir`` as a :class:`Folder` (a path or URL without storage options, or a Folder as is)."""
    return out_dir if isinstance(out_dir, Folder) else Folder(out_dir)


def write_shard(out_dir: str | Path | Folder, result: ShardResult, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the tar, then its sidecar (each complete or not at all); returns the sidecar."""
    out = as_folder(out_dir)
    name = shard_name(result.shard)
    data = _tar_bytes(result.samples)
    out.write_bytes(f"{name}.tar", data)
    sidecar = {
        "shard": result.shard,
        "tar": f"{name}.tar",
        SIDECAR_BYTES: len(data),
        SIDECAR_SHA256: hashlib.sha256(data).hexdigest(),  # the shard's digest for lineage (magiceraser.lineage)
        "inputs": result.inputs,
        "samples": len(result.samples),
        "skipped": len(result.skips),
        "keys": [s.key for s in result.samples],
        "skip_reasons": dict(sorted(Counter(s.reason for s in result.skips).items())),
        "skips": [s.to_json() for s in result.skips],
    }
    if job:
        # The whole fingerprint (digest and the settings behind it): a resume checks it, and a
        # mismatch can name what changed even when job.json is gone.
        sidecar["job"] = dict(job)
    # Written only now: a sidecar always describes a complete tar that is already in place.
    out.write_json(sidecar_name(f"{name}.tar"), sidecar)
    return sidecar


def read_sidecar(out_dir: str | Path | Folder, shard: int, sizes: dict[str, int] | None = None) -> dict[str, Any] | None:
    """The sidecar of a finished shard, or None when the shard must be (re)built.

    ``sizes``: a listing of the folder (name -> size, :meth:`Folder.list`) to take the tar's size
    from instead of asking the store once per shard.
    """
    out = as_folder(out_dir)
    name = shard_name(shard)
    try:
        sidecar = json.loads(out.read_text(sidecar_name(f"{name}.tar")))
        size = sizes.get(f"{name}.tar") if sizes is not None else out.size(f"{name}.tar")
        if size is None or size != sidecar[SIDECAR_BYTES]:
            return None
        return sidecar
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_skip_log(out_dir: str | Path | Folder, sidecars: list[dict[str, Any]]) -> int:
    """``skipped.jsonl`` from the sidecars, in shard order; returns the number of records."""
    lines = [json.dumps(rec, sort_keys=True) for sc in sorted(sidecars, key=lambda s: s["shard"]) for rec in sc["skips"]]
    as_folder(out_dir).write_text("skipped.jsonl", "".join(line + "\n" for line in lines))
    return len(lines)


def summarize(sidecars: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per stage (inputs surviving each stage) and per skip reason over all shards."""
    inputs = sum(sc["inputs"] for sc in sidecars)
    samples = sum(sc["samples"] for sc in sidecars)
    by_reason: Counter[str] = Counter()
    by_stage: Counter[str] = Counter()
    for sc in sidecars:
        for rec in sc["skips"]:
            by_reason[rec["reason"]] += 1
            by_stage[rec["stage"]] += 1
    passed, stages = inputs, {"listed": inputs}
    for stage in STAGES:
        passed -= by_stage.get(stage, 0)
        stages[stage] = passed
    return {
        "inputs": inputs,
        "samples": samples,
        "skipped": inputs - samples,
        "shards": len(sidecars),
        "stages": stages,
        "skip_reasons": dict(sorted(by_reason.items())),
        "retryable": sum(len(retryable_skips(sc)) for sc in sidecars),
    }
