"""Lineage: which shards a model was trained on and which model an evaluation scored, in W&B and in our files.

In W&B (every command offline-capable, ``wandb.mode``)::

    magiceraser olrd      logs   dataset artifact  olrd-<job fingerprint[:16]>  (type "dataset")
                                 one reference per shard (its file:// or s3:// URI; nothing is copied),
                                 the job fingerprint and job.json in its metadata
    magiceraser train     uses   that artifact, built again from the shards it reads (same digest)
                          logs   model artifact    magiceraser-model             (type "model")
                                 the export: LoRA, v*, magiceraser.json (+ README.md where present)
    magiceraser evaluate  uses   that model artifact, built again from each method's trained_dir

W&B identifies an artifact version by name and digest within a project: a run that uses an
artifact it built itself is linked to the version another run logged with the same content. So
the three commands link when they log to one project and entity (``wandb.project``, default
``magiceraser`` for all three). ``wandb.Run.use_artifact`` refuses in offline mode; offline, the
use is recorded as W&B's own ``use_artifact`` of a new artifact records it (the artifact record
with ``use_after_commit``), which ``wandb sync`` replays (:func:`magiceraser.wandb_runs.use_artifact`).

In our files, so lineage survives without W&B: an export's ``magiceraser.json`` holds
``lineage`` (:meth:`DatasetLineage.record`: ``job_fingerprints``, the OLRD jobs its shards' sidecars
name; ``datasets``, each job's artifact name and digest; ``shards``, every shard read with its
``uri``, ``digest`` (sha256), ``bytes`` and ``job_fingerprint``), and an evaluation's
``lineage.json`` names, per method with a ``trained_dir``, the export's digest (:func:`export_digest`,
the model artifact's digest) and the jobs it was trained on.

Digests:

- a shard: the sha256 of the tar, which the data engine records in the shard's sidecar as it
  writes it (``olrd_samples.SIDECAR_SHA256``), so naming a shard never reads it again; a shard
  whose sidecar lacks it (older versions, foreign shards) is named by what the store says of it
  without reading it (size and ETag, or size and modification time: :func:`url_identity`):
  lineage never reads terabytes of shards at a run's start.
- a dataset artifact: W&B's manifest digest over (shard file name, sha256). It does not depend on
  where the shards lie, so a local copy of an ``s3://`` output names the same version.
- an export: W&B's manifest digest of the model artifact (each file's md5 as W&B computes it).

The references carry the shard's sha256 as their digest instead of W&B's own checksum (the md5 of
the whole file for file://, the ETag for s3://), which would read every shard again on every run
(or, with ``checksum=False``, name a shard by its URI only; and W&B's s3 handler needs boto3,
which the ``s3`` extra does not install). Read the shards from their URIs, as the trainer does:
``artifact.download()`` of these references checks W&B's checksum and refuses them.
"""

from __future__ import annotations

import functools
import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magiceraser.artifacts import CARD_GRID_NAME, EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME, MODEL_CARD_NAME
from magiceraser.olrd_samples import JOB_NAME, SIDECAR_BYTES, SIDECAR_SHA256, sidecar_job, sidecar_name
from magiceraser.storage import Folder, is_object_store
from magiceraser.storage.urls import local_path

log = logging.getLogger(__name__)

DATASET_TYPE = "dataset"
MODEL_TYPE = "model"
MODEL_ARTIFACT = "magiceraser-model"
"""One collection for every export; its versions are told apart by digest (W&B's v0, v1, ...)."""
EXPORT_FILES = (LORA_WEIGHTS_NAME, EMBEDS_NAME, META_NAME)
LINEAGE_KEY = "lineage"
"""The key of the export's ``magiceraser.json`` that holds :meth:`DatasetLineage.record`."""


