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
