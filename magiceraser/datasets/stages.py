"""The OLRD stages as batch transforms over column dicts (what Ray Data's ``map_batches`` passes).

Every input row travels through every stage and comes out as exactly one row: a sample, or a
skip with ``reason``/``stage``/``message`` set (later stages pass skipped rows through untouched).
That one-in/one-out rule lets the writer know when a shard is complete. All columns exist from
the first stage on, so every block has the same schema:

    source, key, index, shard                  the input (inputs.InputItem)
    reason, stage, message                     skip record ('' while the row is alive)
    image, height, width                       decoded I as raw HxWx3 uint8 bytes (read -> caption)
    segmap, segments                           panoptic result (segment -> compose)
    original, blended, mask, meta, question    encoded sample parts (compose -> writer)
    caption                                    (caption -> writer)
    done_at                                    wall-clock time the caption stage finished the row

The classes hold a model and are used as Ray actors; plain Python can call them too (the
single-process baseline of the benchmark does).
"""

from __future__ import annotations

import json
import time
import traceback
from typing import Any

import numpy as np

from magiceraser import __version__
from magiceraser.panoptic import PanopticResult, Segment

Batch = dict[str, np.ndarray]

COLUMNS = (
    "source", "key", "index", "shard", "reason", "stage", "message", "image", "height", "width",
    "segmap", "segments", "original", "blended", "mask", "meta", "question", "caption",
)
_EMPTY: dict[str, Any] = {
    "reason": "", "stage": "", "message": "", "image": b"", "height": 0, "width": 0, "segmap": b"",
    "segments": "", "original": b"", "blended": b"", "mask": b"", "meta": "", "question": "", "caption": "",
}
# What the shard writer reads: the caption stage (the last one) returns only these.
# ``done_at`` is the wall-clock time the caption stage finished the row (the job's timeline).
OUTPUT_COLUMNS = ("source", "key", "index", "shard", "reason", "stage", "message", "original", "blended", "mask", "meta",
                  "done_at")


def initial_rows(items) -> list[dict[str, Any]]:
    """Rows of the job's input dataset: the items plus every later column, empty."""
    return [{"source": it.source, "key": it.key, "index": it.index, "shard": it.shard, **_EMPTY} for it in items]


def _n(batch: Batch) -> int:
    return len(batch["key"])


def _alive(batch: Batch) -> list[int]:
    return [i for i in range(_n(batch)) if not batch["reason"][i]]


def _mutable(batch: Batch) -> Batch:
    """The batch as lists we can assign into, with every column of :data:`COLUMNS`.

    Ray hands read-only (zero-copy) arrays. The job's input blocks carry only the listing
    (source, key, index, shard: compact in the driver); the empty columns are added here.
    """
    n = _n(batch)
    out = {k: list(v) for k, v in batch.items()}
    for k, v in _EMPTY.items():
        out.setdefault(k, [v] * n)
    return out


def _batch_or_each(fn: Any, *columns: list[Any]) -> list[Any]:
    """``fn(*columns)`` on the whole batch; if it raises, item by item, each failure kept as its exception.

    One bad image must not lose the batch: the per-item retry finds it so it alone is skipped.
    """
    try:
        return list(fn(*columns))
    except Exception:
        results: list[Any] = []
        for items in zip(*columns):
            try:
                results.extend(fn(*[[x] for x in items]))
            except Exception as exc:  # noqa: BLE001 - recorded as the item's skip reason
                results.append(exc)
        return results


def _skip(batch: Batch, i: int, reason: str, stage: str, message: str) -> None:
    batch["reason"][i], batch["stage"][i], batch["message"][i] = reason, stage, message[:500]
    for col in ("image", "segmap", "original", "blended", "mask"):
        batch[col][i] = b""


def _finish(batch: Batch, columns: tuple[str, ...] = COLUMNS) -> Batch:
    out = {}
    for k in columns:
        v = batch[k]
        if k in ("index", "shard", "height", "width"):
            out[k] = np.asarray(v, dtype=np.int64)
        elif k == "done_at":
            out[k] = np.asarray(v, dtype=np.float64)
        else:
            arr = np.empty(len(v), dtype=object)
            arr[:] = v
            out[k] = arr
    return out


def image_of(batch: Batch, i: int) -> np.ndarray:
    h, w = int(batch["height"][i]), int(batch["width"][i])
    return np.frombuffer(batch["image"][i], dtype=np.uint8).reshape(h, w, 3)


