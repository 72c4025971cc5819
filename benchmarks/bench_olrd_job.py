"""The OLRD Ray job on this machine's 2 CPUs against a single-process serial loop, and its memory.

Inputs: N copies of the demo scenes (distinct file names, so distinct keys and placements) with
ground-truth panoptic annotations; captions from the tiny random-weight LLaVA (transformers).

1. serial: this process runs the same stage code (read -> segment -> compose -> caption -> write
   shards) batch by batch, models loaded once per run, at N = 200 and N = 2000.
2. ray: ``magiceraser olrd`` as a separate driver process joining a running local Ray cluster
   (what ``ray job submit`` does), 2 CPUs, at the same N. Each job gets a fresh cluster, so idle
   workers of one job never count in the next one's memory.

Per-image time in steady state: from the run's timeline (stats.json ``timeline`` for the Ray job:
when the workers finished each input; the same points per batch for the serial loop), the time
between 20% and 90% of the inputs finished, divided by those 70% of the inputs. That leaves out start-up (the serial loop's models load in
0.1 s in an already-warm process, while a Ray job starts worker processes that import torch and
transformers: seconds on 2 CPUs) and the tail (the last blocks drain out of a partly idle pool).

Speed: serial per-image time / Ray per-image time (goal ``olrd_job_speedup``). Printed beside it: the slope of
wall time from 200 to 2000 images (both fixed costs cancel) and the end-to-end ratio at 200 images
with Ray's fixed cost, so start-up is not hidden.

Streaming: peak memory (sum of PSS, so shared object-store pages count once) of the cluster plus
the job's driver, and the per-image time, at 200 and 2000 images. Goal ``olrd_job_flat`` (goals.py).

    .venv/bin/python benchmarks/bench_olrd_job.py [--quick] [layout=single ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from goals import GOALS


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
        "samples_per_shard": 25,
        "read_batch_size": 16,
        "task_num_cpus": 0.25,
        "ray_address": "local",
        "num_cpus": 2,
        "progress_interval_s": 30.0,
        "segmenter": {"backend": "coco_panoptic", "annotations": str(ann), "png_dir": str(scenes / "panoptic"),
                      "batch_size": 16, "num_cpus": 0.25},
        "captioner": {"backend": "transformers", "model": str(llava), "device": "cpu", "batch_size": 16,
                      "num_actors": 2, "num_cpus": 0.5, "max_new_tokens": 16},
    }


def run_serial(cfg_dict: dict, out: Path) -> dict:
    """The same stages in one process, one batch after another, each shard written once complete."""
    import numpy as np

    from magiceraser.config import build_config, config_to_dict
    from magiceraser.datasets.config import OLRDConfig
    from magiceraser.datasets.inputs import list_inputs
    from magiceraser.datasets.shards import ShardResult, write_shard
    from magiceraser.datasets.stages import (
        CaptionStage,
        SegmentStage,
        add_row,
        compose_batch,
        initial_rows,
        read_images,
    )

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    cfg = build_config(OLRDConfig, {**cfg_dict, "output": str(out)})
    items = list_inputs(cfg.input, cfg.samples_per_shard)
    segment = SegmentStage(config_to_dict(cfg.segmenter))
    caption = CaptionStage(config_to_dict(cfg.captioner))
    rows = initial_rows(items)
    out.mkdir(parents=True, exist_ok=True)
    pending: dict[int, ShardResult] = {}
    timeline = [[0.0, 0]]
    bs = cfg.read_batch_size
    for start in range(0, len(rows), bs):
        chunk = rows[start : start + bs]
        batch = {k: np.asarray([r[k] for r in chunk], dtype=object) for k in chunk[0]}
        batch = read_images(batch, cfg.min_side, cfg.max_pixels)
        batch = segment(batch)
        batch = compose_batch(batch, config_to_dict(cfg.compose), cfg.seed, cfg.image_format, cfg.jpeg_quality,
                              segment.model_id, cfg.captioner.max_tags)
        batch = caption(batch)
        timeline.append([time.perf_counter() - t0, start + len(chunk)])  # when its images were finished
        for i in range(len(batch["key"])):
            r = {k: batch[k][i] for k in batch}
            res = pending.setdefault(int(r["shard"]), ShardResult(int(r["shard"]), 0))
            res.inputs += 1
            add_row(res, r, cfg.image_format)
            if res.inputs == cfg.samples_per_shard or start + i + 1 == len(rows):
                write_shard(out, pending.pop(res.shard))
    wall = time.perf_counter() - t0
    return {"wall": wall, "steady_s_per_image": steady_per_image(timeline)}


def steady_per_image(timeline: list[list[float]], lo: float = 0.2, hi: float = 0.9) -> float:
    """Seconds per image between ``lo`` and ``hi`` of the inputs done: past start-up, before the tail."""
    import numpy as np

    t, n = np.asarray(timeline, dtype=float).T
    total = n[-1]
    t_lo, t_hi = np.interp([lo * total, hi * total], n, t)
    return float((t_hi - t_lo) / ((hi - lo) * total))


def _tree_pss(root) -> int:
    """Sum of PSS over ``root``'s descendants (not ``root`` itself); processes that vanish are skipped."""
    import psutil

    total = 0
    for p in root.children(recursive=True):
        try:
            mem = p.memory_full_info()
        except psutil.Error:
            continue
        total += getattr(mem, "pss", mem.rss)
    return total