# -- shards ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardRef:
    """One shard as lineage names it: where it is and what it holds."""

    uri: str
    """``file:///absolute/olrd-000000.tar`` or ``s3://bucket/prefix/olrd-000000.tar`` (any fsspec URL as is)."""
    sha256: str | None
    """The tar's sha256 as its sidecar recorded it; None where no sidecar vouches for the tar."""
    size: int
    job_fingerprint: str | None = None
    """The job its sidecar says built it (None: no sidecar, or one that does not describe this tar)."""
    identity: str | None = None
    """Where there is no recorded sha256: what the store says of the file without reading it (its
    size and ETag on object storage, size and modification time locally). Lineage never reads a shard:
    a run on terabytes of shards written by another tool, or by a data engine before the sidecars
    carried digests, starts as fast as any other."""

    @property
    def name(self) -> str:
        return posixpath.basename(self.uri)

    @property
    def digest(self) -> str:
        """The manifest digest: the sha256, else the identity."""
        return self.sha256 or self.identity or ""

    def record(self) -> dict[str, Any]:
        """``{uri, digest (sha256 hex or None), bytes, job_fingerprint}`` (+ ``identity`` where there is no
        sha256), as ``magiceraser.json``'s lineage lists it."""
        rec = {"uri": self.uri, "digest": self.sha256, "bytes": self.size, "job_fingerprint": self.job_fingerprint}
        if self.sha256 is None:
            rec["identity"] = self.identity
        return rec


def shard_uri(url: str) -> str:
    """The URI a reference names: an object-store URL as it is, a local path as ``file:///absolute``."""
    return url if is_object_store(url) else local_path(url).resolve().as_uri()


def _split(url: str) -> tuple[str, str]:
    """(folder, file name) of a shard URL or path."""
    if is_object_store(url):
        folder, _, name = url.rpartition("/")
        return folder, name
    path = local_path(url).resolve()
    return str(path.parent), path.name


def url_identity(url: str, size: int, storage_options: Mapping[str, Any] | None = None) -> str:
    """What names a file without reading it: ``size=N,etag=...`` on object storage (its ETag, or the
    store's own checksum field), ``size=N,mtime_ns=...`` locally."""
    if not is_object_store(url):
        return f"size={size},mtime_ns={local_path(url).stat().st_mtime_ns}"
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    info = fs.info(path)
    tag = next((info[k] for k in ("ETag", "etag", "md5Hash", "crc32c", "LastModified", "mtime") if info.get(k)), "")
    return f"size={size},etag={str(tag).strip(chr(34))}"


def shard_ref(url: str, size: int, sidecar: Mapping[str, Any] | None,
              storage_options: Mapping[str, Any] | None = None) -> ShardRef:
    """The reference of the shard at ``url`` of ``size`` bytes; ``sidecar`` (or None) as read beside it.

    A sidecar vouches for the tar only when it names the tar's size (as for the data engine's
    resume): then its sha256 and job fingerprint are the shard's. Otherwise the shard is named by
    its :func:`url_identity` (never read).
    """
    sha, job = None, None
    if isinstance(sidecar, Mapping) and sidecar.get(SIDECAR_BYTES) == size:
        sha = sidecar.get(SIDECAR_SHA256)
        job = sidecar_job(dict(sidecar)).get("fingerprint")
    if isinstance(sha, str) and sha:
        return ShardRef(uri=shard_uri(url), sha256=sha, size=int(size), job_fingerprint=job)
    return ShardRef(uri=shard_uri(url), sha256=None, size=int(size), job_fingerprint=job,
                    identity=url_identity(url, int(size), storage_options))


def _read_json(folder: Folder, name: str) -> Any:
    """The JSON file ``name`` of ``folder``; None when it is missing or not JSON."""
    try:
        return json.loads(folder.read_text(name))
    except (OSError, ValueError):
        return None


