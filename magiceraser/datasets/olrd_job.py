"""``magiceraser olrd``: build OLRD shards with Ray Data (local Ray, or a cluster via ``ray job submit``).

Data flow (every stage streams; Ray Data's bars show each operator), by ``layout``::

    per_stage:            listing (driver) -> read+decode (tasks) -> segment (actor pool) -> compose (tasks)
                          -> caption (actor pool) -> driver: one shard at a time, tar + sidecar, atomically
    decode_in_segmenter:  listing -> read+decode+segment+compose (actor pool) -> caption (actor pool) -> driver
    one_pool:             listing -> every stage in one actor pool -> driver

The stage code is the same in every layout (``stages.py``), so the shards are byte-identical.

Resume: the listing fixes which inputs belong to which shard (``inputs.py``); finished shards
(sidecar present, matching its tar, and carrying this job's fingerprint) are left out of the
dataset, so a rerun only builds what is missing, and a shard that is rebuilt gets the same bytes.
A shard of a different job (another seed, listing, compose config, ...) is refused, naming what
changed, exactly like a different ``job.json``. ``retry_failed=true`` also rebuilds the shards
whose skip records are retryable (a model raised, a read failed). ``skipped.jsonl`` and
``stats.json`` are rewritten from all sidecars at the end (``stats.json`` last: it marks a
complete output).

One job per output: ``job.lock`` (``lock.py``) is taken before anything in the folder is
touched and released at the end or on any error; a second job refuses at once.

The output may be an object store (``output=s3://bucket/prefix``, any fsspec URL; credentials
and endpoint from the AWS variables, fsspec's configuration or ``storage_options``): every file
is then written once under its final key, a shard is final when its sidecar object exists, the
resume scan lists the prefix once and reads the sidecars, the lock uses conditional requests,
and spill files go to a local temporary folder (``magiceraser.storage``).

Before that, :func:`preflight` checks every setting a user can get wrong without starting Ray or
writing anything (input, input_root, output placement, annotations and their PNG folder, local
model folders); then the output is created and probed with a temporary file. Each mistake is one
line naming the key, with exit code 2, instead of a traceback or an ActorDiedError after
``job.json`` was written.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from magiceraser import __version__
from magiceraser.atomic import TMP_PREFIX
from magiceraser.config import config_to_dict
from magiceraser.datasets.config import OLRDConfig
from magiceraser.datasets.inputs import (
    IMAGE_EXTENSIONS,
    InputError,
    InputItem,
    list_inputs,
    listing_fingerprint,
    num_shards,
    shard_name,
)
from magiceraser.datasets.node_loss import LostActorWatch, is_cluster_fault
from magiceraser.datasets.shards import (
    ShardResult,
    as_folder,
    read_sidecar,
    retryable_skips,
    sidecar_job,
    summarize,
    write_shard,
    write_skip_log,
)
from magiceraser.errors import INTERRUPTED_EXIT_CODE, Interrupted, UserError
from magiceraser.fingerprint import changed, flatten
from magiceraser.fingerprint import describe_changes as fingerprint_changes
from magiceraser.fingerprint import digest as fingerprint_digest
from magiceraser.lock import OutputLock
from magiceraser.quiet import filtered_stderr
from magiceraser.storage import Folder, public_options
from magiceraser.write_errors import writing


class JobError(UserError):
    """A user error the job refuses to start on (wrong or foreign output, no inputs): one line, exit code 2."""



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
    path = out.url("job.json")
    try:
        text = out.read_text("job.json")
    except FileNotFoundError:
        return False
    try:
        old = json.loads(text)
        old.get("fingerprint")
    except (ValueError, AttributeError):
        raise JobError(f"{path} is not a job record (not a JSON object): delete it to resume, the shards' "
                       "sidecars carry their job's fingerprint") from None
    if old.get("fingerprint") != job["fingerprint"]:
        raise _refuse_other_job(out, "job.json", old, job)
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
    as_folder(out).write_json("job.json", {**job, "version": __version__, "config": config})


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


def _init_ray(cfg: OLRDConfig) -> bool:
    """Join the configured/ambient cluster or start a local Ray; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if address in (None, "local"):
        # A new local Ray: on a busy machine its agent can take longer than Ray's 60 s default
        # to come up, which aborts the start; give it 5 minutes.
        os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
        if cfg.num_cpus:
            kwargs["num_cpus"] = cfg.num_cpus
    ray.init(address=address, **kwargs)
    return True


