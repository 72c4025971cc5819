"""A corpus of awkward input files: name -> (bytes, expected skip reason or '' for usable)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h: int = 96, w: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 2 % 256, yy * 2 % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)


def _png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (a decompression bomb never needs its pixels stored)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def corpus() -> dict[str, tuple[bytes, str]]:
    rgb = _rgb()
    good_jpg = _save(Image.fromarray(rgb), "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    gray16 = (np.linspace(0, 65535, 96 * 128).reshape(96, 128)).astype(np.uint16)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    return {
        "empty.jpg": (b"", "empty_file"),
        "truncated.jpg": (good_jpg[: len(good_jpg) // 2], "truncated"),
        "text.jpg": (b"this is not an image at all\n" * 20, "not_an_image"),
        "tiny.png": (_save(Image.fromarray(_rgb(16, 16)), "PNG"), "too_small"),
        "bomb.png": (_png_claiming_size(30000, 30000), "too_large"),
        "cmyk.jpg": (_save(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95), ""),
        "gray16.png": (_save(Image.fromarray(gray16), "PNG"), ""),
        "gray.png": (_save(Image.fromarray(rgb[..., 0]), "PNG"), ""),
        "rgba.png": (_save(Image.fromarray(rgba, "RGBA"), "PNG"), ""),
        "exif_rotated.jpg": (_save(Image.fromarray(rgb), "JPEG", quality=95, exif=exif), ""),
    }
