"""OLRD-format shards for the evaluation tests, written with the stock webdataset writer."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image


def write_shard(path, samples):
    """OLRD-format shard written with the stock webdataset writer."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for key, blended, mask, original, meta in samples:
            rec = {"__key__": key, "json": json.dumps(meta).encode()}
            if blended is not None:
                rec["blended.jpg"] = encode(blended, "PNG")  # lossless content under the .jpg name is fine for PIL
            if mask is not None:
                rec["mask.png"] = encode(mask.astype(np.uint8) * 255, "PNG")
            rec["original.jpg"] = encode(original, "PNG")
            sink.write(rec)


def encode(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()