def input_blocks(items: Sequence[InputItem], rows_per_block: int) -> list[Any]:
    """The listing as Arrow tables of ``rows_per_block`` rows: source, key, index, shard only.

    Compact on purpose (a million inputs are ~150 MB of Arrow, where a dict per row with every
    stage's empty column took over a gigabyte in the driver); the stages add the other columns
    (``stages._mutable``).
    """
    import pyarrow as pa

    # One table, then zero-copy slices: a table per block cost ~1.5 ms each (15 s for 62K blocks).
    table = pa.table({
        "source": pa.array([it.source for it in items], pa.string()),
        "key": pa.array([it.key for it in items], pa.string()),
        "index": pa.array([it.index for it in items], pa.int64()),
        "shard": pa.array([it.shard for it in items], pa.int64()),
    })
    return [table.slice(start, rows_per_block) for start in range(0, len(items), rows_per_block)]


def build_dataset(cfg: OLRDConfig, items: list[InputItem], segmenter_id: str, elastic: bool = False):
    """The Ray Data pipeline over ``items`` (lazy; nothing runs until it is iterated).

    ``elastic``: every actor pool runs from 1 actor up to its configured size (a rerun after a
    lost node: the survivors may not hold every actor, and a fixed-size pool would wait for
    actors that cannot start, while Ray may still count the lost node's resources for a while).
    """
    import ray
    from ray.data import ActorPoolStrategy

    from magiceraser.datasets.stages import (
        CaptionStage,
        SegmentStage,
        SingleStage,
        compose_batch,
        read_images,
    )

    layout = stage_layout(cfg)
    seg, cap = cfg.segmenter, cfg.captioner
    read_kwargs = {"min_side": cfg.min_side, "max_pixels": cfg.max_pixels}
    compose_kwargs = {
        "compose": config_to_dict(cfg.compose), "seed": cfg.seed, "image_format": cfg.image_format,
        "jpeg_quality": cfg.jpeg_quality, "segmenter_id": segmenter_id, "max_tags": cap.max_tags,
    }
    # vLLM pins its own torch/transformers: its actors get a virtualenv of their own (Ray runtime env).
    caption_env = {"runtime_env": {"pip": {"packages": list(cap.pip)}}} if cap.pip else {}

    def actor_stage(ds, fn, size: int, num_cpus: float, num_gpus: float, batch_size: int, **kwargs):
        # Ray 2.60 has no named parameter for max_restarts/max_task_retries (its defaults are
        # unbounded: a batch that always kills its actor would loop); they still go through
        # ray_remote_args, whose deprecation warning is for Ray 2.64 (we pin 2.60.0).
        pool = ActorPoolStrategy(min_size=1, max_size=size) if elastic and size > 1 else ActorPoolStrategy(size=size)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            return ds.map_batches(
                fn, batch_size=batch_size, batch_format="numpy", compute=pool,
                num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=cfg.max_restarts,
                max_task_retries=cfg.max_task_retries, **kwargs,
            )

    # One input block per first-stage batch keeps its work small and evenly spread.
    first_batch = {"per_stage": cfg.read_batch_size, "decode_in_segmenter": seg.batch_size, "one_pool": cap.batch_size}[layout]
    ds = ray.data.from_arrow(input_blocks(items, first_batch))
    if layout == "one_pool":
        return actor_stage(
            ds, SingleStage, cap.num_actors, seg.num_cpus + cap.num_cpus, seg.num_gpus + cap.num_gpus, cap.batch_size,
            fn_constructor_kwargs={"segmenter": config_to_dict(seg), "read": read_kwargs, "compose": compose_kwargs,
                                   "captioner": config_to_dict(cap)},
            **caption_env,
        )
    fused = layout == "decode_in_segmenter"
    if not fused:
        ds = ds.map_batches(read_images, batch_size=cfg.read_batch_size, batch_format="numpy",
                            num_cpus=cfg.task_num_cpus, fn_kwargs=read_kwargs)
    ds = actor_stage(
        ds, SegmentStage, seg.num_actors, seg.num_cpus, seg.num_gpus, seg.batch_size,
        fn_constructor_kwargs={"segmenter": config_to_dict(seg), "read": read_kwargs if fused else None,
                               "compose": compose_kwargs if fused else None},
    )
    if not fused:
        ds = ds.map_batches(compose_batch, batch_size=cfg.read_batch_size, batch_format="numpy",
                            num_cpus=cfg.task_num_cpus, fn_kwargs=compose_kwargs)
    # The caption stage returns only the columns the shard writer reads (stages.OUTPUT_COLUMNS).
    return actor_stage(ds, CaptionStage, cap.num_actors, cap.num_cpus, cap.num_gpus, cap.batch_size,
                       fn_constructor_kwargs={"captioner": config_to_dict(cap)}, **caption_env)


