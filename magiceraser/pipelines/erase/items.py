"""One image of ``magiceraser erase``: decode it with its mask, erase it with the config's settings, write it.

Shared by the single-image and the directory modes (``single.py``, ``batch_run.py``). A file
that cannot be used raises :class:`SkipItem` with a stable reason code for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from magiceraser.pipelines.erase.batch import Pair
from magiceraser.pipelines.erase.classes import NoClassFound, select_classes
from magiceraser.pipelines.erase.config import EraseConfig
from magiceraser.pipelines.erase.settings import settings_of

__all__ = ["SkipItem", "decode_pair", "decode_classes", "erase_one", "mask_fields", "region_notes", "region_warning",
           "write_image"]


class SkipItem(Exception):
    """An input that cannot be erased, with a stable reason code for the report."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


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
    return pipe(image, mask, settings=settings_of(cfg), pan=pan)


def mask_fields(pair: Pair) -> dict[str, Any]:
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
