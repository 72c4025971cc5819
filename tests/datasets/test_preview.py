"""``magiceraser preview`` on a shard written with the stock webdataset writer (no Ray job needed):
it reads through magiceraser.olrd_samples and still draws samples the trainer would refuse."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_preview_draws_every_sample_with_its_outline(tmp_path):
    import webdataset as wds

    from magiceraser.datasets.preview import main, render_shard
    from magiceraser.imageio import decode_image

    rng = np.random.default_rng(0)
    shard = tmp_path / "olrd-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i, (h, w) in enumerate([(60, 90), (20, 30)]):  # the second is below decode_image's default min side
            img = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
            mask = np.zeros((h, w), np.uint8)
            if i == 0:  # the second sample has an empty mask: decode_olrd refuses it, the preview shows it
                mask[15:45, 20:60] = 255
            sink.write({"__key__": f"k{i}", "original.jpg": _png(img), "blended.jpg": _png(img), "mask.png": _png(mask),
                        "json": json.dumps({"object_class": "cat", "tags": ["grass"]}).encode()})
    grid = render_shard(shard, height=64)
    assert grid.shape[0] == 2 * (64 + 6)
    red = (grid[..., 0] == 255) & (grid[..., 1] == 0) & (grid[..., 2] == 0)
    assert red[:64].sum() > 20 and red[70:].sum() == 0  # an outline on the first row only
    png = tmp_path / "preview.png"
    assert main([str(shard), "--out", str(png), "--height", "64", "--max-samples", "1"]) == 0
    assert decode_image(png, min_side=1).shape[0] == 64 + 6
