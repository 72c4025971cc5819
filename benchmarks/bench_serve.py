"""`magiceraser serve` against calling the pipeline in a plain loop, in the same run.

The demo-sized models (tiny SD inpainting + tiny Mask2Former, 64-px model size, demo.yaml's
settings, one torch thread) erase a 128×128 photo with one masked object. First the plain loop:
``MagicEraserPipeline.__call__`` on decoded arrays, one image after another. Then the service on
127.0.0.1 (one eraser replica, batches of up to ``--batch`` requests), driven over HTTP by 1, 4
and 16 concurrent clients, each sending multipart PNGs and reading the PNG answer. Then the loop
once more: the faster loop run is the baseline (a shared machine's load drifts during a run).

Goals (goals.py): ``serve_latency``, the service's p50 latency at 1 client against the loop's
(HTTP, PNG coding, Ray hops and the batch wait are the only additions), and ``serve_throughput``,
its requests/s at 16 clients against the loop's (batched crops share UNet calls).

    python benchmarks/bench_serve.py [--requests 24] [--batch 8] [--port 8765]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from goals import GOALS

ROOT = Path(__file__).resolve().parents[1]


def scene(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None] * np.ones((size, 1, 3), np.float32)
    img = np.clip(base + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    mask[size // 4 : size // 2, size // 3 : 2 * size // 3] = True
    return img, mask


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def plain_loop(cfg, img: np.ndarray, mask: np.ndarray, n: int) -> tuple[float, list[float]]:
    """(requests/s, per-call seconds) of the pipeline called in a loop."""
    import torch

    from magiceraser.pipelines.erase.build import eraser_from_config
    from magiceraser.pipelines.erase.items import erase_one

    torch.set_num_threads(max(1, cfg.num_threads))
    pipe = eraser_from_config(cfg)
    for _ in range(2):
        erase_one(pipe, cfg, img, mask)
    times = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        erase_one(pipe, cfg, img, mask)
        times.append(time.perf_counter() - t)
    return n / (time.perf_counter() - t0), times


def plain_loop_process(overrides: list[str], n: int) -> tuple[float, list[float]]:
    """:func:`plain_loop` in a fresh process with one thread per math library, as a Ray replica gets.

    Ray starts replicas with ``OMP_NUM_THREADS`` set to their CPUs (1); in this process numpy's
    BLAS and OpenCV would otherwise start a thread per core, which on a loaded machine made the
    loop slower than the service for reasons that have nothing to do with serving.
    """
    import json
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--loop-only", "--loop", str(n), "--overrides", json.dumps(overrides)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return data["rps"], data["times"]


def drive(url: str, files: dict, clients: int, n: int) -> tuple[float, list[float], dict[int, int]]:
    """(requests/s, latencies, status counts) of ``n`` requests from ``clients`` concurrent clients."""
    import httpx

    latencies: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    with httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=clients + 4)) as http:
        def one(_: int) -> None:
            t = time.perf_counter()
            r = http.post("/api/erase", files=files)
            dt = time.perf_counter() - t
            with lock:
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    latencies.append(dt)

        for _ in range(clients):  # warm the connections and the batch path
            one(0)
        latencies.clear()
        codes.clear()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
    return len(latencies) / wall, latencies, codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24, help="requests per concurrency level (x2 at 16 clients)")
    parser.add_argument("--loop", type=int, default=16, help="calls of the plain loop")
    parser.add_argument("--batch", type=int, default=8, help="serve.max_batch_size")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--models", default=None, help="folder with tiny models (default: written to a temp dir)")
    parser.add_argument("--loop-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop_only:
        import json

        import cv2

        from magiceraser.config import load_config
        from magiceraser.serve.config import ServeConfig

        cv2.setNumThreads(1)
        cfg = load_config(ServeConfig, ROOT / "configs/erase/demo.yaml", json.loads(args.overrides))
        rps, times = plain_loop(cfg, *scene(), args.loop)
        print(json.dumps({"rps": rps, "times": times}))
        return 0

    from magiceraser.config import load_config
    from magiceraser.imageio import encode_image
    from magiceraser.serve.config import ServeConfig
    from magiceraser.tiny_models import write_tiny_models

    models = Path(args.models) if args.models else Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if not (models / "sd-inpaint").is_dir():
        write_tiny_models(models, ["sd-inpaint", "mask2former"])
    overrides = [
        f"base_model={models / 'sd-inpaint'}", f"segmenter={models / 'mask2former'}", "trained_dir=null",
        f"serve.port={args.port}", f"serve.max_batch_size={args.batch}", f"serve.max_ongoing_requests={max(args.batch, 16)}",
        "serve.max_queued_requests=64",
    ]
    cfg = load_config(ServeConfig, ROOT / "configs/erase/demo.yaml", overrides)
    img, mask = scene()
    files = {"image": ("photo.png", encode_image(img, "png")), "mask": ("mask.png", encode_image(mask.astype(np.uint8) * 255, "png"))}

    before = plain_loop_process(overrides, args.loop)
    print(f"plain loop (before): {before[0]:.2f} req/s, p50 {statistics.median(before[1]) * 1000:.0f} ms "
          f"({args.loop} calls, {cfg.num_threads or 'default'} torch thread(s))", flush=True)

    from ray import serve

    from magiceraser.serve.cli import start

    t0 = time.perf_counter()
    url = start(cfg)
    print(f"service up in {time.perf_counter() - t0:.1f} s at {url} (max_batch_size {args.batch})", flush=True)
    rows = []
    try:
        for clients in (1, 4, 16):
            n = args.requests * (2 if clients == 16 else 1)
            rps, lat, codes = drive(url, files, clients, n)
            rows.append((clients, rps, lat, codes))
            print(f"service, {clients:2d} client(s): {rps:.2f} req/s, p50 {statistics.median(lat) * 1000:.0f} ms, "
                  f"p95 {percentile(lat, 95) * 1000:.0f} ms, statuses {codes}", flush=True)
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()

    # The loop again after the service: on a shared machine the load changes during a run, so the
    # faster of the two loop runs is the baseline (the goals are then judged conservatively).
    after = plain_loop_process(overrides, args.loop)
    print(f"plain loop (after): {after[0]:.2f} req/s, p50 {statistics.median(after[1]) * 1000:.0f} ms", flush=True)
    loop_rps, loop_times = max(before, after, key=lambda r: r[0])
    loop_p50 = statistics.median(loop_times)
    one = rows[0]
    overhead = statistics.median(one[2]) / loop_p50
    speedup = rows[-1][1] / loop_rps
    print("\n| clients | req/s | p50 ms | p95 ms | req/s vs loop |\n| --- | --- | --- | --- | --- |")
    print(f"| loop | {loop_rps:.2f} | {loop_p50 * 1000:.0f} | {percentile(loop_times, 95) * 1000:.0f} | 1.00x |")
    for clients, rps, lat, _ in rows:
        print(f"| {clients} | {rps:.2f} | {statistics.median(lat) * 1000:.0f} | {percentile(lat, 95) * 1000:.0f} | {rps / loop_rps:.2f}x |")
    latency, throughput = GOALS["serve_latency"], GOALS["serve_throughput"]
    ok1, ok16 = latency.met(overhead), throughput.met(speedup)
    print(f"\nlatency at 1 client: {overhead:.2f}x the loop's p50 (goal {latency.text()}): {'met' if ok1 else 'NOT met'}")
    print(f"throughput at 16 clients: {speedup:.2f}x the loop's (goal {throughput.text()}): {'met' if ok16 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
