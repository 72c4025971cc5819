"""The OLRD Ray job on this machine's CPUs against a single-process serial loop, and its memory.

Inputs: N copies of the demo scenes (distinct file names, so distinct keys and placements) with
ground-truth panoptic annotations; captions from the tiny random-weight LLaVA (transformers).

1. serial: one process runs the same stage code (read -> segment -> compose -> caption -> write
   shards) batch by batch, models loaded once; wall time including model loading.
2. ray: ``magiceraser olrd`` in a subprocess on local Ray with 2 CPUs; wall time including Ray's
   start-up. Speed-up = serial / ray (goal >= 1.5x at 200 images).
3. The Ray job at 200 and 2000 images: peak resident memory of the job's process tree (sampled
   every 0.25 s) and per-image time in steady state (between the first and the last shard written).
   Goal: both flat within 10%.

    .venv/bin/python benchmarks/bench_olrd_job.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml


def make_inputs(root: Path, n: int) -> tuple[Path, Path]:
    """``n`` image links to the demo scenes + a COCO panoptic JSON naming each of them."""
    from magiceraser.datasets.demo_scenes import NUM_SCENES, write_demo_scenes

    scenes = root / "scenes"
    if not (scenes / "panoptic.json").exists():
        write_demo_scenes(scenes)
    base = json.loads((scenes / "panoptic.json").read_text())
    images_dir = root / f"images-{n}"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        src = base["images"][i % NUM_SCENES]
        name = f"img-{i:05d}.png"
        link = images_dir / name
        if not link.exists():
            link.symlink_to(scenes / "images" / src["file_name"])
        ann = next(a for a in base["annotations"] if a["image_id"] == src["id"])
        images.append({**src, "id": i + 1, "file_name": name})
        annotations.append({**ann, "image_id": i + 1})
    ann_path = root / f"panoptic-{n}.json"
    ann_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": base["categories"]}))
    return images_dir, ann_path


def job_config(images: Path, ann: Path, llava: Path, scenes: Path) -> dict:
    return {
        "input": str(images),
        "samples_per_shard": 50,
        "read_batch_size": 8,
        "task_num_cpus": 0.25,
        "ray_address": "local",
        "num_cpus": 2,
        "progress_interval_s": 30.0,
        "segmenter": {"backend": "coco_panoptic", "annotations": str(ann), "png_dir": str(scenes / "panoptic"),
                      "batch_size": 8, "num_cpus": 0.25},
        "captioner": {"backend": "transformers", "model": str(llava), "device": "cpu", "batch_size": 8,
                      "num_actors": 2, "num_cpus": 0.5, "max_new_tokens": 16},
    }


def run_serial(cfg_dict: dict, out: Path) -> float:
    """The same stages in one process, one batch after another; returns wall seconds."""
    import numpy as np

    from magiceraser.config import build_config, config_to_dict
    from magiceraser.datasets.config import OLRDConfig
    from magiceraser.datasets.inputs import list_inputs
    from magiceraser.datasets.shards import Sample, ShardResult, Skip, write_shard
    from magiceraser.datasets.stages import (
        CaptionStage,
        SegmentStage,
        compose_batch,
        initial_rows,
        read_images,
        row_to_sample_files,
    )

    t0 = time.perf_counter()
    cfg = build_config(OLRDConfig, {**cfg_dict, "output": str(out)})
    items = list_inputs(cfg.input, cfg.samples_per_shard)
    segment = SegmentStage(config_to_dict(cfg.segmenter))
    caption = CaptionStage(config_to_dict(cfg.captioner))
    rows = initial_rows(items)
    results: dict[int, ShardResult] = {}
    bs = cfg.read_batch_size
    for start in range(0, len(rows), bs):
        chunk = rows[start : start + bs]
        batch = {k: np.asarray([r[k] for r in chunk], dtype=object) for k in chunk[0]}
        batch = read_images(batch, cfg.min_side, cfg.max_pixels)
        batch = segment(batch)
        batch = compose_batch(batch, config_to_dict(cfg.compose), cfg.seed, cfg.image_format, cfg.jpeg_quality,
                              segment.model_id, cfg.captioner.max_tags)
        batch = caption(batch)
        for i in range(len(batch["key"])):
            r = {k: batch[k][i] for k in batch}
            res = results.setdefault(int(r["shard"]), ShardResult(int(r["shard"]), 0))
            res.inputs += 1
            if r["reason"]:
                res.skips.append(Skip(r["source"], r["key"], r["reason"], r["stage"], r["message"]))
            else:
                res.samples.append(Sample(r["key"], row_to_sample_files(r, cfg.image_format)))
    out.mkdir(parents=True, exist_ok=True)
    for res in results.values():
        write_shard(out, res)
    return time.perf_counter() - t0


def run_ray_job(cfg_dict: dict, out: Path, workdir: Path) -> dict:
    """``magiceraser olrd`` in a subprocess; wall time, peak RSS of its process tree, steady per-image time."""
    import psutil

    cfg_path = workdir / f"job-{out.name}.yaml"
    cfg_path.write_text(yaml.safe_dump({**cfg_dict, "output": str(out)}))
    t0 = time.perf_counter()
    # Ray starts workers at niceness 15; the serial baseline runs at 0. Same priority for a fair race.
    env = {**os.environ, "RAY_worker_niceness": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "magiceraser", "olrd", "--config", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if rc != 0:
        raise RuntimeError(f"olrd job failed with exit code {rc}")
    sidecars = sorted(out.glob("olrd-*.json"), key=lambda p: p.stat().st_mtime)
    first, last = sidecars[0], sidecars[-1]
    inputs_between = sum(json.loads(p.read_text())["inputs"] for p in sidecars[1:])
    steady = (last.stat().st_mtime - first.stat().st_mtime) / max(inputs_between, 1)
    stats = json.loads((out / "stats.json").read_text())
    return {"wall": wall, "peak_bytes": peak, "steady_s_per_image": steady, "samples": stats["samples"],
            "skipped": stats["skipped"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 and 600 images instead of 200 and 2000")
    parser.add_argument("--workdir", default=None, help="keep inputs/outputs here (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from magiceraser.tiny_models import write_tiny_models

    small, large = 200, (600 if args.quick else 2000)
    with tempfile.TemporaryDirectory(prefix="bench-olrd-") as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        llava = write_tiny_models(root / "models", ["llava"])["llava"]
        images, ann = make_inputs(root, small)
        cfg = job_config(images, ann, llava, root / "scenes")
        serial = run_serial(cfg, root / "out-serial")
        ray_small = run_ray_job(cfg, root / f"out-ray-{small}", root)
        print(f"OLRD job, {small} images (tiny LLaVA captions, ground-truth panoptic), 2 CPUs")
        print(f"  serial single-process loop: {serial:7.1f} s ({small / serial:.2f} images/s)")
        print(f"  Ray job (local Ray, 2 CPUs): {ray_small['wall']:7.1f} s ({small / ray_small['wall']:.2f} images/s), "
              f"{ray_small['samples']} samples, {ray_small['skipped']} skipped")
        print(f"  speed-up: {serial / ray_small['wall']:.2f}x (goal >= 1.5x)")
        images, ann = make_inputs(root, large)
        ray_large = run_ray_job(job_config(images, ann, llava, root / "scenes"), root / f"out-ray-{large}", root)
        print("Ray job streaming: peak RSS of the job's process tree, per-image time in steady state")
        for n, r in ((small, ray_small), (large, ray_large)):
            print(f"  {n:5d} images: peak {r['peak_bytes'] / 2**20:7.0f} MiB, {r['steady_s_per_image'] * 1000:6.1f} ms/image "
                  f"(wall {r['wall']:.1f} s incl. start-up)")
        mem_ratio = ray_large["peak_bytes"] / ray_small["peak_bytes"]
        time_ratio = ray_large["steady_s_per_image"] / ray_small["steady_s_per_image"]
        print(f"  {large}/{small}: peak memory x{mem_ratio:.2f}, per-image time x{time_ratio:.2f} (goal: both within 1.10)")


if __name__ == "__main__":
    main()
