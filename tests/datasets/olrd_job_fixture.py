"""The OLRD job config of the Ray job tests (demo scenes + awkward inputs) and how they run it in-process."""

from __future__ import annotations

from pathlib import Path

import yaml

from .bad_inputs import corpus

BAD = ("bomb.png", "cmyk.jpg", "empty.jpg", "text.jpg", "tiny.png", "truncated.jpg")
EXPECTED_SKIPS = {"bomb.png": "too_large", "cmyk.jpg": "no_annotation", "empty.jpg": "empty_file",
                  "text.jpg": "not_an_image", "tiny.png": "too_small", "truncated.jpg": "truncated"}
NUM_SCENES = 6


def write_job_config(root: Path, tiny_llava: Path) -> Path:
    """``root/olrd.yaml``: NUM_SCENES demo scenes and the BAD inputs, 3 samples a shard, the tiny LLaVA."""
    from magiceraser.datasets.demo_scenes import write_demo_scenes

    scenes = write_demo_scenes(root / "scenes", NUM_SCENES)
    files = corpus()
    for name in BAD:
        (scenes / "images" / name).write_bytes(files[name][0])
    cfg = {
        "input": str(scenes / "images"),
        "samples_per_shard": 3,
        "image_format": "png",
        "read_batch_size": 2,
        "task_num_cpus": 0.5,
        "ray_address": "local",
        "num_cpus": 2,
        "progress_interval_s": 1.0,
        "segmenter": {"backend": "coco_panoptic", "annotations": str(scenes / "panoptic.json"), "batch_size": 2,
                      "num_cpus": 0.5},
        "captioner": {"backend": "transformers", "model": str(tiny_llava), "device": "cpu", "batch_size": 2,
                      "num_cpus": 0.5, "max_new_tokens": 4},
    }
    path = root / "olrd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_job(config: Path, output: Path | str, *overrides: str) -> dict:
    """``run_olrd`` in this process (on its Ray if one is running): the job's stats."""
    from magiceraser.config import load_config
    from magiceraser.datasets.config import OLRDConfig
    from magiceraser.datasets.olrd_job import run_olrd

    return run_olrd(load_config(OLRDConfig, config, [f"output={output}", *overrides]))