def stage_layout(cfg: OLRDConfig) -> str:
    """The layout ``cfg.layout`` resolves to: 'per_stage', 'decode_in_segmenter' or 'one_pool' (see ``OLRDConfig.layout``)."""
    if cfg.layout != "auto":
        return cfg.layout
    if cfg.segmenter.num_gpus == 0 and cfg.captioner.num_gpus == 0:
        return "one_pool"
    return "decode_in_segmenter" if cfg.segmenter.num_gpus == 0 else "per_stage"


def segmenter_id(cfg: OLRDConfig) -> str:
    seg = cfg.segmenter
    return seg.model if seg.backend == "mask2former" else f"coco_panoptic:{Path(seg.annotations).name}"


class Progress:
    """Periodic one-line report (inputs done, samples, skips per reason, images/s) and a timeline.

    Each row carries ``done_at``, the wall-clock time its last stage finished it (stages.py).
    The timeline for stats.json, ``[[seconds since start, inputs finished], ...]``, is built from
    those times, so it shows when the workers finished the images, not when the driver got round
    to them; it has at most ``max_points + 1`` points whatever the run's length.
    """

    def __init__(self, total: int, interval_s: float):
        self.total, self.interval = total, interval_s
        self.t0 = self.last = time.monotonic()
        self.wall0 = time.time()
        self.done = self.samples = 0
        self.reasons: Counter[str] = Counter()
        self.finished = array("d")  # seconds after wall0, one per input; 8 bytes each

    def update(self, reason: str, done_at: float | None = None) -> None:
        self.done += 1
        if reason:
            self.reasons[reason] += 1
        else:
            self.samples += 1
        self.finished.append((done_at if done_at is not None else time.time()) - self.wall0)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            print(self.line(), file=sys.stderr, flush=True)

    def forget(self, done_at: list[float]) -> None:
        """Un-count rows that were dropped (their shard is processed again after a lost node)."""
        if not done_at:
            return
        drop = Counter(t - self.wall0 for t in done_at)
        kept = array("d")
        for t in self.finished:
            if drop[t] > 0:
                drop[t] -= 1
            else:
                kept.append(t)
        self.finished = kept
        self.done -= len(done_at)

    def timeline(self, max_points: int = 1000) -> list[list[float]]:
        """``[t, n]`` points: ``n`` inputs were finished ``t`` seconds after the start; starts at [0, 0]."""
        times = sorted(self.finished)
        if not times:
            return [[0.0, 0]]
        counts = sorted({round(k * len(times) / max_points) for k in range(1, max_points + 1)})
        return [[0.0, 0], *([round(max(times[n - 1], 0.0), 3), n] for n in counts if n > 0)]

    @property
    def rate(self) -> float:
        """Images/s since the first image was finished: the start-up (Ray, loading the models) is not counted.

        0 until two images are done (one finish time gives no rate).
        """
        if self.done < 2 or not self.finished:
            return 0.0
        first = min(self.finished) + self.wall0
        return (self.done - 1) / max(time.time() - first, 1e-9)

    def line(self) -> str:
        skips = ", ".join(f"{k} {v}" for k, v in self.reasons.most_common()) or "none"
        if self.done >= 2:
            speed = f"{self.rate:.2f} images/s"
        elif self.done:
            speed = f"first image after {min(self.finished):.0f} s of start-up"
        else:
            speed = "starting up"
        return (f"[olrd] {self.done}/{self.total} images, {self.samples} samples, "
                f"{sum(self.reasons.values())} skipped ({skips}), {speed}")


