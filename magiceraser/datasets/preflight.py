"""Checks of ``magiceraser olrd`` before any work: every setting a user can get wrong, then the output.

:func:`preflight` reads only, before Ray starts and before anything is written: the input and
``input_root``, where the output lies (not in the input folder), the COCO panoptic annotations
and their PNG folder, and models given as local folders. :func:`prepare_output` then creates
the output and proves it writable. Each mistake is one :class:`JobError` line naming the key
(exit code 2), instead of a traceback or a failed actor after ``job.json`` was written.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from magiceraser.atomic import TMP_PREFIX
from magiceraser.datasets.config import OLRDConfig
from magiceraser.datasets.inputs import InputError, InputItem, list_inputs
from magiceraser.datasets.job_messages import JobError, first_line, log
from magiceraser.datasets.shards import as_folder
from magiceraser.imageio import IMAGE_SUFFIXES
from magiceraser.models.hub import is_hub_id
from magiceraser.storage import Folder


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
        raise JobError(f"no images found in input={cfg.input!r} (looked for {', '.join(IMAGE_SUFFIXES)})")
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
        log(f"{len(missing)} of {len(items)} inputs have no entry in {ann.json_path} (e.g. {missing[0]}): "
            "they will be skipped (no_annotation)")


def _check_local_model(key: str, model: str) -> None:
    """A model given as a local path must be a checkpoint folder (transformers and vLLM read its config.json)."""
    path = Path(os.path.expanduser(model.removeprefix("file://")))
    if is_hub_id(model) and not path.is_dir():
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
            raise JobError(f"output={str(folder)!r} cannot be used ({first_line(exc) or type(exc).__name__}): check the "
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

