"""``magiceraser erase``: erase masked objects from one image or from directories of images and masks.

    magiceraser erase --image IMG --mask MASK --out OUT_DIR [--config FILE] [key=value ...]
    magiceraser erase --image IMG --mask MASK --out RESULT.{png,jpg,jpeg,webp,tif,tiff}
    magiceraser erase --image IMAGES_DIR --mask MASKS_DIR --out OUT_DIR     # matched by file stem
    magiceraser erase --image IMG_OR_DIR --classes person,car --out OUT     # masks from the segmenter

A single image writes ``result.png`` (plus ``input.png`` and ``mask.png`` unless save_inputs=false) and
``erase.json`` into OUT_DIR, or just the result when OUT names a file (its format follows the
extension). Directory mode writes ``{stem}.{output_format}`` per image (and, with save_inputs=true,
``inputs/{stem}.png`` and ``masks/{stem}.png``) and ``erase_report.json``:
every image ends erased, skipped with a reason (unreadable files, size mismatch, empty mask, no
matching mask, an exception while erasing) or not done (interrupted); a bad item never stops the
batch, the report is rewritten atomically as items finish, and a rerun reuses results whose
image, mask and settings are unchanged (see ``batch.py``). Masks are binarised at mask_threshold.
With ``--classes`` there are no mask files: each image's mask is every thing segment of those
classes found by the config's segmenter, grown by ``--class-dilation`` px (``classes.py``); the
report (or erase.json) records per image which segments were erased, and an image without any of
them is skipped with reason ``no_class_found``.

Everything that can be checked is checked before models load: paths exist and are readable, the
output is writable and is not (inside) an input, no two inputs share a stem, model folders exist.
A user error prints one line naming the flag, key or file and exits 2 (a single image in which
``--classes`` finds nothing too); exit 1 means some item of a batch failed or none was erased,
130 an interrupted batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from magiceraser.lock import OutputLock
from magiceraser.pipelines.erase import checks
from magiceraser.pipelines.erase.batch import (  # noqa: F401 - IMAGE_SUFFIXES re-exported for the old module's callers
    IMAGE_SUFFIXES,
    REPORT_NAME,
    BatchPlan,
    BatchReport,
    Pair,
    fingerprint,
    plan_batch,
    settings_key,
    sha256_file,
)
from magiceraser.pipelines.erase.checks import EraseUserError, SingleTarget
from magiceraser.pipelines.erase.classes import NoClassFound, select_classes
from magiceraser.pipelines.erase.config import EraseConfig
from magiceraser.pipelines.erase.settings import settings_of
from magiceraser.write_errors import WriteError, writing


def user_error(exc: BaseException) -> int:
    """Print a user's mistake as one line and return exit code 2 (the CLI's convention for config errors)."""
    print(f"magiceraser erase: {exc}", file=sys.stderr)
    return 2


class SkipItem(Exception):
    """An input that cannot be erased, with a stable reason code for the report."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def load_pipeline(cfg: EraseConfig):
    """The config's eraser (``build.eraser_from_config``), a load failure (bad folder, wrong files) turned into a user error."""
    from magiceraser.pipelines.erase.build import eraser_from_config

    try:
        return eraser_from_config(cfg)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        models = {"base_model": cfg.base_model, "segmenter": cfg.segmenter}
        if (offline := checks.hub_failure(exc, models)) is not None:
            raise offline from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EraseUserError(
            f"cannot load the models ({type(exc).__name__}: {first}); check base_model, trained_dir, segmenter and lama_path"
        ) from exc