def pan_of(batch: Batch, i: int) -> PanopticResult:
    h, w = int(batch["height"][i]), int(batch["width"][i])
    seg = np.frombuffer(batch["segmap"][i], dtype=np.int32).reshape(h, w)
    segments = [Segment(id=s[0], label=s[1], area=s[2], score=s[3]) for s in json.loads(batch["segments"][i])]
    return PanopticResult(seg, segments)


def read_images(batch: Batch, min_side: int = 64, max_pixels: int = 64_000_000) -> Batch:
    """Read each source (fsspec) and decode it to RGB; failures become skips with the decoder's reason."""
    import fsspec

    from magiceraser.imageio import ImageDecodeError, decode_image

    batch = _mutable(batch)
    for i in _alive(batch):
        source = batch["source"][i]
        try:
            with fsspec.open(source, "rb") as fh:
                data = fh.read()
        except (OSError, ValueError) as exc:
            _skip(batch, i, "unreadable", "read", f"cannot read {source}: {exc}")
            continue
        try:
            image = decode_image(data, max_pixels=max_pixels, min_side=min_side)
        except ImageDecodeError as exc:
            _skip(batch, i, exc.reason, "read", str(exc))
            continue
        batch["image"][i] = image.tobytes()
        batch["height"][i], batch["width"][i] = image.shape[:2]
    return _finish(batch)


def _pack_pan(batch: Batch, i: int, pan: PanopticResult) -> None:
    batch["segmap"][i] = np.ascontiguousarray(pan.segment_map, dtype=np.int32).tobytes()
    batch["segments"][i] = json.dumps([[s.id, s.label, s.area, round(s.score, 6)] for s in pan.segments])


class SegmentStage:
    """Panoptic segmentation of a batch (Mask2Former or COCO panoptic ground truth).

    With ``read`` and ``compose`` (keyword arguments of :func:`read_images` and
    :func:`compose_batch`) the actor also decodes its inputs first and composes the samples
    after: the fused layout, where no decoded pixels or panoptic maps cross the object store.
    """

    def __init__(self, segmenter: dict[str, Any], read: dict[str, Any] | None = None,
                 compose: dict[str, Any] | None = None):
        if (read is None) != (compose is None):
            raise ValueError("SegmentStage: give both read and compose (fused layout) or neither")
        self.read, self.compose = read, compose
        cfg = dict(segmenter)
        self.backend = cfg["backend"]
        if self.backend == "coco_panoptic":
            from magiceraser.datasets.coco_panoptic import CocoPanopticAnnotations

            self.model = CocoPanopticAnnotations(cfg["annotations"], cfg.get("png_dir") or None)
        else:
            from magiceraser.models.segmenter import Mask2FormerSegmenter

            self.model = Mask2FormerSegmenter(
                cfg["model"], device=cfg.get("device", "auto"), dtype=cfg.get("dtype", "auto"),
                batch_size=cfg.get("batch_size", 8), threshold=cfg.get("threshold", 0.5),
                mask_threshold=cfg.get("mask_threshold", 0.5),
                overlap_mask_area_threshold=cfg.get("overlap_mask_area_threshold", 0.8),
                fuse_stuff=cfg.get("fuse_stuff", True),
            )
        self.model_id = self.model.model_id

    def __call__(self, batch: Batch) -> Batch:
        if self.read is None:
            return self.segment(batch)
        batch = read_images(batch, **self.read)
        return compose_batch(self.segment(batch), **self.compose)

    def segment(self, batch: Batch) -> Batch:
        from magiceraser.datasets.coco_panoptic import AnnotationError

        batch = _mutable(batch)
        alive = _alive(batch)
        if self.backend == "coco_panoptic":
            for i in alive:
                try:
                    pan = self.model.lookup(batch["source"][i])
                except AnnotationError as exc:
                    _skip(batch, i, exc.reason, "segment", str(exc))
                    continue
                if pan.shape != (batch["height"][i], batch["width"][i]):
                    _skip(batch, i, "annotation_size_mismatch", "segment",
                          f"panoptic PNG is {pan.shape[::-1]}, image is {(batch['width'][i], batch['height'][i])}")
                    continue
                _pack_pan(batch, i, pan)
            return _finish(batch)
        pans = _batch_or_each(self.model.segment, [image_of(batch, i) for i in alive])
        for i, pan in zip(alive, pans):
            if isinstance(pan, Exception):
                _skip(batch, i, "segment_error", "segment", "".join(traceback.format_exception_only(pan)).strip())
            else:
                _pack_pan(batch, i, pan)
        return _finish(batch)


