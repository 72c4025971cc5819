"""The letterboxed pairs of a dataset under ``pairs/<dataset>/``: built once from its reader, then read back.

    pairs/<dataset>/<key>/{input,mask,target}.png, meta.json   one folder per pair (no target.png: the
                                                               benchmark has no ground truth for it)
    pairs/<dataset>/manifest.json                              written last: keys, skips, what they were built from
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from magiceraser.atomic import atomic_write_bytes, atomic_write_json
from magiceraser.evaluation.cache import changed_keys, pairs_deps
from magiceraser.evaluation.config import DatasetConfig
from magiceraser.evaluation.console import log
from magiceraser.evaluation.layout import MANIFEST, PAIR_FILES, PAIR_META
from magiceraser.evaluation.letterbox import letterbox_image, letterbox_mask
from magiceraser.evaluation.methods import load_segmenter
from magiceraser.evaluation.pairs import EvalPair, PairSkip
from magiceraser.imageio import decode_image, decode_mask, encode_image


def iter_source(ds: DatasetConfig) -> Iterator[EvalPair | PairSkip]:
    """The dataset's pairs at their own resolution (one reader module per kind in magiceraser.evaluation.pairs)."""
    if ds.kind == "realhm":
        from magiceraser.evaluation.pairs.realhm import iter_realhm

        it = iter_realhm(ds.path, ds.realhm_layout)
    elif ds.kind == "olrd_shards":
        from magiceraser.evaluation.pairs.olrd_shards import iter_olrd_shards

        it = iter_olrd_shards(ds.path)
    elif ds.kind == "rorem":
        from magiceraser.evaluation.pairs.rorem import iter_rorem

        it = iter_rorem(ds.path)
    elif ds.kind == "removalbench":
        from magiceraser.evaluation.pairs.removalbench import iter_removalbench

        it = iter_removalbench(ds.path)
    elif ds.kind == "folders":
        from magiceraser.evaluation.pairs.folders import iter_folders

        it = iter_folders(ds.path)
    elif ds.kind == "coco_panoptic":
        from magiceraser.evaluation.pairs.coco_panoptic import iter_coco_panoptic

        it = iter_coco_panoptic(ds.path, ds.panoptic_json, ds.panoptic_dir, ds.num_pairs, ds.seed, ds.min_long_side)
    else:
        from magiceraser.evaluation.pairs.openimages import iter_openimages

        seg = load_segmenter(ds.segmenter) if ds.segmenter else None
        it = iter_openimages(ds.path, ds.masks_csv, ds.masks_dir, ds.num_pairs, ds.seed, ds.min_long_side,
                             ds.class_descriptions or None, seg)
    produced = 0
    for item in it:
        if isinstance(item, EvalPair):
            if ds.num_pairs and produced >= ds.num_pairs:
                return
            if ds.min_long_side and max(item.image.shape[:2]) <= ds.min_long_side:
                continue
            produced += 1
        yield item


def materialise_pairs(ds: DatasetConfig, root: Path, size: int) -> tuple[list[str], list[dict]]:
    """Letterbox the dataset's pairs into ``root`` once; returns (keys, skip records).

    The manifest (written last) records what the pairs are built from (:func:`cache.pairs_deps`); a
    matching manifest means done. On a mismatch it is removed before rebuilding, so a rebuild killed
    half-way leaves no manifest that would vouch for a mix of old and new pairs.
    """
    manifest = root / MANIFEST
    wanted = pairs_deps(ds, size)
    if manifest.is_file():
        doc = json.loads(manifest.read_text())
        if doc.get("config") == wanted:
            return doc["keys"], doc["skipped"]
        log(f"{ds.name}: the pairs in {root} were built from something else "
            f"({changed_keys(doc.get('config') or {}, wanted)}); rebuilding them")
        manifest.unlink()
    keys: list[str] = []
    skipped: list[dict] = []
    t0 = time.time()
    for item in iter_source(ds):
        if isinstance(item, PairSkip):
            skipped.append({"dataset": ds.name, "key": item.key, "reason": item.reason, "detail": item.detail})
            continue
        key = item.key
        if key in keys:  # keys must be unique file names; disambiguate deterministically
            key = f"{key}_{len(keys)}"
        d = root / key
        image, geo = letterbox_image(item.image, size)
        mask = letterbox_mask(item.mask, size)
        if not mask.any():
            skipped.append({"dataset": ds.name, "key": key, "reason": "empty_mask", "detail": "mask vanished when scaled"})
            continue
        input_file, mask_file, target_file = (d / name for name in PAIR_FILES)
        atomic_write_bytes(input_file, encode_image(image, "png"))
        target_file.unlink(missing_ok=True)  # a rebuilt pair that lost its ground truth must not keep the old one
        if item.target is not None:
            atomic_write_bytes(target_file, encode_image(letterbox_image(item.target, size)[0], "png"))
        atomic_write_bytes(mask_file, encode_image(mask.astype(np.uint8) * 255, "png"))
        meta = {**item.meta, "source_size": [geo.src_height, geo.src_width], "content_size": [geo.height, geo.width]}
        atomic_write_json(d / PAIR_META, meta)
        keys.append(key)
    atomic_write_json(manifest, {"config": wanted, "keys": keys, "skipped": skipped})
    log(f"{ds.name}: {len(keys)} pairs ready ({len(skipped)} skipped) in {time.time() - t0:.1f} s")
    return keys, skipped


def load_pair(root: Path, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(input, mask, target) of a stored pair; target None when the pair has no ground truth."""
    input_file, mask_file, target_file = (root / key / name for name in PAIR_FILES)
    return decode_image(input_file), decode_mask(mask_file), decode_image(target_file) if target_file.is_file() else None


def load_meta(root: Path, key: str) -> dict:
    """The pair's metadata (source, object class, sizes) as the reader recorded it."""
    path = root / key / PAIR_META
    return json.loads(path.read_text()) if path.is_file() else {}


def object_class(meta: dict) -> str | None:
    """The removed object's class name from a pair's metadata, None when the source has none."""
    value = meta.get("object_class")
    return str(value) if value else None