def shard_refs(urls: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> list[ShardRef]:
    """The references of ``urls`` (shards as the trainer reads them), in order.

    One listing per folder, then one read of each shard's sidecar (16 at a time: thousands of
    shards on object storage cost seconds); no shard is read (:func:`shard_ref`).
    """
    by_folder: dict[str, list[tuple[int, str, str]]] = {}
    for i, url in enumerate(urls):
        folder, name = _split(url)
        by_folder.setdefault(folder, []).append((i, url, name))
    refs: list[ShardRef | None] = [None] * len(urls)
    with ThreadPoolExecutor(max_workers=16) as pool:
        for folder_url, members in by_folder.items():
            folder = Folder(folder_url, storage_options)
            sizes = folder.list()

            def one(member: tuple[int, str, str], folder: Folder = folder, sizes: dict[str, int] = sizes) -> tuple[int, ShardRef]:
                i, url, name = member
                size = sizes.get(name)
                if size is None:
                    size = folder.size(name)
                if size is None:
                    raise FileNotFoundError(f"shard {url} does not exist")
                sidecar = _read_json(folder, sidecar_name(name)) if sidecar_name(name) in sizes else None
                return i, shard_ref(url, size, sidecar, storage_options)

            for i, ref in pool.map(one, members):
                refs[i] = ref
    return [r for r in refs if r is not None]


# -- datasets -------------------------------------------------------------------------------------


def dataset_artifact_name(fingerprint: str) -> str:
    """The dataset artifact of an OLRD job: ``olrd-`` and the first 16 hex digits of its fingerprint."""
    return f"olrd-{fingerprint[:16]}"


def read_job(folder: Folder) -> dict[str, Any] | None:
    """The ``job.json`` of an OLRD output (None: none there, or not a job record)."""
    job = _read_json(folder, JOB_NAME)
    return job if isinstance(job, dict) and isinstance(job.get("fingerprint"), str) else None


@dataclass
class DatasetVersion:
    """The shards of one OLRD job (one ``job.json``) that a run wrote or read: one dataset artifact."""

    job: dict[str, Any]
    """The job's ``job.json`` as written (fingerprint, what it depends on, version, config)."""
    shards: list[ShardRef] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return self.job["fingerprint"]

    @property
    def artifact_name(self) -> str:
        return dataset_artifact_name(self.fingerprint)

    def artifact(self) -> Any:
        """A new W&B dataset artifact referencing the shards (each call a fresh draft, to log or use once)."""
        import wandb
        from wandb.sdk.artifacts.artifact_manifest_entry import ArtifactManifestEntry

        artifact = wandb.Artifact(
            self.artifact_name, type=DATASET_TYPE,
            description=f"OLRD shards of job {self.fingerprint} (references to where they lie; nothing copied)",
            metadata={"job_fingerprint": self.fingerprint, "num_shards": len(self.shards),
                      "bytes": sum(s.size for s in self.shards), "job": self.job},
        )
        names = _entry_names(self.shards)
        for ref, name in zip(self.shards, names):
            # What add_reference(uri, name=name) adds, with the digest and size this module
            # defines: the sha256 the sidecar recorded, not W&B's checksum (see the module docstring).
            artifact.manifest.add_entry(ArtifactManifestEntry(path=name, ref=ref.uri, digest=ref.digest, size=ref.size))
        return artifact

    @functools.cached_property
    def digest(self) -> str:
        return self.artifact().digest

    def summary(self) -> dict[str, Any]:
        return {"artifact": self.artifact_name, "job_fingerprint": self.fingerprint, "digest": self.digest,
                "num_shards": len(self.shards)}


def _entry_names(shards: Sequence[ShardRef]) -> list[str]:
    """Entry paths in an artifact: the file names, or (two shards with one name) the URI's path."""
    names = [s.name for s in shards]
    if len(set(names)) == len(names):
        return names
    return [s.uri.split("://", 1)[-1].lstrip("/") for s in shards]


@dataclass
class DatasetLineage:
    """What a training run read: every shard, and the OLRD jobs (one :class:`DatasetVersion` each) they came from."""

    shards: list[ShardRef] = field(default_factory=list)
    """Every shard the run reads, in its order."""
    datasets: list[DatasetVersion] = field(default_factory=list)
    """The shards of each job whose ``job.json`` vouches for them: one dataset artifact each."""
    latent_cache: str = ""
    """Set when the run reads a latent cache instead of shards (then no shard is listed)."""

    @property
    def job_fingerprints(self) -> list[str]:
        """The jobs the shards' sidecars name, in the order the run reads them."""
        return list(dict.fromkeys(s.job_fingerprint for s in self.shards if s.job_fingerprint))

    @property
    def shards_without_job(self) -> list[ShardRef]:
        """Shards no ``job.json`` vouches for (foreign shards, a deleted ``job.json``): no artifact names them."""
        named = {s.uri for d in self.datasets for s in d.shards}
        return [s for s in self.shards if s.uri not in named]

    def record(self) -> dict[str, Any]:
        """``magiceraser.json``'s ``lineage``: the job fingerprints, the dataset artifacts and every shard."""
        rec: dict[str, Any] = {"job_fingerprints": self.job_fingerprints, "datasets": [d.summary() for d in self.datasets],
                               "shards": [s.record() for s in self.shards]}
        if self.latent_cache:
            rec["latent_cache"] = self.latent_cache
        return rec

    def run_config(self) -> dict[str, Any]:
        """For the W&B run config: the jobs, each artifact's name and digest, and every shard that no artifact names."""
        rec = {**self.record(), "shards_without_job": [s.record() for s in self.shards_without_job]}
        del rec["shards"]
        return rec


def dataset_lineage(urls: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> DatasetLineage:
    """The shards at ``urls`` and the OLRD jobs that built them.

    A shard belongs to a job's dataset artifact when the ``job.json`` of its folder names a
    fingerprint and the shard's sidecar names the same one; the others are listed on their own.
    """
    refs = shard_refs(urls, storage_options)
    jobs: dict[str, dict[str, Any] | None] = {}
    versions: dict[str, DatasetVersion] = {}
    for url, ref in zip(urls, refs):
        folder = _split(url)[0]
        if folder not in jobs:
            jobs[folder] = read_job(Folder(folder, storage_options))
        job = jobs[folder]
        if job is not None and ref.job_fingerprint == job["fingerprint"]:
            versions.setdefault(job["fingerprint"], DatasetVersion(job)).shards.append(ref)
    for version in versions.values():
        version.shards.sort(key=lambda s: s.uri)
    return DatasetLineage(shards=refs, datasets=list(versions.values()))


def written_dataset(out: Folder, sidecars: Sequence[Mapping[str, Any]]) -> DatasetVersion | None:
    """The dataset version of an OLRD output, from its ``job.json`` and the sidecars the job holds
    (what :func:`dataset_lineage` finds for the same shards; no shard is read again). None without ``job.json``."""
    job = read_job(out)
    if job is None:
        return None
    shards = [shard_ref(out.url(sc["tar"]), sc[SIDECAR_BYTES], sc, out.options) for sc in sidecars]
    return DatasetVersion(job, sorted(shards, key=lambda s: s.uri))


# -- the export -----------------------------------------------------------------------------------


def export_files(export_dir: str | Path) -> list[str]:
    """The files of an export that make up the model: the three of every export, and its model card and the
    card's validation grid where present (what `hf upload` publishes, cluster/README.md)."""
    return [*EXPORT_FILES, *(name for name in (MODEL_CARD_NAME, CARD_GRID_NAME) if (Path(export_dir) / name).is_file())]


def model_artifact(export_dir: str | Path, stage: bool = True) -> Any:
    """A new W&B model artifact of the export in ``export_dir``.

    ``stage``: W&B copies the files to its staging folder (``policy="mutable"``), so an offline
    run uploads, at ``wandb sync``, what was exported even if the folder changed since; False
    when only the digest is wanted.
    """
    import wandb

    path = Path(export_dir)
    meta = json.loads((path / META_NAME).read_text())
    artifact = wandb.Artifact(
        MODEL_ARTIFACT, type=MODEL_TYPE, description="MagicEraser v* + LoRA for SD 1.5 Inpainting (stock diffusers loads it)",
        metadata={"token": meta.get("token"), "base_model": meta.get("base_model"), "lora": meta.get("lora"),
                  "steps": meta.get("steps"), "files": meta.get("files"), **_trained_on(meta)},
    )
    for name in export_files(path):
        artifact.add_file(str(path / name), name=name, policy="mutable" if stage else "immutable")
    return artifact


def export_digest(export_dir: str | Path) -> str:
    """The digest of an export: its model artifact's (what the training run logged and the evaluation uses)."""
    return model_artifact(export_dir, stage=False).digest


def _trained_on(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The jobs and dataset artifacts an export's ``magiceraser.json`` names (empty lists for an older export)."""
    lineage = meta.get(LINEAGE_KEY) if isinstance(meta.get(LINEAGE_KEY), Mapping) else {}
    return {"job_fingerprints": list(lineage.get("job_fingerprints") or []),
            "datasets": [{k: d.get(k) for k in ("artifact", "job_fingerprint", "digest")} for d in lineage.get("datasets") or []]}


def export_lineage(export_dir: str | Path) -> dict[str, Any]:
    """What an evaluation records of an export: its digest and files, and the OLRD jobs it was trained on."""
    meta = json.loads((Path(export_dir) / META_NAME).read_text())
    return {"model_artifact": MODEL_ARTIFACT, "export_digest": export_digest(export_dir),
            "files": meta.get("files") or {}, **_trained_on(meta)}