def _log(message: str) -> None:
    print(f"[olrd] {message}", file=sys.stderr, flush=True)


def preflight(cfg: OLRDConfig) -> list[InputItem]:
    """Check the settings a user can get wrong, reading only; returns the listing.

    Runs before Ray starts and before the output folder is created, so a mistake costs seconds
    and leaves nothing behind. Raises :class:`JobError` (one line naming the key) on the first one.
    """
    if not cfg.output:
        raise JobError("output is empty: give output=DIR")
    items = _check_input(cfg)
    _check_output_placement(cfg)
    if cfg.segmenter.backend == "coco_panoptic":
        _check_annotations(cfg, items)
    else:
        _check_local_model("segmenter.model", cfg.segmenter.model)
    _check_local_model("captioner.model", cfg.captioner.model)
    return items


def _check_input(cfg: OLRDConfig) -> list[InputItem]:
    """The listing; a missing input(_root), a file that is no list, or an empty listing is a JobError."""
    import fsspec

    if cfg.input_root:
        fs, root = fsspec.core.url_to_fs(cfg.input_root)
        if not fs.isdir(root):
            raise JobError(f"input_root={cfg.input_root!r} is not a directory: give the folder the list's paths "
                           "are relative to (Places365: data_256/ or data_large/), or leave it empty")
    try:
        items = list_inputs(cfg.input, cfg.samples_per_shard, cfg.input_root, cfg.limit)
    except InputError as exc:
        raise JobError(str(exc)) from None
    if not items:
        raise JobError(f"no images found in input={cfg.input!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return items


def _local_path(path: str) -> str | None:
    """The resolved local path of ``path``, or None for a URL (``s3://...``) other than ``file://``."""
    if "://" in path and not path.startswith("file://"):
        return None
    return os.path.realpath(os.path.expanduser(path.removeprefix("file://")))


def _check_output_placement(cfg: OLRDConfig) -> None:
    """The output may not be the input folder or inside it: its files would mix with the images.

    A rerun would list whatever image-like files a job or a user puts there (previews, exports)
    as inputs, changing the listing and with it every shard's fingerprint.
    """
    src, out = _local_path(cfg.input), _local_path(cfg.output)
    if src is None or out is None or not os.path.isdir(src):
        return
    if out == src or out.startswith(src.rstrip(os.sep) + os.sep):
        where = "is the input folder" if out == src else "is inside the input folder"
        raise JobError(f"output={cfg.output!r} {where} input={cfg.input!r}: choose an output directory outside it")


def _check_annotations(cfg: OLRDConfig, items: list[InputItem]) -> None:
    """segmenter.annotations parses, its PNG folder exists, and the inputs match its entries unambiguously."""
    import fsspec

    from magiceraser.datasets.coco_panoptic import AnnotationError, CocoPanopticAnnotations, match_inputs

    seg = cfg.segmenter
    fs, path = fsspec.core.url_to_fs(seg.annotations)
    if not fs.isfile(path):
        raise JobError(f"segmenter.annotations={seg.annotations!r} does not exist: give the COCO panoptic JSON "
                       "(e.g. panoptic_val2017.json)")
    try:
        ann = CocoPanopticAnnotations(seg.annotations, seg.png_dir or None)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise JobError(f"segmenter.annotations={seg.annotations!r} is not a usable COCO panoptic JSON ({what})") from None
    png_fs, png_dir = fsspec.core.url_to_fs(ann.png_dir)
    if not png_fs.isdir(png_dir):
        key = f"segmenter.png_dir={seg.png_dir!r}" if seg.png_dir else f"the PNG folder next to the JSON ({ann.png_dir})"
        raise JobError(f"{key} does not exist: set segmenter.png_dir to the folder of the panoptic PNGs")
    try:
        matched, missing = match_inputs(ann, [it.source for it in items])
    except AnnotationError as exc:
        raise JobError(f"segmenter.annotations: {exc}; name each image by its path relative to the input folder "
                       "in the JSON's file_name") from None
    if not matched:
        raise JobError(f"none of the {len(items)} inputs has an entry in segmenter.annotations={seg.annotations!r} "
                       f"(e.g. {items[0].source}; the JSON names e.g. {ann.file_names()[:1]}): is it the JSON of these images?")
    if missing:
        _log(f"{len(missing)} of {len(items)} inputs have no entry in {ann.json_path} (e.g. {missing[0]}): "
             "they will be skipped (no_annotation)")


def _looks_local(model: str) -> bool:
    """True when ``model`` can only be a local path, never a Hugging Face id (``name`` or ``owner/name``)."""
    parts = model.replace("\\", "/").split("/")
    return model.startswith(("/", "~", "file://")) or len(parts) > 2 or any(p in (".", "..", "") for p in parts)


def _check_local_model(key: str, model: str) -> None:
    """A model given as a local path must be a checkpoint folder (transformers and vLLM read its config.json)."""
    path = Path(os.path.expanduser(model.removeprefix("file://")))
    if not _looks_local(model) and not path.is_dir():
        return  # a Hugging Face id (transformers prefers a local folder of that name, checked like any other)
    if not path.is_dir():
        raise JobError(f"{key}={model!r} does not exist: give a local checkpoint folder or a Hugging Face id")
    if not (path / "config.json").is_file():
        raise JobError(f"{key}={model!r} has no config.json: point it at the checkpoint folder itself")


def prepare_output(out: str | Path | Folder) -> None:
    """Create the output folder and prove it writable with a temporary file (swept like any temporary).

    A read-only or foreign folder (EROFS, EACCES, a file in the way) is one line naming ``output=``,
    not a traceback from deep inside the lock or the first shard. On an object store no
    temporary object is written: the bucket must exist and be reachable (the lock, the first
    write, then proves the credentials may write).
    """
    folder = as_folder(out)
    if folder.remote:
        try:
            folder.ensure()
        except (OSError, ValueError) as exc:
            raise JobError(f"output={str(folder)!r} cannot be used ({_first_line(exc) or type(exc).__name__}): check the "
                           "bucket name, the credentials (AWS_* variables, storage_options) and the endpoint") from None
        return
    out = folder.path
    if out.exists() and not out.is_dir():
        raise JobError(f"output={str(out)!r} is a file: give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}write-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise JobError(f"output={str(out)!r} is not writable ({reason}): choose a directory this job can write to") from None


def run_olrd(cfg: OLRDConfig) -> dict[str, Any]:
    """Build (or finish) the shards of ``cfg.output``; returns the stats written to stats.json.

    Raises :class:`UserError` (one-line messages) before any expensive work: a setting
    :func:`preflight` refuses, an output that is not writable, locked by another job or holding
    another job's shards.
    """
    items = preflight(cfg)
    out = Folder(cfg.output, cfg.storage_options)
    prepare_output(out)
    # The lock comes first: a second job must not even sweep the running one's temporaries.
    lock = OutputLock(out, stale_after_s=cfg.lock_stale_s, log=_log)
    try:
        lock.acquire()
    except PermissionError as exc:
        raise JobError(f"output={str(out)!r} is not writable ({_first_line(exc) or 'permission denied'}): "
                       "choose a location these credentials may write to") from None
    try:
        return _run_locked(cfg, out, lock, items)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted_message(out, num_shards(len(items), cfg.samples_per_shard))) from None
    finally:
        lock.release()


def _interrupted_message(out: Folder, n_shards: int) -> str:
    """What Ctrl-C kept: every shard with its sidecar is complete (a rerun skips it)."""
    try:
        done = len(scan_sidecars(out, n_shards))
    except (OSError, ValueError):
        return f"interrupted; the complete shards in {out} are kept"
    return f"interrupted; {done} of {n_shards} shards are complete in {out} and kept"


def _run_locked(cfg: OLRDConfig, out: Folder, lock: OutputLock, items: list[InputItem]) -> dict[str, Any]:
    out.sweep_temporaries()  # leftovers of a killed writer (local folders; object stores hold none)
    job = job_fingerprint(cfg, items)
    has_job_file = check_job_file(out, job)
    n_shards = num_shards(len(items), cfg.samples_per_shard)
    sidecars = scan_sidecars(out, n_shards)
    check_sidecars(out, sidecars, job)
    if not has_job_file:
        write_job_file(out, job, cfg)
    build = shards_to_build(n_shards, sidecars, cfg.retry_failed)
    retried = [s for s in build if s in sidecars]
    build_set = set(build)
    todo = [it for it in items if it.shard in build_set]
    print(f"[olrd] {len(items)} inputs in {n_shards} shards; {n_shards - len(build)} shards already done"
          + (f", {len(retried)} rebuilt for their retryable skips (retry_failed=true)" if retried else "")
          + f", {len(todo)} inputs to process -> {out}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    driver: dict[str, Any] = {"timeline": [], "node_loss_retries": 0, "max_pending_rows": 0, "spilled_shards": 0,
                              "lost_actors_given_up": 0}
    if todo:
        started = _init_ray(cfg)
        try:
            with filtered_stderr():  # entered after Ray started its processes (quiet.py: a known C++ line)
                driver = _process(cfg, todo, out, job, sidecars, lock)
        finally:
            if started:
                import ray

                ray.shutdown()
    elapsed = time.monotonic() - t0
    ordered = [sidecars[s] for s in range(n_shards)]
    with writing(out.url("skipped.jsonl"), "the skip log"):
        write_skip_log(out, ordered)
    stats = {
        **summarize(ordered),
        "processed_this_run": len(todo),
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(len(todo) / elapsed, 3) if todo and elapsed > 0 else None,
        "segmenter": segmenter_id(cfg),
        "captioner": cfg.captioner.model,
        "version": __version__,
        "timeline": driver["timeline"],  # [seconds since the pipeline started, inputs done] (this run)
        "driver": {k: v for k, v in driver.items() if k != "timeline"},  # reruns after a lost node, pending rows
    }
    lock.check()
    with writing(out.url("stats.json"), "stats.json"):
        out.write_json("stats.json", stats)  # last: marks the output complete
    print(f"[olrd] done: {stats['samples']} samples, {stats['skipped']} skipped {stats['skip_reasons']} in "
          f"{n_shards} shards under {out}", file=sys.stderr, flush=True)
    if stats["retryable"]:
        print(_retry_hint(ordered), file=sys.stderr, flush=True)
    return stats


def _retry_hint(sidecars: list[dict[str, Any]]) -> str:
    """The end-of-run line about skips a rerun may turn into samples."""
    reasons = Counter(rec["reason"] for sc in sidecars for rec in retryable_skips(sc))
    shards = sum(1 for sc in sidecars if retryable_skips(sc))
    listed = ", ".join(f"{k} {v}" for k, v in reasons.most_common())
    return (f"[olrd] {sum(reasons.values())} skips in {shards} shards may succeed on a rerun ({listed}): "
            "rerun with retry_failed=true to rebuild exactly those shards")


def _process(cfg: OLRDConfig, todo: list[InputItem], out: str | Path | Folder, job: dict, sidecars: dict[int, dict],
             lock: OutputLock | None = None) -> dict[str, Any]:
    """Run the pipeline over ``todo``, writing each shard once all its inputs are back.

    Returns the driver's figures for stats.json: ``timeline``, ``node_loss_retries`` (reruns
    after a loss), ``max_pending_rows`` (most rows held in memory at once, at most
    ``max_open_shards * samples_per_shard``), ``spilled_shards`` and ``lost_actors_given_up``
    (actors lost with their node that no live node had room for: :mod:`node_loss`).

    A lost node (or actor, worker, object: :func:`is_cluster_fault`, or an actor given up by
    :class:`LostActorWatch`) does not end the command:
    the shards already written stay, the rows of unfinished shards are dropped, and the
    unfinished shards are planned again and run on what is left of the cluster, at most
    ``node_loss_retries`` times, each retry logged. Every shard's bytes depend only on its inputs,
    so the output equals an uninterrupted run's.
    """
    out = as_folder(out)
    progress = Progress(len(todo), cfg.progress_interval_s)
    written: set[int] = set()
    figures = {"max_pending_rows": 0, "spilled_shards": 0, "lost_actors_given_up": 0}
    attempt = 0
    while True:
        try:
            _run_attempt(cfg, todo, out, job, sidecars, lock, progress, written, attempt > 0, figures)
            break
        except Exception as exc:
            if not is_cluster_fault(exc) or attempt >= cfg.node_loss_retries:
                raise
            attempt += 1
            todo = [it for it in todo if it.shard not in written]
            _log(f"lost part of the cluster ({type(exc).__name__}: {_first_line(exc)}); {len(written)} shards written "
                 f"so far are kept; re-planning the {len({it.shard for it in todo})} unfinished shards ({len(todo)} "
                 f"inputs), retry {attempt} of {cfg.node_loss_retries} on the nodes still alive (actor pools from 1 actor up)")
            time.sleep(cfg.node_loss_settle_s)  # let Ray release the failed attempt's actors first
    print(progress.line(), file=sys.stderr, flush=True)
    return {"timeline": progress.timeline(), "node_loss_retries": attempt, **figures}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _run_attempt(cfg: OLRDConfig, todo: list[InputItem], out: Folder, job: dict, sidecars: dict[int, dict],
                 lock: OutputLock | None, progress: Progress, written: set[int], elastic: bool,
                 figures: dict[str, int]) -> None:
    """One pass of the pipeline over ``todo``; every completed shard is written and added to ``written``.

    On an exception the rows of unfinished shards are dropped (and their spill files removed):
    a rerun processes those shards from scratch.
    """
    from magiceraser.datasets.assembler import ShardAssembler

    expected = Counter(it.shard for it in todo)
    # Spill files next to the shards on a local output (swept with its temporaries); an object
    # store has no place for temporaries: a local temporary folder, removed when the pass ends.
    spill = out.path if not out.remote else Path(tempfile.mkdtemp(prefix="olrd-spill-"))
    assembler = ShardAssembler(spill, expected, cfg.max_open_shards)
    ds = build_dataset(cfg, todo, segmenter_id(cfg), elastic)
    watch = LostActorWatch(cfg.lost_actor_timeout_s, log=_log)  # a lost actor Ray would wait for forever
    try:
        with watch:
            # Whole blocks at a time (cheaper than iter_rows); each row is one input.
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                columns = list(batch)
                for values in zip(*(batch[c] for c in columns)):
                    row = dict(zip(columns, values))
                    progress.update(row["reason"], float(row["done_at"]))
                    rows = assembler.add(row)
                    if rows is not None:
                        _write(cfg, out, job, sidecars, lock, int(row["shard"]), rows)
                        written.add(int(row["shard"]))
    except BaseException:
        progress.forget(assembler.discard())
        raise
    finally:
        figures["max_pending_rows"] = max(figures["max_pending_rows"], assembler.max_pending_rows)
        figures["spilled_shards"] += assembler.spilled_shards
        figures["lost_actors_given_up"] += len(watch.given_up)
        if out.remote:
            shutil.rmtree(spill, ignore_errors=True)
    if assembler.open_shards():  # cannot happen unless a stage broke the one-row-per-input rule
        raise RuntimeError(f"shards {assembler.open_shards()} did not receive all their inputs")


def _write(cfg: OLRDConfig, out: Folder, job: dict, sidecars: dict[int, dict], lock: OutputLock | None, shard: int,
           rows: list[dict[str, Any]]) -> None:
    from magiceraser.datasets.stages import add_row

    result = ShardResult(shard=shard, inputs=len(rows))
    for r in rows:
        add_row(result, r, cfg.image_format)
    if lock is not None:
        lock.check()  # never write over the shards of a job that took our lock over
    with writing(out.url(f"{shard_name(shard)}.tar"), f"shard {shard}"):  # a full disk: one line, no partial shard
        sidecars[shard] = write_shard(out, result, job)
def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli_args import config_argparser, load_cli_config, user_error_exit

    parser = config_argparser("olrd", "Build OLRD training shards (segment, shift+blend, caption) on Ray.")
    args = parser.parse_args(argv)
    cfg = load_cli_config(OLRDConfig, args)
    try:
        run_olrd(cfg)
    except (Interrupted, KeyboardInterrupt) as exc:  # Ctrl-C: one line, what was kept and the command that continues
        kept = str(exc) if isinstance(exc, Interrupted) else f"interrupted; the complete shards in {cfg.output} are kept"
        again = "magiceraser olrd " + shlex.join(sys.argv[1:] if argv is None else argv)
        print(f"magiceraser olrd: {kept}; to continue: {again}", file=sys.stderr, flush=True)
        return INTERRUPTED_EXIT_CODE
    except (UserError, OSError) as exc:  # here too, not only in cli.main: tests and scripts call this main directly
        code = user_error_exit("olrd", exc, args)
        if code is None:
            raise
        return code
    return 0
