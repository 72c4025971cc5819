"""``magiceraser preview SHARD --out PNG``: a picture of what an OLRD shard holds.

One row per sample: the original I, the blended input Ĩ, Ĩ with the outline of m̃ drawn in red,
and a text panel with the object class, offset, background tags, caption prompt and caption.
The shard is read through ``magiceraser.olrd_samples.read_tar_samples``, the reader the trainer
and the evaluation use, and its members decoded with ``magiceraser.imageio``. ``decode_olrd`` is
not used on purpose: it refuses samples (an empty mask, a missing ``json``) that a preview, the
tool for looking at a suspicious shard, should still draw.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from magiceraser.imaging import image_grid

PANEL = 256  # each image is scaled to this height


def mask_outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of the mask's boundary band (inside edge), ``width`` px thick."""
    import cv2

    m = mask.astype(np.uint8)
    eroded = cv2.erode(m, np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    return (m > 0) & (eroded == 0)


def _fit(img: np.ndarray, h: int) -> np.ndarray:
    import cv2

    w = max(1, round(img.shape[1] * h / img.shape[0]))
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def _text_panel(lines: list[str], h: int, w: int = 360) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    panel = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    y = 4
    for line in lines:
        for part in textwrap.wrap(line, width=54) or [""]:
            if y > h - 12:
                return np.asarray(panel)
            draw.text((6, y), part, fill=(0, 0, 0), font=font)
            y += 12
    return np.asarray(panel)


def _member(sample: dict, name: str):
    """The member ``name`` (or the first whose name starts with it, for ``original.``/``blended.``)."""
    for key, value in sample.items():
        if key == name or (name.endswith(".") and key.startswith(name)):
            return value
    raise ValueError(f"sample {sample.get('__key__')!r} has no {name}{'*' if name.endswith('.') else ''} member")


def render_sample(sample: dict, height: int = PANEL) -> np.ndarray:
    """One row of the grid for a decoded sample (keys original.*, blended.*, mask.png, json)."""
    original, blended = _member(sample, "original."), _member(sample, "blended.")
    mask = _member(sample, "mask.png")
    mask = (mask[..., 0] if mask.ndim == 3 else mask) > 127
    meta = _member(sample, "json")
    small_blended = _fit(blended, height)
    # Draw the outline at panel size: drawn at full size, area downscaling would blur it away.
    small_mask = _fit(mask.astype(np.uint8) * 255, height) > 127
    outlined = small_blended.copy()
    outlined[mask_outline(small_mask, width=2)] = (255, 0, 0)
    images = [_fit(original, height), small_blended, outlined]
    text = [
        f"key: {sample['__key__']}",
        f"object: {meta.get('object_class')}  bbox {meta.get('object_bbox')}",
        f"offset: {meta.get('offset')}  -> {meta.get('target_bbox')}",
        f"tags: {', '.join(meta.get('tags', []))}",
        f"prompt: {meta.get('caption_prompt', '')}",
        f"caption: {meta.get('caption', '')}",
        "columns: I | blended | mask outline",
    ]
    return image_grid([[*images, _text_panel(text, height)]], gap=4)


def decode_sample(sample: dict) -> dict:
    """A tar sample of bytes -> what :func:`render_sample` draws: images as HxWx3 uint8 RGB, the
    mask as HxW uint8 0/255, ``json`` parsed. Images of any size are drawn (``min_side=1``)."""
    from magiceraser.imageio import decode_image, decode_mask

    out: dict = {"__key__": sample["__key__"]}
    for name, data in sample.items():
        if name.startswith(("original.", "blended.")):
            out[name] = decode_image(data, min_side=1)
        elif name == "mask.png":
            out[name] = decode_mask(data).astype(np.uint8) * 255
        elif name == "json":
            out[name] = json.loads(data)
    return out


def render_shard(shard: str | Path, max_samples: int = 8, height: int = PANEL) -> np.ndarray:
    """The grid image (HxWx3 uint8) of the first ``max_samples`` samples of a shard."""
    from magiceraser.olrd_samples import read_tar_samples

    rows = []
    for sample in read_tar_samples([str(shard)], strict=True):
        rows.append(render_sample(decode_sample(sample), height))
        if len(rows) >= max_samples:
            break
    if not rows:
        raise ValueError(f"{shard} holds no samples (every input of this shard was skipped; see its sidecar .json)")
    grid = image_grid([[r] for r in rows], row_gap=6)
    return np.pad(grid, ((0, 6), (0, 0), (0, 0)), constant_values=255)  # the last row keeps its gap too


def main(argv: Sequence[str] | None = None) -> int:
    """Mistakes (no such file, not a shard, an --out that names no image format) are one line, exit 2."""
    import tarfile

    from magiceraser.atomic import atomic_write_bytes
    from magiceraser.cli_args import PlainTextHelpFormatter
    from magiceraser.errors import UserError
    from magiceraser.imageio import OUTPUT_FORMATS, encode_image, format_for_suffix
    from magiceraser.write_errors import writing

    parser = argparse.ArgumentParser(prog="magiceraser preview", description=__doc__.split("\n\n")[0],
                                     formatter_class=PlainTextHelpFormatter)
    parser.add_argument("shard", help="an olrd-NNNNNN.tar shard")
    parser.add_argument("--out", required=True, help=f"image file to write; its extension picks the format ({', '.join(OUTPUT_FORMATS)})")
    parser.add_argument("--max-samples", type=int, default=8, help="rows in the grid")
    parser.add_argument("--height", type=int, default=PANEL, help="height of each image in pixels")
    args = parser.parse_args(argv)
    shard, out = Path(args.shard), Path(args.out)
    fmt = format_for_suffix(out.suffix)
    if fmt is None:
        raise UserError(f"--out {out}: the preview is an image; give a file name ending in one of {', '.join(OUTPUT_FORMATS)}")
    if not shard.is_file():
        raise UserError(f"shard {shard} does not exist" if not shard.exists() else f"shard {shard} is not a file")
    if out.exists() and out.resolve() == shard.resolve():
        raise UserError(f"--out {out} is the shard itself: choose another file name")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    try:
        grid = render_shard(shard, args.max_samples, args.height)
    except (OSError, tarfile.TarError, ValueError, KeyError) as exc:  # a text file, a truncated tar, a foreign tar
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{shard} cannot be previewed: it is not a readable OLRD shard (a .tar that magiceraser olrd "
                        f"wrote): {reason}") from exc
    with writing(out, "the preview"):
        atomic_write_bytes(out, encode_image(grid, fmt))
    print(f"preview of {shard}: {out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
