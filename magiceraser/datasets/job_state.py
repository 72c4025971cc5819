"""The state of an ``olrd`` output between runs: whose job it is and which shards are finished.

:func:`job_fingerprint` is what the shards' bytes depend on (listing, seed, image settings,
compose config, models). ``job.json`` records it with the whole config, and every shard's
sidecar carries it too. On resume, :func:`scan_sidecars` reads the finished shards' sidecars
(one listing, then one read per shard), :func:`check_job_file` and :func:`check_sidecars`
refuse an output that belongs to a different job, naming the settings that changed, and
:func:`shards_to_build` plans what is left: the shards without a finished sidecar, plus
(``retry_failed``) those whose skip records are retryable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from magiceraser import __version__
from magiceraser.config import config_to_dict
from magiceraser.datasets.config import OLRDConfig
from magiceraser.datasets.inputs import InputItem, listing_fingerprint, shard_name
from magiceraser.datasets.job_messages import JobError
from magiceraser.datasets.shards import as_folder, read_sidecar, retryable_skips
from magiceraser.fingerprint import changed, flatten
from magiceraser.fingerprint import describe_changes as fingerprint_changes
from magiceraser.fingerprint import digest as fingerprint_digest
from magiceraser.olrd_samples import JOB_NAME, sidecar_job
from magiceraser.storage import Folder, public_options


def job_fingerprint(cfg: OLRDConfig, items: list[InputItem]) -> dict[str, Any]:
    """What the shards' bytes depend on; a resumed run must match it to reuse finished shards."""
    deps = {
        "listing": listing_fingerprint(items),
        "samples_per_shard": cfg.samples_per_shard,
        "seed": cfg.seed,
        "image_format": cfg.image_format,
        "jpeg_quality": cfg.jpeg_quality,
        "min_side": cfg.min_side,
        "max_pixels": cfg.max_pixels,
        "compose": config_to_dict(cfg.compose),
        "segmenter": [cfg.segmenter.backend, cfg.segmenter.model if cfg.segmenter.backend == "mask2former" else cfg.segmenter.annotations],
        "captioner": [cfg.captioner.model, cfg.captioner.max_new_tokens, cfg.captioner.max_tags],
    }
    digest = fingerprint_digest(deps)
    return {"fingerprint": digest, "num_inputs": len(items), **deps}


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``seed: 0 -> 7, compose.max_thing_overlap: 0.1 -> 0.2`` for the settings of ``new`` that differ.

    'unknown' when ``old`` holds none of them (a record that kept only the digest).
    """
    old = {k: v for k, v in old.items() if k != "fingerprint"}
    new = {k: v for k, v in new.items() if k != "fingerprint"}
    if not flatten(old):
        return "unknown"
    in_new = flatten(new)
    return fingerprint_changes({k: ab for k, ab in changed(old, new).items() if k in in_new})


def _refuse_other_job(out: Folder, what: str, old: dict[str, Any], job: dict[str, Any]) -> JobError:
    return JobError(f"{what} in {out} belongs to a different job (changed: {describe_changes(old, job)}); "
                    "use a new output directory, or delete this one to rebuild it")


def check_job_file(out: str | Path | Folder, job: dict[str, Any]) -> bool:
    """Refuse an output whose ``job.json`` is another job's; False when there is none yet."""
    out = as_folder(out)
    path = out.url(JOB_NAME)
    try:
        text = out.read_text(JOB_NAME)
    except FileNotFoundError:
        return False
    try:
        old = json.loads(text)
        old.get("fingerprint")
    except (ValueError, AttributeError):
        raise JobError(f"{path} is not a job record (not a JSON object): delete it to resume, the shards' "
                       "sidecars carry their job's fingerprint") from None
    if old.get("fingerprint") != job["fingerprint"]:
        raise _refuse_other_job(out, JOB_NAME, old, job)
    return True


def check_sidecars(out: str | Path | Folder, sidecars: dict[int, dict[str, Any]], job: dict[str, Any]) -> None:
    """Refuse if any finished shard was built under another job fingerprint.

    ``job.json`` cannot vouch for the shards (it can be deleted or rewritten); each sidecar
    carries the fingerprint of the job that built it, and only those equal to ours count as done.
    Refusing (rather than silently rebuilding) keeps another job's shards from being overwritten.
    """
    foreign = {s: sc for s, sc in sorted(sidecars.items()) if sidecar_job(sc).get("fingerprint") != job["fingerprint"]}
    if not foreign:
        return
    first, sc = next(iter(foreign.items()))
    what = f"{shard_name(first)}.json" + (f" (and {len(foreign) - 1} more of {len(sidecars)} shards)" if len(foreign) > 1 else "")
    raise _refuse_other_job(out, what, sidecar_job(sc), job)


def write_job_file(out: str | Path | Folder, job: dict[str, Any], cfg: OLRDConfig) -> None:
    """``job.json``: the fingerprint plus the whole config (checked on resume, like every sidecar).

    Secrets in ``storage_options`` are masked: whoever reads the shards need not hold them.
    """
    config = {**config_to_dict(cfg), "storage_options": public_options(cfg.storage_options)}
    as_folder(out).write_json(JOB_NAME, {**job, "version": __version__, "config": config})


def shards_to_build(n_shards: int, sidecars: dict[int, dict[str, Any]], retry_failed: bool) -> list[int]:
    """Shards without a finished sidecar, plus (``retry_failed``) those holding retryable skips."""
    return [s for s in range(n_shards) if s not in sidecars or (retry_failed and retryable_skips(sidecars[s]))]


def scan_sidecars(out: str | Path | Folder, n_shards: int) -> dict[int, dict[str, Any]]:
    """The sidecars of the finished shards (shard -> sidecar): the resume scan, one read per shard.

    One listing first (names and sizes; one request per 1000 keys on object storage), so shards
    that were never written cost no failed open (a fresh run of 1.8M inputs plans thousands of
    shards) and the tars' sizes need no request each.
    """
    out = as_folder(out)
    sizes = out.list()
    return {s: sc for s in range(n_shards)
            if f"{shard_name(s)}.json" in sizes and (sc := read_sidecar(out, s, sizes)) is not None}

