"""``magiceraser preview`` on a shard written with the stock webdataset writer (no Ray job needed):
it reads through magiceraser.olrd_samples and still draws samples the trainer would refuse."""

from __future__ import annotations

import io
import json
import subprocess
import sys

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


def _magiceraser(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "magiceraser", *args], capture_output=True, text=True, cwd=str(cwd),
                          timeout=120)


def test_what_is_not_a_shard_and_an_out_that_is_no_image_are_one_line_each(tmp_path):
    """Before: a text file gave an OSError traceback (truncated header), and ``--out x.txt`` wrote a PNG into it."""
    import tarfile

    (tmp_path / "notes.txt").write_text("not a shard\n")
    with tarfile.open(tmp_path / "foreign.tar", "w") as tar:  # a tar of something else: no samples of OLRD's kind
        tar.add(tmp_path / "notes.txt", arcname="notes.txt")
    whole = tmp_path / "foreign.tar"
    (tmp_path / "cut.tar").write_bytes(whole.read_bytes()[:700])  # a shard cut short by a failed copy
    cases = [
        (["notes.txt", "--out", "p.png"], "notes.txt cannot be previewed: it is not a readable OLRD shard"),
        (["cut.tar", "--out", "p.png"], "cut.tar cannot be previewed"),
        (["foreign.tar", "--out", "p.png"], "foreign.tar cannot be previewed"),
        (["missing.tar", "--out", "p.png"], "shard missing.tar does not exist"),
        (["foreign.tar", "--out", "p.txt"], "--out p.txt: the preview is an image; give a file name ending in one of .png"),
        (["foreign.tar", "--out", "nowhere/p.png"], "--out nowhere/p.png: the folder nowhere does not exist"),
    ]
    for args, words in cases:
        proc = _magiceraser("preview", *args, cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr[-2000:])
        assert lines[0].startswith("magiceraser preview: ") and words in lines[0], (args, lines[0])
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "p.txt").exists()


def test_out_picks_the_format_by_its_extension(tmp_path):
    """``--out grid.jpg`` is a JPEG, as its name says (the PNG bytes went into any name before)."""
    import webdataset as wds
    from PIL import Image

    from magiceraser.datasets.preview import main

    img = np.random.default_rng(1).integers(0, 200, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 10:30] = 255
    with wds.TarWriter(str(tmp_path / "olrd-000000.tar")) as sink:
        sink.write({"__key__": "k0", "original.png": _png(img), "blended.png": _png(img), "mask.png": _png(mask),
                    "json": json.dumps({"object_class": "cat"}).encode()})
    for name, fmt in (("grid.jpg", "JPEG"), ("grid.webp", "WEBP"), ("grid.png", "PNG")):
        assert main([str(tmp_path / "olrd-000000.tar"), "--out", str(tmp_path / name), "--height", "32"]) == 0
        assert Image.open(tmp_path / name).format == fmt
