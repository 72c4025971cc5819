"""The OLRD driver's own cost at 10K, 100K and 1M inputs: listing, fingerprint, resume scan, plan, bookkeeping.

Places2 has 1.8M images: everything the driver does per input must stay cheap. The inputs are a
synthetic Places-style list file (``/c/cat17/00000042.jpg 17``: the files need not exist, nothing
here reads an image). Each (N, fresh|resumed) case runs in a fresh process, so its peak memory
(``ru_maxrss``, the whole process: interpreter and imports included) is its own.

Phases, timed with the driver's real functions (olrd_job.py, inputs.py, assembler.py):

    list        list_inputs: the list file -> InputItems (keys, shard indices)
    fingerprint job_fingerprint over the listing
    scan        scan_sidecars + check_sidecars: the finished shards (resumed: 99% of them)
    plan        shards_to_build, the inputs to do, and the Arrow input blocks handed to Ray Data
    pending     the rows of the inputs to do fed through the ShardAssembler in a cluster-like order
                (blocks of 16 rows shuffled within a window of 4096 blocks, 1% of blocks held back
                to the very end), tiny payloads, shards not written; reports the most rows held
                in memory, the shards spilled and the appends to spill files (max_open_shards=64,
                samples_per_shard=100)

"Starts work" is list + fingerprint + scan + plan: the time before the first input is handed to Ray.
Goals (issue 12; goals.py ``olrd_driver_*``): per-input cost flat from 10K to 1M; 1M listed and
planned within a time and memory bound; a resume with 99% done starts work within a multiple of
the time of listing alone.

    .venv/bin/python benchmarks/bench_olrd_driver.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from goals import GOALS

SAMPLES_PER_SHARD = 100
MAX_OPEN_SHARDS = 64


def write_list(path: Path, n: int) -> None:
    """A Places365-style list of ``n`` images in 365 categories."""
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(f"/c/cat{i % 365:03d}/{i:08d}.jpg {i % 365}\n")


def fake_finished_shards(out: Path, cfg, items, job: dict, fraction: float) -> None:
    """Sidecars (with every key, as the job writes them) and tiny tars for the first ``fraction`` of the shards."""
    from magiceraser.atomic import atomic_write_json
    from magiceraser.datasets.inputs import num_shards, shard_name

    n = num_shards(len(items), cfg.samples_per_shard)
    out.mkdir(parents=True, exist_ok=True)
    for s in range(int(n * fraction)):
        name = shard_name(s)
        (out / f"{name}.tar").write_bytes(b"\0" * 1024)
        keys = [it.key for it in items[s * cfg.samples_per_shard : (s + 1) * cfg.samples_per_shard]]
        atomic_write_json(out / f"{name}.json", {
            "shard": s, "tar": f"{name}.tar", "tar_bytes": 1024, "inputs": len(keys), "samples": len(keys),
            "skipped": 0, "keys": keys, "skip_reasons": {}, "skips": [], "job": job})


def cluster_order(items, seed: int = 0, window: int = 4096, block: int = 16, held_back: float = 0.01) -> list:
    """The inputs in an order a busy cluster may return them: shuffled blocks, stragglers last."""
    rng = random.Random(seed)
    blocks = [items[i : i + block] for i in range(0, len(items), block)]
    late = set(rng.sample(range(len(blocks)), int(len(blocks) * held_back)))
    on_time = [b for i, b in enumerate(blocks) if i not in late]
    order: list = []
    for start in range(0, len(on_time), window):
        chunk = on_time[start : start + window]
        rng.shuffle(chunk)
        order += chunk
    order += [blocks[i] for i in sorted(late)]
    return [it for b in order for it in b]


def run_case(list_path: Path, out: Path, resumed: bool) -> dict:
    """One case, in this process: the driver's phases as ``_run_locked`` runs them."""
    # Imported by Ray Data in a real driver (build_dataset imports ray.data before input_blocks
    # runs); not a per-input cost. pyarrow's first pa.array() imports pandas (~0.8 s), which was
    # the fixed cost that made a small resume look slow next to its listing.
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    from magiceraser.config import build_config
    from magiceraser.datasets import job_state, ray_pipeline
    from magiceraser.datasets.assembler import ShardAssembler
    from magiceraser.datasets.config import OLRDConfig
    from magiceraser.datasets.inputs import list_inputs, num_shards

    cfg = build_config(OLRDConfig, {"input": str(list_path), "output": str(out), "samples_per_shard": SAMPLES_PER_SHARD,
                                    "max_open_shards": MAX_OPEN_SHARDS})
    if resumed:  # the earlier run's shards, written before the clock starts
        items = list_inputs(cfg.input, cfg.samples_per_shard)
        fake_finished_shards(out, cfg, items, job_state.job_fingerprint(cfg, items), 0.99)
        del items
    out.mkdir(parents=True, exist_ok=True)
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    items = list_inputs(cfg.input, cfg.samples_per_shard, cfg.input_root, cfg.limit)
    t["list"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    job = job_state.job_fingerprint(cfg, items)
    t["fingerprint"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_shards = num_shards(len(items), cfg.samples_per_shard)
    sidecars = job_state.scan_sidecars(out, n_shards)
    job_state.check_sidecars(out, sidecars, job)
    t["scan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    build = set(job_state.shards_to_build(n_shards, sidecars, cfg.retry_failed))
    todo = [it for it in items if it.shard in build]
    blocks = ray_pipeline.input_blocks(todo, cfg.captioner.batch_size)
    t["plan"] = time.perf_counter() - t0
    t["starts_work"] = t["list"] + t["fingerprint"] + t["scan"] + t["plan"]
    peak_planned = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del blocks
    t0 = time.perf_counter()
    from collections import Counter

    assembler = ShardAssembler(out, Counter(it.shard for it in todo), cfg.max_open_shards)
    written = 0
    for it in cluster_order(todo):
        row = {"source": it.source, "key": it.key, "index": it.index, "shard": it.shard, "reason": "", "stage": "",
               "message": "", "original": b"o", "blended": b"b", "mask": b"m", "meta": "{}", "done_at": 0.0}
        written += assembler.add(row) is not None
    t["pending"] = time.perf_counter() - t0
    assert written == len(build) and not assembler.open_shards()
    return {"n": len(items), "todo": len(todo), "shards": n_shards, "done": len(sidecars), **t,
            "peak_planned_bytes": peak_planned, "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "max_pending_rows": assembler.max_pending_rows, "spilled_shards": assembler.spilled_shards,
            "spill_writes": assembler.spill_writes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--case", nargs=3, metavar=("LIST", "OUT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(Path(args.case[0]), Path(args.case[1]), args.case[2] == "resumed")))
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-olrd-driver-") as tmp:
        for n in args.sizes:
            lst = Path(tmp) / f"list-{n}.txt"
            write_list(lst, n)
            for mode in ("fresh", "resumed"):
                out = Path(tmp) / f"out-{n}-{mode}"
                proc = subprocess.run([sys.executable, __file__, "--case", str(lst), str(out), mode],
                                      capture_output=True, text=True, check=True)
                results[(n, mode)] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"OLRD driver, synthetic list file, samples_per_shard={SAMPLES_PER_SHARD}, max_open_shards={MAX_OPEN_SHARDS}")
    print("  inputs    mode     list   fprint    scan    plan  starts work  us/input  peak(planned)  pending  max rows  spilled")
    for (n, mode), r in results.items():
        print(f"  {n:>8,} {mode:8s} {r['list']:6.2f}s {r['fingerprint']:6.2f}s {r['scan']:6.2f}s {r['plan']:6.2f}s "
              f"{r['starts_work']:9.2f}s {r['starts_work'] / n * 1e6:8.2f} {r['peak_planned_bytes'] / 2**20:8.0f} MiB "
              f"{r['pending']:7.2f}s {r['max_pending_rows']:8d} {r['spilled_shards']:7d}")
    small, large = min(args.sizes), max(args.sizes)
    fresh_ratio = (results[(large, "fresh")]["starts_work"] / large) / (results[(small, "fresh")]["starts_work"] / small)
    print(f"  per-input cost of starting work, {large:,} vs {small:,}: x{fresh_ratio:.2f} fresh (goal {GOALS['olrd_driver_per_input'].text()}), "
          f"x{(results[(large, 'resumed')]['starts_work'] / large) / (results[(small, 'resumed')]['starts_work'] / small):.2f} resumed")
    big = results[(large, "fresh")]
    print(f"  {large:,} inputs listed and planned: {big['starts_work']:.1f} s, peak {big['peak_planned_bytes'] / 2**30:.2f} GiB "
          f"(goal {GOALS['olrd_driver_seconds'].text()}, {GOALS['olrd_driver_memory'].text()})")
    for n in args.sizes:
        r = results[(n, "resumed")]
        print(f"  resume at {n:>9,} with {r['done']}/{r['shards']} shards done: starts work in {r['starts_work'] / r['list']:.2f}x "
              f"the listing time (goal {GOALS['olrd_driver_resume'].text()})")
    for n in args.sizes:
        r = results[(n, "fresh")]
        print(f"  spill at {n:>9,} fresh: {r['spilled_shards']} shards spilled in {r['spill_writes']} appends to spill files, "
              f"{r['pending']:.1f} s for {n:,} rows")
    rows = max(r["max_pending_rows"] for r in results.values())
    print(f"  most rows pending in the driver: {rows} (bound {MAX_OPEN_SHARDS} open shards x {SAMPLES_PER_SHARD} = "
          f"{MAX_OPEN_SHARDS * SAMPLES_PER_SHARD})")


if __name__ == "__main__":
    main()