def decode_pair(image_name: str, image_data: bytes, mask_name: str, mask_data: bytes, cfg: EraseConfig) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check an (image, mask) pair; SkipItem naming the file and a reason code when unusable."""
    from magiceraser.imageio import ImageDecodeError, decode_image, decode_mask
    from magiceraser.pipelines.erase.geometry import drop_small_regions
    from magiceraser.pipelines.erase.pipeline import prepare_inputs

    try:
        image = decode_image(image_data)
    except ImageDecodeError as exc:
        raise SkipItem(f"image_{exc.reason}", f"{image_name}: {exc}") from exc
    try:
        mask = decode_mask(mask_data, threshold=cfg.mask_threshold)
    except ImageDecodeError as exc:
        raise SkipItem(f"mask_{exc.reason}", f"{mask_name}: {exc}") from exc
    try:
        image, mask = prepare_inputs(image, mask, cfg.mask_threshold)
    except ValueError as exc:
        reason = "size_mismatch" if "same size" in str(exc) else "empty_mask" if "empty" in str(exc) else "bad_input"
        raise SkipItem(reason, f"{image_name}: {exc}") from exc
    kept, dropped = drop_small_regions(mask, cfg.min_region_area)
    if not kept.any():
        raise SkipItem("mask_too_small", (
            f"{mask_name}: every masked region is smaller than min_region_area={cfg.min_region_area} px "
            f"({dropped.count} region(s), {dropped.pixels} px); set min_region_area lower to erase them"
        ))
    return image, mask


def decode_classes(image_name: str, image_data: bytes, pipe, cfg: EraseConfig, classes: tuple[str, ...], dilation: int):
    """Decode an image and build its mask from ``classes``: (image, mask, full-image segmentation, erased segments)."""
    from magiceraser.imageio import ImageDecodeError, decode_image

    try:
        image = decode_image(image_data)
    except ImageDecodeError as exc:
        raise SkipItem(f"image_{exc.reason}", f"{image_name}: {exc}") from exc
    try:
        sel = select_classes(pipe.segmenter, image, classes, dilation)
    except NoClassFound as exc:
        raise SkipItem("no_class_found", f"{image_name}: {exc}") from exc
    return image, sel.mask, sel.pan, sel.segments


def erase_one(pipe, cfg: EraseConfig, image: np.ndarray, mask: np.ndarray, pan=None):
    """One pipeline call with the config's settings (``pan``: a full-image segmentation to use for the crops)."""
    return pipe(image, mask, settings_of(cfg), pan=pan)


def _mask_fields(pair: Pair) -> dict[str, Any]:
    """How a record names the mask: its file, or the classes it was built from."""
    return {"mask": str(pair.mask)} if pair.mask is not None else {"classes": list(pair.classes)}


def region_notes(result, cfg: EraseConfig) -> dict[str, int]:
    """What the mask's regions turned into: crops run, specks dropped, regions merged to respect max_regions."""
    return {
        "crops": len(result.regions), "mask_components": result.mask_components,
        "merged_for_cap": result.merged_for_cap, "dropped_regions": result.dropped_regions,
        "dropped_pixels": result.dropped_pixels,
    }


def region_warning(name: str, notes: dict[str, int], cfg: EraseConfig) -> str | None:
    """A line for the log when regions were dropped or merged (never silently)."""
    parts = []
    if notes["dropped_regions"]:
        parts.append(f"left {notes['dropped_regions']} mask region(s) of < {cfg.min_region_area} px "
                     f"({notes['dropped_pixels']} px) unerased (min_region_area)")
    if notes["merged_for_cap"]:
        parts.append(f"merged {notes['merged_for_cap']} region(s) into neighbouring crops to stay within "
                     f"max_regions={cfg.max_regions}")
    return f"{name}: {'; '.join(parts)}" if parts else None


def write_image(path: Path, arr: np.ndarray, fmt: str) -> bytes:
    """Atomically write ``arr`` in ``fmt`` (png, jpg, webp, tiff); returns the bytes written."""
    from magiceraser.atomic import atomic_write_bytes
    from magiceraser.imageio import encode_image

    data = encode_image(arr, fmt, quality=95)
    atomic_write_bytes(path, data)
    return data


