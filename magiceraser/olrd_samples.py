"""The OLRD shard contract on the reading side: shard URLs, tar samples, one decoded sample.

Every reader of OLRD shards (the trainer's stream, the latent cache, validation, the
evaluation's ``olrd_shards`` dataset, ``magiceraser preview``) goes through these functions, so a
shard means the same thing everywhere: ``expand_urls`` turns patterns into shard URLs (refusing
missing shards), ``read_tar_samples`` opens them with fsspec and groups tar members into samples
with webdataset, ``decode_olrd`` decodes one sample (I, Ĩ, m̃, tags, caption) or raises
:class:`CorruptSample` with a reason code.

Beside the tars, what a reader may know of them without opening them: the data engine's
``job.json`` (:data:`JOB_NAME`, what the output's shards were built from) and each shard's sidecar
(:func:`sidecar_name`: the job fingerprint it was built under, its size and sha256). The data
engine writes both (``magiceraser.datasets.shards``); :mod:`magiceraser.lineage` reads them to
name the data a model was trained on.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)


JOB_NAME = "job.json"
"""An OLRD output's record of what its shards are built from: the job fingerprint and the config."""

# Sidecar fields the readers rely on (written by magiceraser.datasets.shards.write_shard).
SIDECAR_BYTES = "tar_bytes"
SIDECAR_SHA256 = "tar_sha256"  # absent in sidecars written before the lineage records


def sidecar_name(tar_name: str) -> str:
    """``olrd-000000.tar`` -> ``olrd-000000.json``: the shard's sidecar, written after its tar."""
    return tar_name.removesuffix(".tar") + ".json"


def sidecar_job(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The job fingerprint a shard was built under (``{}`` if its sidecar has none).

    Sidecars of older versions hold only the digest as a string: it still matches its job, but
    cannot say which settings changed.
    """
    job = sidecar.get("job")
    if isinstance(job, str):
        return {"fingerprint": job}
    return dict(job) if isinstance(job, dict) else {}


class CorruptSample(ValueError):
    """A sample that cannot be used; ``reason`` is a short code for the log."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def expand_urls(urls: Sequence[str], key: str = "urls") -> list[str]:
    """Expand brace patterns and globs (local or fsspec) into a sorted list of shard URLs.

    Refused (UserError naming ``key``): patterns that match nothing, and named shards that do not
    exist. A training run that silently read half of the shards it was given would be worse than
    one that does not start. Existence is checked with one listing per folder, so a brace
    pattern of 10,000 shards on object storage costs a few requests, not 10,000.
    """
    import braceexpand
    import fsspec

    from magiceraser.errors import UserError

    out: list[str] = []
    named: list[str] = []
    empty: list[str] = []
    for pattern in urls:
        for url in braceexpand.braceexpand(str(pattern)):
            if any(c in url for c in "*?["):
                fs, _, paths = fsspec.get_fs_token_paths(url)
                local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
                matched = sorted(p if local else fs.unstrip_protocol(p) for p in paths)
                if not matched:
                    empty.append(url)
                out.extend(matched)
            else:
                out.append(url)
                named.append(url)
    if empty:
        raise UserError(f"{key}: {', '.join(empty[:3])} matched no shard; give OLRD .tar shards (paths, globs, "
                        "brace patterns or s3://... URLs)")
    if not out:
        raise UserError(f"{key} is empty; give OLRD .tar shards (paths, globs, brace patterns or s3://... URLs)")
    missing = missing_urls(named)
    if missing:
        raise UserError(f"{key}: {len(missing)} of {len(out)} shards do not exist (first: {', '.join(missing[:3])}); "
                        "fix the pattern or build the missing shards")
    return out


def missing_urls(urls: Sequence[str]) -> list[str]:
    """The URLs of ``urls`` that do not exist, found with one listing per parent folder."""
    import fsspec

    by_parent: dict[str, list[str]] = {}
    for url in urls:
        by_parent.setdefault(url.rpartition("/")[0], []).append(url)
    missing = []
    for members in by_parent.values():
        fs, _, (root,) = fsspec.get_fs_token_paths(members[0])
        try:
            present = {p.rstrip("/") for p in fs.ls(posixpath.dirname(root.rstrip("/")), detail=False)}
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        for url in members:
            _, _, (path,) = fsspec.get_fs_token_paths(url)
            if path.rstrip("/") not in present:
                missing.append(url)
    return missing


def _log_and_continue(exn: Exception) -> bool:
    log.warning("skipping unreadable shard data: %r", exn)
    return True


def _reraise(exn: Exception) -> bool:
    raise exn


def read_tar_samples(urls: Iterable[str], strict: bool = False) -> Iterator[dict[str, Any]]:
    """Open each URL with fsspec and yield webdataset samples ({"__key__", "__url__", ext: bytes}).

    By default a shard that cannot be opened, or a damaged tar member, is logged and skipped (a
    multi-day training run outlives a flaky shard). ``strict=True`` raises ``OSError`` naming the
    URL instead, for jobs whose output would silently lack the shard (the latent cache).
    """
    import fsspec
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def opened() -> Iterator[dict[str, Any]]:
        for url in urls:
            try:
                fh = fsspec.open(url, "rb").open()
            except Exception as exn:
                if strict:
                    raise OSError(f"cannot open shard {url}: {exn}") from exn
                log.warning("skipping shard %s: cannot open it (%r)", url, exn)
                continue
            try:
                yield {"url": url, "stream": fh}
            finally:
                fh.close()

    handler = _reraise if strict else _log_and_continue
    try:
        yield from group_by_keys(tar_file_expander(opened(), handler=handler), handler=handler)
    except OSError:
        raise
    except Exception as exn:  # only reached in strict mode: tarfile/webdataset errors of a damaged shard
        raise OSError(f"cannot read shard data ({exn})") from exn


def _member(sample: dict[str, Any], *names: str) -> bytes:
    for name in names:
        if name in sample:
            return sample[name]
    raise CorruptSample("missing_member", f"sample {sample.get('__key__')} has none of {names}")


def decode_olrd(sample: dict[str, Any]) -> dict[str, Any]:
    """Decode an OLRD sample: original I, blended Ĩ (HxWx3 uint8), mask m̃ (bool), tags, caption."""
    from magiceraser.imageio import ImageDecodeError, decode_image, decode_mask

    key = sample.get("__key__", "?")
    try:
        meta = json.loads(_member(sample, "json"))
        original = decode_image(_member(sample, "original.jpg", "original.png"))
        blended = decode_image(_member(sample, "blended.jpg", "blended.png"))
        mask = decode_mask(_member(sample, "mask.png"))
    except ImageDecodeError as exc:
        raise CorruptSample(exc.reason, f"sample {key}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptSample("bad_json", f"sample {key}: json member is not valid JSON ({exc})") from exc
    if original.shape != blended.shape or original.shape[:2] != mask.shape:
        raise CorruptSample(
            "shape_mismatch", f"sample {key}: original {original.shape}, blended {blended.shape}, mask {mask.shape}"
        )
    if not mask.any():
        raise CorruptSample("empty_mask", f"sample {key}: mask.png has no masked pixel")
    tags = meta.get("tags") or []
    caption = meta.get("caption") or ""
    if not isinstance(tags, list) or not isinstance(caption, str):
        raise CorruptSample("bad_json", f"sample {key}: tags must be a list and caption a string")
    return dict(key=key, original=original, blended=blended, mask=mask, tags=[str(t) for t in tags], caption=caption)
