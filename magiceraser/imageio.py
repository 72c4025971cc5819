"""Decoding images and masks into the arrays the whole system uses, with explicit failure reasons.

Every image becomes HxWx3 uint8 RGB, EXIF orientation applied. Inputs that cannot be used raise
:class:`ImageDecodeError` whose ``reason`` is a short stable code (for skip records) and whose
message says what is wrong and what to do; given a path, the message starts with that path (never
with the repr of an in-memory buffer). :func:`encode_image` writes PNG, JPEG, WebP and TIFF; the
format of an output file follows its extension (:func:`format_for_suffix`).
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 64_000_000  # decompression-bomb guard (~8000x8000)
DEFAULT_MIN_SIDE = 32
MASK_THRESHOLD = 128  # a mask pixel >= 128 (of 0..255) is "erase"


_PIL_LIMIT_LOCK = threading.Lock()


def _allow_pixels(max_pixels: int) -> None:
    """Make ``max_pixels`` the limit that applies to a decode.

    PIL has a guard of its own (``Image.MAX_IMAGE_PIXELS``, about 89.5 MP: a warning above it,
    which the decoder turns into ``too_large``, and an error above twice that), so a larger
    ``max_pixels`` had no effect and "raise max_pixels" could not work. The guard is raised to
    ``max_pixels``, never lowered (it is process-wide and another caller may need more), under a
    lock; ``max_pixels`` itself is checked from the header before any pixel is decoded.
    """
    with _PIL_LIMIT_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


class ImageDecodeError(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _read_source(data: bytes | str | os.PathLike, what: str) -> tuple[bytes, str | None]:
    """(bytes, file name or None): read a path, naming it in the error, so every message says which file."""
    if isinstance(data, (str, os.PathLike)):
        try:
            return Path(data).read_bytes(), str(data)
        except OSError as exc:
            raise ImageDecodeError("unreadable", f"{data}: cannot read the {what} file ({exc.strerror or exc})") from exc
    return data, None


def _named(exc: ImageDecodeError, name: str | None) -> ImageDecodeError:
    """``exc`` with the file name in front of its message (unchanged for bytes input)."""
    return exc if name is None else ImageDecodeError(exc.reason, f"{name}: {exc}")


def _pil_message(exc: BaseException) -> str:
    """PIL's message without the in-memory buffer's repr (``<_io.BytesIO object at 0x...>`` tells a user nothing)."""
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc)).strip() or type(exc).__name__


def _open_mask(data: bytes) -> Image.Image:
    """Open and load mask bytes; ImageDecodeError with a reason code and a message without buffer reprs."""
    if len(data) == 0:
        raise ImageDecodeError("empty_file", "the mask file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError("not_an_image", "the mask is not a decodable image (wrong extension or corrupt header)") from exc
    except Exception as exc:
        raise ImageDecodeError(
            "not_an_image", f"the mask could not be decoded ({_pil_message(exc)}); the file is probably cut short or corrupt"
        ) from exc
    return img


def _to_uint8_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit (or 32-bit integer) grayscale: rescale the full range of its bit depth to 8 bits.
        hi = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(np.rint(arr * (255.0 / hi)), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr * 255.0 if arr.max(initial=0) <= 1.0 else arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite transparency on white rather than dropping alpha (black fringes otherwise).
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def decode_image(
    data: bytes | str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> np.ndarray:
    """Decode bytes or a file into HxWx3 uint8 RGB; raise ImageDecodeError with a reason code.

    Reasons: ``empty_file``, ``not_an_image``, ``truncated``, ``too_large``, ``too_small``, ``unreadable``.
    """
    data, name = _read_source(data, "image")
    try:
        return _decode_image_bytes(data, max_pixels, min_side)
    except ImageDecodeError as exc:
        raise _named(exc, name) from exc.__cause__


def _decode_image_bytes(data: bytes, max_pixels: int, min_side: int) -> np.ndarray:
    """:func:`decode_image` on bytes; messages never name the source (the caller adds the file name)."""
    if len(data) == 0:
        raise ImageDecodeError("empty_file", "the file is empty (0 bytes): re-download or remove it")
    _allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    "too_large", f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}: raise max_pixels or downscale it"
                )
            img.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError("too_large", f"image exceeds the decompression-bomb limit: {_pil_message(exc)}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError("not_an_image", "the file is not a decodable image (wrong extension or corrupt header)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        msg = _pil_message(exc)
        reason = "truncated" if "truncated" in msg.lower() or "premature" in msg.lower() else "unreadable"
        raise ImageDecodeError(reason, f"the image could not be decoded ({msg}); the file is probably cut short or corrupt") from exc
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise valid image
        pass
    arr = _to_uint8_rgb(img)
    h, w = arr.shape[:2]
    if min(h, w) < min_side:
        raise ImageDecodeError("too_small", f"image is {w}x{h}, smaller than {min_side} px on a side")
    return np.ascontiguousarray(arr)


def decode_mask(data: bytes | str | os.PathLike, threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """Decode a mask image to bool HxW: a pixel is masked where its gray value is >= ``threshold``.

    Colour masks are converted to gray first; an alpha channel, if present, is ignored.
    """
    data, name = _read_source(data, "mask")
    try:
        img = _open_mask(data)
    except ImageDecodeError as exc:
        raise _named(exc, name) from exc.__cause__
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
    else:
        arr = np.asarray(img.convert("L"), dtype=np.float64)
    return arr >= threshold


#: File suffixes read as images wherever a folder is listed (the data engine's input, the eraser's
#: folders, the evaluation's datasets), lower case, in the order a lookup by stem tries them.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# Output formats by file extension, as PIL writes them. WebP is written lossless and TIFF
# uncompressed, so like PNG they keep every pixel (the eraser leaves pixels outside the mask untouched).
OUTPUT_FORMATS: dict[str, str] = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff"}


def format_for_suffix(suffix: str) -> str | None:
    """The :func:`encode_image` format a file extension (``.webp``, case-insensitive) asks for; None if not writable."""
    return OUTPUT_FORMATS.get(suffix.lower())


def encode_image(arr: np.ndarray, fmt: str = "jpg", quality: int = 95) -> bytes:
    """Encode HxWx3 (or HxW) uint8 to JPEG, PNG, WebP (lossless) or TIFF bytes (deterministic for the same input)."""
    img = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    fmt = fmt.lower()
    if fmt in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    elif fmt == "webp":
        img.save(buf, format="WEBP", lossless=True)
    elif fmt in ("tif", "tiff"):
        img.save(buf, format="TIFF")
    else:
        raise ValueError(f"unknown image format {fmt!r}: use 'png', 'jpg', 'webp' or 'tiff'")
    return buf.getvalue()