# ---------------------------------------------------------------------------------------- single image
def run_single(pipe, cfg: EraseConfig, image_path: Path, mask_path: Path | None, target: SingleTarget,
               classes: tuple[str, ...] = (), class_dilation: int = 0) -> int:
    """Erase one image; an unusable input or no object of ``classes`` found is a user error (exit 2)."""
    pan, segments = None, None
    try:
        if mask_path is None:
            image, mask, pan, segments = decode_classes(str(image_path), image_path.read_bytes(), pipe, cfg, classes, class_dilation)
        else:
            image, mask = decode_pair(str(image_path), image_path.read_bytes(), str(mask_path), mask_path.read_bytes(), cfg)
    except SkipItem as exc:  # the user's to fix (another image, other classes): one line, exit 2
        return user_error(f"{exc}; nothing erased" if exc.reason == "no_class_found" else exc)
    t0 = time.time()
    result = erase_one(pipe, cfg, image, mask, pan)
    seconds = time.time() - t0
    notes = region_notes(result, cfg)
    if (line := region_warning(image_path.name, notes, cfg)) is not None:
        print(line, file=sys.stderr)
    if target.is_file:
        with writing(target.path, "the erased image"):
            write_image(target.path, result.image, target.fmt)
        print(f"wrote {target.path} ({seconds:.1f} s, prompt {result.prompt!r})")
        return 0
    out = target.path
    with writing(out, "the erased image"):
        out.mkdir(parents=True, exist_ok=True)
        write_image(out / "result.png", result.image, "png")
        if cfg.save_inputs is not False:  # null: yes for a single image
            write_image(out / "input.png", image, "png")
            write_image(out / "mask.png", mask.astype(np.uint8) * 255, "png")
    source = {"mask": str(mask_path)} if mask_path is not None else {"classes": list(classes), "segments": segments}
    with writing(out / "erase.json", "the erase record"):
        _write_record(out, image_path, source, seconds, result, notes)
    print(f"wrote {out / 'result.png'} ({seconds:.1f} s, prompt {result.prompt!r})")
    return 0


def _write_record(out: Path, image_path: Path, source: dict[str, Any], seconds: float, result, notes: dict[str, Any]) -> None:
    from magiceraser.atomic import atomic_write_json

    atomic_write_json(out / "erase.json", {
        "image": str(image_path), **source, "seconds": round(seconds, 3),
        "prompt": result.prompt, "tag": result.tag, **notes,
        "regions": [{"box": list(r.box), "model_shape": list(r.model_shape), "tag": r.tag, "prompt": r.prompt} for r in result.regions],
    })


