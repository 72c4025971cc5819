"""Fixtures of the data engine's tests: the small job's config and a local Ray for the module."""

from __future__ import annotations

import pytest
import yaml

from .bad_inputs import corpus
from .job_helpers import BAD, NUM_SCENES


@pytest.fixture(scope="module")
def job_config(tmp_path_factory, tiny_llava):
    from magiceraser.datasets.demo_scenes import write_demo_scenes

    root = tmp_path_factory.mktemp("olrd-job")
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


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a `ray start` cluster found on the machine
    yield
    ray.shutdown()
