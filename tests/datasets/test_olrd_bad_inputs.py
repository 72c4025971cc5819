"""The bad-input corpus through the read stage: every file gets a reason or decodes correctly."""

from __future__ import annotations

import numpy as np

from magiceraser.datasets.inputs import make_items
from magiceraser.datasets.stages import image_of, initial_rows, read_images

from .bad_inputs import corpus


def test_bad_input_corpus_reasons_and_conversions(tmp_path):
    files = corpus()
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    names = sorted(files)
    rows = initial_rows(make_items([(str(tmp_path / n), n) for n in names], 100))
    batch = {k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}
    out = read_images(batch, min_side=32, max_pixels=64_000_000)
    reasons = dict(zip(names, out["reason"]))
    assert reasons == {n: files[n][1] for n in names}
    for i, n in enumerate(names):
        if reasons[n]:
            assert out["stage"][i] == "read" and out["message"][i] and out["image"][i] == b""
            continue
        img = image_of(out, i)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    got = {n: image_of(out, i) for i, n in enumerate(names) if not reasons[n]}
    assert got["exif_rotated.jpg"].shape == (128, 96, 3)  # EXIF orientation 6 applied: 96x128 -> 128x96
    assert got["cmyk.jpg"].shape == (96, 128, 3)
    g = got["gray.png"]
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    g16 = got["gray16.png"][..., 0].astype(int)
    assert g16.min() == 0 and g16.max() == 255  # full 16-bit range rescaled to 8 bits
    rgba = got["rgba.png"].astype(int)
    assert rgba.min() >= 127  # alpha 128 composited on white lifts every channel above half