def compose_batch(
    batch: Batch, compose: dict[str, Any], seed: int, image_format: str, jpeg_quality: int, segmenter_id: str, max_tags: int
) -> Batch:
    """Compose, blend and encode each alive row (pure CPU work: a Ray task)."""
    from magiceraser.config import build_config
    from magiceraser.datasets.compose import ComposeConfig, ComposeSkip, rng_for
    from magiceraser.datasets.compose import compose as compose_sample
    from magiceraser.imageio import encode_image
    from magiceraser.prompts import caption_question

    cfg = build_config(ComposeConfig, compose)
    batch = _mutable(batch)
    for i in _alive(batch):
        image, pan = image_of(batch, i), pan_of(batch, i)
        key = batch["key"][i]
        try:
            out = compose_sample(image, pan, rng_for(key, seed), cfg)
        except ComposeSkip as exc:
            _skip(batch, i, exc.reason, "compose", str(exc))
            continue
        h, w = image.shape[:2]
        question = caption_question(out.tags, max_tags)
        meta = {
            "key": key,
            "source": batch["source"][i],
            "width": w,
            "height": h,
            "object_class": out.object_class,
            "object_label": out.object_label,
            "object_bbox": list(out.object_bbox),
            "offset": list(out.offset),
            "target_bbox": list(out.target_bbox),
            "tags": out.tags,
            "caption_prompt": question,
            "seed": seed,
            "segmenter": segmenter_id,
            "version": __version__,
        }
        batch["original"][i] = encode_image(image, image_format, jpeg_quality)
        batch["blended"][i] = encode_image(out.blended, image_format, jpeg_quality)
        batch["mask"][i] = encode_image(out.mask.astype(np.uint8) * 255, "png")
        batch["meta"][i] = json.dumps(meta)
        batch["question"][i] = question
        batch["segmap"][i] = b""  # not needed downstream: keep the object store light
    return _finish(batch)


class CaptionStage:
    """Caption the ORIGINAL image I of each alive row, asking about its background tags."""

    def __init__(self, captioner: dict[str, Any]):
        from magiceraser.config import build_config
        from magiceraser.datasets.config import CaptionerConfig
        from magiceraser.models.captioner import build_captioner

        self.model = build_captioner(build_config(CaptionerConfig, captioner))
        self.model_id = self.model.model_id

    def __call__(self, batch: Batch) -> Batch:
        batch = _mutable(batch)
        alive = _alive(batch)
        if alive:
            images = [image_of(batch, i) for i in alive]
            questions = [batch["question"][i] for i in alive]
            captions = _batch_or_each(self.model.caption, images, questions)
            for i, cap in zip(alive, captions):
                if isinstance(cap, Exception):
                    _skip(batch, i, "caption_error", "caption", "".join(traceback.format_exception_only(cap)).strip())
                else:
                    batch["caption"][i] = cap
        batch["meta"] = [_with_caption(m, c, self.model_id) if m else "" for m, c in zip(batch["meta"], batch["caption"])]
        batch["done_at"] = [time.time()] * _n(batch)
        return _finish(batch, OUTPUT_COLUMNS)  # the writer needs only the encoded parts


class OnePoolStage:
    """Every stage in one actor (the ``one_pool`` layout): decode, segment, compose, caption.

    Nothing but the encoded outputs crosses the object store and no stage queues work for the
    next, so memory does not depend on how far one stage runs ahead of another.
    """

    def __init__(self, segmenter: dict[str, Any], read: dict[str, Any], compose: dict[str, Any],
                 captioner: dict[str, Any]):
        self.segment = SegmentStage(segmenter, read=read, compose=compose)
        self.caption = CaptionStage(captioner)

    def __call__(self, batch: Batch) -> Batch:
        return self.caption(self.segment(batch))


def _with_caption(meta: str, caption: str, captioner: str) -> str:
    d = json.loads(meta)
    d["caption"] = caption
    d["captioner"] = captioner
    return json.dumps(d)


def row_to_sample_files(row: dict[str, Any], image_format: str) -> dict[str, bytes]:
    """The WebDataset files of one finished row (json keys sorted for stable bytes)."""
    meta = json.loads(row["meta"])
    return {
        f"original.{image_format}": bytes(row["original"]),
        f"blended.{image_format}": bytes(row["blended"]),
        "mask.png": bytes(row["mask"]),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }


def add_row(result, row: dict[str, Any], image_format: str) -> None:
    """Record one finished row in its :class:`~magiceraser.datasets.shards.ShardResult`: a skip with its reason, or a sample."""
    from magiceraser.datasets.shards import Sample, Skip

    if row["reason"]:
        result.skips.append(Skip(row["source"], row["key"], row["reason"], row["stage"], row["message"]))
    else:
        result.samples.append(Sample(row["key"], row_to_sample_files(row, image_format)))
