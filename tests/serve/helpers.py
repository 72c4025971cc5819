"""What the service tests share: photos and PNG bytes, a free port, the app's overrides, starting and stopping it,
and a tiny Mask2Former that finds objects (see conftest.py)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np

from magiceraser import coco

SEGMENT_OVERRIDES = ["serve.segment_threshold=0", "serve.segment_mask_threshold=0", "serve.segment_overlap_threshold=0"]


def write_thing_segmenter(tiny_mask2former: Path, out: Path) -> Path:
    """A copy of the tiny Mask2Former whose queries are person or grass (see the module docstring)."""
    import torch
    from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

    model = Mask2FormerForUniversalSegmentation.from_pretrained(str(tiny_mask2former))
    head = model.class_predictor
    person, grass = coco.BY_NAME["person"].label, coco.BY_NAME["grass-merged"].label
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-20.0)
        head.weight[person, 0], head.weight[grass, 0] = 50.0, -50.0
        head.bias[person] = head.bias[grass] = 5.0
    model.save_pretrained(out)
    AutoImageProcessor.from_pretrained(str(tiny_mask2former)).save_pretrained(out)
    return out


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with noise (random pixels would be a pathological PNG and image)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    from magiceraser.imageio import encode_image

    return encode_image(arr, "png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_overrides(tiny_sd: Path, segmenter: Path | None, port: int, extra: list[str]) -> list[str]:
    """key=value overrides of configs/erase/demo.yaml for the tiny models written by the test session."""
    return [
        f"base_model={tiny_sd}", "trained_dir=null", f"segmenter={segmenter}" if segmenter else "segmenter=null",
        "num_inference_steps=3", f"serve.port={port}", "serve.host=127.0.0.1", *SEGMENT_OVERRIDES, *extra,
    ]


class ServeApp:
    """A running `magiceraser serve` application on 127.0.0.1 (started in-process, like the CLI does)."""

    def __init__(self, overrides: list[str]):
        from magiceraser.config import load_config
        from magiceraser.serve.cli import launch
        from magiceraser.serve.config import ServeConfig

        root = Path(__file__).resolve().parents[2]
        self.cfg = load_config(ServeConfig, root / "configs/erase/demo.yaml", overrides)
        self.service = launch(self.cfg)
        self.url = self.service.url

    def close(self) -> None:
        from magiceraser.serve.cli import stop

        stop(self.service)


def start_app(overrides: list[str]) -> ServeApp:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    t0 = time.time()
    app = ServeApp(overrides)
    print(f"Ray Serve app up in {time.time() - t0:.1f} s at {app.url}")
    return app
