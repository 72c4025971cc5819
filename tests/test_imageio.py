"""Decoding: every kind of odd input either becomes HxWx3 uint8 RGB or fails with a reason code."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from magiceraser.imageio import ImageDecodeError, decode_image, decode_mask, encode_image


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_rgb_roundtrip_png_exact():
    arr = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = decode_image(encode_image(arr, "png"))
    np.testing.assert_array_equal(out, arr)


def test_modes_become_rgb():
    gray = Image.fromarray(np.full((40, 40), 77, np.uint8), "L")
    assert decode_image(_png(gray))[0, 0].tolist() == [77, 77, 77]
    g16 = Image.fromarray(np.full((40, 40), 65535, np.uint16))
    assert g16.mode.startswith("I;16")
    assert decode_image(_png(g16))[0, 0].tolist() == [255, 255, 255]
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:20, :, 3] = 255  # top opaque red, bottom transparent -> white
    out = decode_image(_png(Image.fromarray(rgba, "RGBA")))
    assert out[0, 0].tolist() == [255, 0, 0] and out[39, 0].tolist() == [255, 255, 255]
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_png(cmyk, format="JPEG", quality=100))
    assert out.shape == (40, 40, 3) and out[20, 20, 0] > 200 and out[20, 20, 1] < 60


def test_exif_rotation_applied():
    arr = np.zeros((40, 60, 3), np.uint8)  # landscape
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = _png(img, format="JPEG", exif=exif.tobytes())
    assert decode_image(data).shape == (60, 40, 3)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"this is not an image at all" * 10, "not_an_image"),
    ],
)
def test_bad_bytes(data, reason):
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(data)
    assert exc.value.reason == reason


def test_truncated_and_tiny_and_bomb():
    arr = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    jpg = encode_image(arr, "jpg")
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(jpg[: len(jpg) // 2])
    assert exc.value.reason == "truncated"
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(encode_image(arr[:10, :10], "png"))
    assert exc.value.reason == "too_small"
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(encode_image(arr, "png"), max_pixels=100 * 100)
    assert exc.value.reason == "too_large"


def test_mask_threshold(tmp_path):
    m = np.array([[0, 127, 128, 255]], np.uint8)
    p = tmp_path / "m.png"
    Image.fromarray(m).save(p)
    assert decode_mask(p).tolist() == [[False, False, True, True]]


def _png_header(width: int, height: int) -> bytes:
    """A grayscale PNG claiming ``width`` x ``height`` with almost no pixel data (its header is all PIL checks)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_max_pixels_above_pils_own_limit_takes_effect(monkeypatch):
    """``max_pixels`` is the limit that applies, also above PIL's ~89.5 MP guard (which used to win)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's guard, scaled down: warns > 1000, errors > 2000
    arr = np.random.default_rng(2).integers(0, 256, (50, 60, 3), dtype=np.uint8)  # 3000 pixels
    np.testing.assert_array_equal(decode_image(encode_image(arr, "png"), max_pixels=3000), arr)
    with pytest.raises(ImageDecodeError, match="above the limit of 2999: raise max_pixels") as exc:
        decode_image(encode_image(arr, "png"), max_pixels=2999)
    assert exc.value.reason == "too_large"
    decode_image(encode_image(arr[:10, :10], "png"), max_pixels=100, min_side=1)
    assert Image.MAX_IMAGE_PIXELS == 3000  # raised for a larger max_pixels, never lowered for a smaller one


def test_max_pixels_above_89_megapixels_with_pils_real_limit(monkeypatch):
    """A 90 MP header (over PIL's default guard) passes the pixel checks when max_pixels allows it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    header = _png_header(10_000, 9_000)
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(header)  # default max_pixels: 64 MP
    assert exc.value.reason == "too_large"
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(header, max_pixels=100_000_000)
    assert exc.value.reason != "too_large", exc.value  # it got past both limits; its pixel data is missing


def test_mask_decode_errors_name_the_file_not_a_buffer(tmp_path):
    bad = tmp_path / "speckle_mask.png"
    bad.write_bytes(b"not a png at all" * 8)
    with pytest.raises(ImageDecodeError) as exc:
        decode_mask(bad)
    assert exc.value.reason == "not_an_image"
    assert str(bad) in str(exc.value) and "BytesIO" not in str(exc.value) and "0x" not in str(exc.value)
    with pytest.raises(ImageDecodeError) as exc:
        decode_mask(b"not a png at all" * 8)
    assert "BytesIO" not in str(exc.value)
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(bad)
    assert str(bad) in str(exc.value) and "BytesIO" not in str(exc.value)


@pytest.mark.parametrize("fmt, pil_format", [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("tiff", "TIFF")])
def test_encode_formats(fmt, pil_format):
    from magiceraser.imageio import format_for_suffix

    arr = np.random.default_rng(2).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    data = encode_image(arr, fmt)
    assert Image.open(io.BytesIO(data)).format == pil_format
    if fmt != "jpg":  # lossless formats keep every pixel
        np.testing.assert_array_equal(decode_image(data), arr)
    assert format_for_suffix("." + fmt.upper()) in (fmt, "jpg")
    assert format_for_suffix(".gif") is None
