"""``magiceraser erase`` on folders: every image ends erased, skipped with a reason, or not done.

The report (``batch.py``) is written before the first item, after every erased item and at the
end; a rerun reuses the records whose inputs, settings and result are unchanged; Ctrl-C or
SIGTERM marks the rest interrupted (exit 130); a full or read-only output stops the batch in
one line (the items left are not done).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from magiceraser.pipelines.erase import items
from magiceraser.pipelines.erase.batch import (
    REPORT_NAME,
    BatchPlan,
    BatchReport,
    Pair,
    fingerprint,
    settings_key,
    sha256_file,
)
from magiceraser.pipelines.erase.config import EraseConfig
from magiceraser.pipelines.erase.items import (
    SkipItem,
    decode_classes,
    decode_pair,
    mask_fields,
    region_notes,
    region_warning,
    write_image,
)
from magiceraser.write_errors import WriteError, writing

__all__ = ["run_batch", "erase_item", "start_report", "sigterm_as_interrupt"]


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
    base: dict[str, Any] = mask_fields(pair)
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
        result = items.erase_one(pipe, cfg, image, mask, pan)
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
        rec = previous.get((pair.image.name, fingerprint(pair.image.read_bytes(), pair.mask_bytes(), settings)))
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
            report.set(pair.image, "not_done", **mask_fields(pair), reason="pending", message="not erased yet")
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
