"""``magiceraser erase`` on one image: ``result.png`` (or the --out file), the inputs and ``erase.json``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from magiceraser.pipelines.erase import items
from magiceraser.pipelines.erase.checks import EraseUserError, SingleTarget
from magiceraser.pipelines.erase.config import EraseConfig
from magiceraser.pipelines.erase.items import (
    SkipItem,
    decode_classes,
    decode_pair,
    region_notes,
    region_warning,
    write_image,
)
from magiceraser.write_errors import writing

__all__ = ["run_single"]


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
        raise EraseUserError(f"{exc}; nothing erased" if exc.reason == "no_class_found" else str(exc)) from None
    t0 = time.time()
    result = items.erase_one(pipe, cfg, image, mask, pan)
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