# ---------------------------------------------------------------------------------------- directories
def _free_accelerator_memory() -> None:
    """After a failed item (a CUDA OOM, say) give cached blocks back so the next item has a chance."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def save_batch_inputs(pair: Pair, image: np.ndarray, mask: np.ndarray) -> dict[str, str]:
    """Directory mode with save_inputs=true: the decoded input and the erased mask as inputs/{stem}.png, masks/{stem}.png."""
    saved = {}
    for folder, arr, key in (("inputs", image, "input_saved"), ("masks", mask.astype(np.uint8) * 255, "mask_saved")):
        path = pair.out.parent / folder / f"{pair.image.stem}.png"
        path.parent.mkdir(exist_ok=True)
        write_image(path, arr, "png")
        saved[key] = str(path)
    return saved


def erase_item(pipe, cfg: EraseConfig, pair: Pair, settings: str) -> tuple[str, dict[str, Any]]:
    """Erase one pair and say how it ended: ("erased", record) or ("skipped", record); never raises an Exception.

    The fingerprint is taken from the very bytes that are decoded, so the record describes what was erased.
    """
    base: dict[str, Any] = _mask_fields(pair)
    try:
        image_data, mask_data = pair.image.read_bytes(), pair.mask_bytes()
    except OSError as exc:
        return "skipped", {**base, "reason": "unreadable", "error_type": type(exc).__name__,
                           "message": f"{exc.filename}: cannot read the file ({exc.strerror or exc})"}
    try:
        t0 = time.time()
        if pair.mask is None:
            image, mask, pan, segments = decode_classes(str(pair.image), image_data, pipe, cfg, pair.classes, pair.class_dilation)
            base["segments"] = segments
        else:
            image, mask = decode_pair(str(pair.image), image_data, str(pair.mask), mask_data, cfg)
            pan = None
        result = erase_one(pipe, cfg, image, mask, pan)
        with writing(pair.out, "an erased image"):
            data = write_image(pair.out, result.image, cfg.output_format)
            if cfg.save_inputs:  # null: not for a directory (its inputs are the --image/--mask folders)
                base.update(save_batch_inputs(pair, image, mask))
    except SkipItem as exc:
        return "skipped", {**base, "reason": exc.reason, "message": str(exc)}
    except WriteError:
        raise  # the output is full or read-only: every next item would fail alike, so the batch stops
    except Exception as exc:  # noqa: BLE001 - one failing item (OOM, I/O, a bug) must not stop the batch
        _free_accelerator_memory()
        return "skipped", {**base, "reason": "error", "error_type": type(exc).__name__, "message": f"{pair.image}: {exc}"}
    return "erased", {
        **base, "out": str(pair.out), "fingerprint": fingerprint(image_data, mask_data, settings),
        "out_sha256": hashlib.sha256(data).hexdigest(), "seconds": round(time.time() - t0, 3),
        "prompt": result.prompt, "tag": result.tag, **region_notes(result, cfg),
    }


def _reused(pair: Pair, previous: dict[tuple[str, str], dict[str, Any]], settings: str) -> dict[str, Any] | None:
    """The earlier record of ``pair`` if its inputs and settings are unchanged and its result file is intact."""
    try:
        rec = previous.get((str(pair.image), fingerprint(pair.image.read_bytes(), pair.mask_bytes(), settings)))
        if rec is None or rec.get("out") != str(pair.out) or not pair.out.is_file():
            return None
        return rec if sha256_file(pair.out) == rec.get("out_sha256") else None
    except OSError:
        return None  # unreadable now: erase_item records why


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (a scheduler's kill) like Ctrl-C, so the report still marks what was not done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def start_report(cfg: EraseConfig, plan: BatchPlan, out: Path) -> tuple[BatchReport, list[Pair]]:
    """The report as the run starts (reused results, images without masks, orphan masks, the rest pending) and what to erase."""
    settings = settings_key(cfg)
    previous = BatchReport.reusable(out / REPORT_NAME)
    report = BatchReport(out / REPORT_NAME, dataclasses.asdict(cfg), settings)
    todo = []
    for pair in plan.pairs:
        rec = _reused(pair, previous, settings)
        if rec is not None:
            report.set(pair.image, "erased", **{**{k: v for k, v in rec.items() if k not in ("image", "status")}, "reused": True})
        else:
            report.set(pair.image, "not_done", **_mask_fields(pair), reason="pending", message="not erased yet")
            todo.append(pair)
    for img in plan.no_mask:
        report.set(img, "skipped", reason="no_mask", message=f"{img}: no mask named {img.stem}.* in the --mask directory")
    report.orphan_masks = [
        {"mask": str(m), "reason": "no_image", "message": f"{m}: no image named {m.stem}.* in the --image directory"}
        for m in plan.orphan_masks
    ]
    return report, todo


def _erase_all(pipe, cfg: EraseConfig, report: BatchReport, todo: list[Pair]) -> None:
    """Erase ``todo`` in order, recording each item as it ends; the report on disk follows every erased item."""
    from tqdm import tqdm

    for pair in tqdm(todo, desc="erasing", unit="image"):
        status, rec = erase_item(pipe, cfg, pair, report.settings)
        report.set(pair.image, status, **rec)
        if status == "skipped":
            tqdm.write(f"skipped {pair.image.name}: {rec['message']}")
        elif (line := region_warning(pair.image.name, rec, cfg)) is not None:
            tqdm.write(line)
        report.write(force=status == "erased")  # erased work is never lost; skips are cheap to redo


def _announce(plan: BatchPlan, report: BatchReport, todo: list[Pair]) -> None:
    """Say up front what will not be erased because of the inputs, and what is reused."""
    if plan.orphan_masks:
        names = ", ".join(m.name for m in plan.orphan_masks[:5]) + (" ..." if len(plan.orphan_masks) > 5 else "")
        print(f"warning: {len(plan.orphan_masks)} mask(s) have no image and are not used: {names}", file=sys.stderr)
    if plan.no_mask:
        print(f"warning: {len(plan.no_mask)} image(s) have no mask and are skipped (listed in {report.path})", file=sys.stderr)
    if reused := len(plan.pairs) - len(todo):
        print(f"{reused} image(s) already erased with the same inputs and settings (reused; see {report.path})")


def run_batch(pipe, cfg: EraseConfig, plan: BatchPlan, out: Path) -> int:
    """Erase every pair of ``plan`` into ``out``; every item ends erased, skipped with a reason, or not done.

    Exit code: 0, or 1 when an item failed with an exception or nothing could be erased, 130 when
    interrupted (Ctrl-C, SIGTERM): the report then lists the items not done.
    """
    from magiceraser.atomic import remove_stale_temporaries

    report = None
    try:
        with sigterm_as_interrupt():
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(out)  # leftovers of a killed run's atomic writes
            report, todo = start_report(cfg, plan, out)
            report.write()
            _announce(plan, report, todo)
            _erase_all(pipe, cfg, report, todo)
    except KeyboardInterrupt:
        if report is None:
            print("interrupted before any image was erased", file=sys.stderr)
            return 130
        n = report.interrupt()
        report.write()
        print(f"interrupted: {n} image(s) not done (listed in {report.path}); rerun the same command to finish", file=sys.stderr)
        return 130
    except WriteError:
        if report is not None:  # the items left are not done; the report is updated if the storage still allows it
            report.interrupt()
            with contextlib.suppress(OSError):
                report.write()
        raise
    report.status = "complete"
    report.write()
    c = report.counts()
    print(f"erased {c['erased']} image(s) ({c['reused']} reused), skipped {c['skipped']} ({c['failed']} failed), "
          f"{c['orphan_masks']} orphan mask(s) (details in {report.path})")
    return 1 if c["failed"] or (c["skipped"] and not c["erased"]) else 0


# ---------------------------------------------------------------------------------------- entry point
def prepare(cfg: EraseConfig, image: Path, mask: Path | None, out: Path, classes: tuple[str, ...] = (),
            class_dilation: int = 0) -> SingleTarget | BatchPlan:
    """Every check that needs no model, in the order a user would fix them; EraseUserError on the first failure.

    ``mask`` None: the masks are built from ``classes`` (which then need the config's segmenter).
    """
    checks.check_input(image, "--image")
    if mask is None:
        if not cfg.segmenter:
            raise EraseUserError("--classes needs a segmenter: set segmenter= to a Mask2Former COCO panoptic checkpoint")
    else:
        checks.check_input(mask, "--mask")
        checks.check_inputs_pair(image, mask)
    if image.is_dir():
        checks.check_batch_out(out, image, mask if mask is not None else image)
        plan = plan_batch(image, mask, out, cfg.output_format, classes)
        if mask is None:
            plan.pairs = [dataclasses.replace(p, class_dilation=class_dilation) for p in plan.pairs]
        return plan
    target = checks.single_target(out)
    checks.check_single_outputs(target, image, mask if mask is not None else image, cfg.save_inputs is not False)
    return target


def parse_class_flags(mask: str | None, classes: str | None, class_dilation: int) -> tuple[str, ...]:
    """``--mask`` xor ``--classes``; the class names checked (EraseUserError naming the flag)."""
    from magiceraser.class_masks import parse_class_names

    if (mask is None) == (classes is None):
        raise EraseUserError("give either --mask (a mask file or folder) or --classes (e.g. --classes person,car), not both or neither")
    if class_dilation < 0:
        raise EraseUserError(f"--class-dilation must be >= 0, got {class_dilation}")
    if classes is None:
        return ()
    try:
        names = parse_class_names(classes)
    except ValueError as exc:
        raise EraseUserError(f"--classes: {exc}") from exc
    if not names:
        raise EraseUserError("--classes names no class; give e.g. --classes person,car")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli_args import config_argparser, load_cli_config

    parser = config_argparser("erase", __doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="image file, or a directory of images")
    parser.add_argument("--mask", default=None, help="mask file (white = erase), or a directory of masks named like the images")
    parser.add_argument("--classes", default=None, help="instead of --mask: erase every object of these COCO classes, e.g. person,car")
    parser.add_argument("--class-dilation", type=int, default=4, help="px the --classes mask is grown by (default 4)")
    parser.add_argument("--out", required=True, help="output directory, or a .png/.jpg/.webp/.tif file for a single image")
    args = parser.parse_args(argv)
    cfg = load_cli_config(EraseConfig, args)
    image, mask, out = Path(args.image), Path(args.mask) if args.mask is not None else None, Path(args.out)
    lock: OutputLock | None = None
    try:
        try:
            classes = parse_class_flags(args.mask, args.classes, args.class_dilation)
            job = prepare(cfg, image, mask, out, classes, args.class_dilation)
            checks.check_models(cfg)
            if not isinstance(job, SingleTarget):
                # One batch per output folder, refused before any model loads (LockHeld: one line, exit 2).
                with writing(out, "the batch's lock file"):
                    out.mkdir(parents=True, exist_ok=True)
                    lock = OutputLock(out)
                    lock.acquire()
            if cfg.num_threads:
                import torch

                torch.set_num_threads(cfg.num_threads)  # this command's process only, chosen by its config
            pipe = load_pipeline(cfg)
        except EraseUserError as exc:
            return user_error(exc)
        if isinstance(job, SingleTarget):
            return run_single(pipe, cfg, image, mask, job, classes, args.class_dilation)
        return run_batch(pipe, cfg, job, out)
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    raise SystemExit(main())