def run_ray_job(cfg_dict: dict, out: Path, workdir: Path) -> dict:
    """``magiceraser olrd`` as a driver process on a fresh local cluster; wall time, peak memory, steady per-image time."""
    import psutil
    import ray

    shutil.rmtree(out, ignore_errors=True)  # a fresh output: nothing to resume
    # Ray starts workers at niceness 15; the serial baseline runs at 0. Same priority for a fair race.
    os.environ["RAY_worker_niceness"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        time.sleep(2.0)  # let the cluster's own start-up settle before measuring
        me = psutil.Process()
        idle = _tree_pss(me)
        cfg_path = workdir / f"job-{out.name}.yaml"
        cfg_path.write_text(yaml.safe_dump({**cfg_dict, "output": str(out), "ray_address": address}))
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_pss(me))
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "magiceraser", "olrd", "--config", str(cfg_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        sampler.start()
        _, err = proc.communicate()
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
    finally:
        ray.shutdown()
    if proc.returncode != 0:
        raise RuntimeError(f"olrd job failed with exit code {proc.returncode}:\n{err[-3000:]}")
    stats = json.loads((out / "stats.json").read_text())
    steady = steady_per_image(stats["timeline"])
    return {"wall": wall, "peak_bytes": peak, "idle_bytes": idle, "steady_s_per_image": steady,
            "samples": stats["samples"], "skipped": stats["skipped"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 and 600 images instead of 200 and 2000")
    parser.add_argument("--workdir", default=None, help="keep inputs/outputs here (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the job config (e.g. layout=decode_in_segmenter)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from magiceraser.config import parse_overrides
    from magiceraser.config.build import deep_merge as _deep_merge
    from magiceraser.tiny_models import write_tiny_models

    small, large = 200, (600 if args.quick else 2000)
    with tempfile.TemporaryDirectory(prefix="bench-olrd-") as tmp:
        root = Path(args.workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        llava = write_tiny_models(root / "models", ["llava"])["llava"]
        cfgs = {}
        for n in (small, large):
            images, ann = make_inputs(root, n)
            cfgs[n] = _deep_merge(job_config(images, ann, llava, root / "scenes"), parse_overrides(args.overrides))
        # Warm-up: the first run in this process imports transformers' LLaVA code; time only later runs.
        warm_images, warm_ann = make_inputs(root, 16)
        run_serial(_deep_merge(job_config(warm_images, warm_ann, llava, root / "scenes"), parse_overrides(args.overrides)),
                   root / "out-serial-warmup")
        serial = {n: run_serial(cfgs[n], root / f"out-serial-{n}") for n in (small, large)}
        ray_runs = {n: run_ray_job(cfgs[n], root / f"out-ray-{n}", root) for n in (small, large)}
        s_slope = (serial[large]["wall"] - serial[small]["wall"]) / (large - small)
        r_slope = (ray_runs[large]["wall"] - ray_runs[small]["wall"]) / (large - small)
        r_fixed = ray_runs[small]["wall"] - small * r_slope
        print(f"OLRD job (tiny LLaVA captions, ground-truth panoptic), 2 CPUs, layout={cfgs[small].get('layout', 'auto')}")
        print("  wall time; per-image time in steady state (from 20% to 90% of the inputs done)")
        for n in (small, large):
            s_run, r_run = serial[n], ray_runs[n]
            print(f"  {n:5d} images: serial loop {s_run['wall']:6.1f} s, {s_run['steady_s_per_image'] * 1000:5.1f} ms/image; "
                  f"Ray job {r_run['wall']:6.1f} s, {r_run['steady_s_per_image'] * 1000:5.1f} ms/image "
                  f"({r_run['samples']} samples, {r_run['skipped']} skipped)")
        for n in (small, large):
            print(f"  steady-state speed-up at {n:4d} images: "
                  f"{serial[n]['steady_s_per_image'] / ray_runs[n]['steady_s_per_image']:.2f}x (goal {GOALS['olrd_job_speedup'].text()})")
        print(f"  cross-check, slope of wall time {small}->{large}: serial {s_slope * 1000:.1f} ms/image, "
              f"Ray {r_slope * 1000:.1f} ms/image, {s_slope / r_slope:.2f}x")
        print(f"  end to end at {small} images: {serial[small]['wall'] / ray_runs[small]['wall']:.2f}x "
              f"(Ray's fixed cost: {r_fixed:.1f} s of worker start-up and model loading)")
        print("Ray job streaming: peak PSS of cluster + driver, per-image time from 20% to 90% of the inputs done")
        for n in (small, large):
            r = ray_runs[n]
            print(f"  {n:5d} images: peak {r['peak_bytes'] / 2**20:7.0f} MiB (idle cluster {r['idle_bytes'] / 2**20:5.0f} MiB), "
                  f"{r['steady_s_per_image'] * 1000:6.1f} ms/image")
        mem_ratio = ray_runs[large]["peak_bytes"] / ray_runs[small]["peak_bytes"]
        time_ratio = ray_runs[large]["steady_s_per_image"] / ray_runs[small]["steady_s_per_image"]
        print(f"  {large}/{small}: peak memory x{mem_ratio:.2f}, per-image time x{time_ratio:.2f} (goal: both {GOALS['olrd_job_flat'].text()})")


if __name__ == "__main__":
    main()
