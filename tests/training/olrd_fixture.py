"""Small OLRD shards written here with webdataset.TarWriter, following the shard sample contract.

Independent of the data engine's code: each sample is a smooth random background I, a square
"object" pasted at a shifted place (blended Ĩ), its mask m̃ (uint8 0/255) and the JSON fields the
contract names.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

TAGS = ["grass", "sky-other-merged", "gravel", "sand", "water-other"]


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=95)
    return buf.getvalue()


def make_sample(rng: np.random.Generator, width: int, height: int) -> dict:
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(40, 215, 3)
    slope = rng.uniform(-60, 60, (2, 3))
    original = np.clip(base + xx[..., None] * slope[0] + yy[..., None] * slope[1], 0, 255).astype(np.uint8)
    side = int(rng.integers(min(height, width) // 6, min(height, width) // 3))
    x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
    mask = np.zeros((height, width), np.uint8)
    mask[y0 : y0 + side, x0 : x0 + side] = 255
    blended = original.copy()
    blended[mask > 0] = rng.integers(0, 255, 3, dtype=np.uint8)
    tags = list(rng.choice(TAGS, size=2, replace=False))
    return dict(
        original=original,
        blended=blended,
        mask=mask,
        meta=dict(
            source="synthetic", width=width, height=height, object_class="box", object_bbox=[x0, y0, x0 + side, y0 + side],
            offset=[0, 0], target_bbox=[x0, y0, x0 + side, y0 + side], tags=tags,
            caption_prompt=f"Describe the {tags[0]} in the image.", caption=f"a smooth {tags[0]} background",
            seed=0, segmenter="test", captioner="test", version=1,
        ),
    )


def write_olrd_shards(
    out_dir: str | Path,
    num_shards: int = 2,
    per_shard: int = 4,
    size: tuple[int, int] = (96, 80),
    seed: int = 0,
    corrupt_keys: tuple[str, ...] = (),
    repeat_one: bool = False,
    prefix: str = "olrd",
) -> list[Path]:
    """Write ``num_shards`` shards ``{prefix}-000000.tar``...; keys in ``corrupt_keys`` get a broken JPEG.

    ``repeat_one``: every sample has the same content (distinct keys), for data-parallel equivalence tests.
    """
    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    first = None
    for s in range(num_shards):
        path = out / f"{prefix}-{s:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                key = f"s{s:03d}i{i:04d}"
                w, h = size
                sample = make_sample(rng, w, h) if not (repeat_one and first) else first
                first = first or sample
                original = _encode(sample["original"], "jpg")
                if key in corrupt_keys:
                    original = original[: len(original) // 3]
                sink.write(
                    {
                        "__key__": key,
                        "original.jpg": original,
                        "blended.jpg": _encode(sample["blended"], "jpg"),
                        "mask.png": _encode(sample["mask"], "png"),
                        "json": json.dumps(sample["meta"]).encode(),
                    }
                )
        paths.append(path)
    return paths
