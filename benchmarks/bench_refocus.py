"""refocused_attention against stock scaled_dot_product_attention, and its memory against a naive version.

Time: N = 4096 tokens (the largest self-attention of a 512² image), 8 heads, d = 40, batch 2 (the
CFG pair), CPU; ``--n 1024 --d 80`` is the next UNet level. Stock SDPA and every refocus path
(the default dispatch, the compiled one-pass kernel, the flash-LSE path, the fused single-pass path, the two-pass augmented-SDPA
path) measured in the same run, interleaved, best of ``--repeats``; ratios are to that run's SDPA.
Goal ``refocus_cpu_time`` of goals.py (measure with ``--threads 1``).

Memory: each variant runs once in a fresh subprocess; the figure is the growth of the process's
peak resident set during the call (Linux: VmHWM reset through /proc/self/clear_refs, then read
back), i.e. the working memory on top of the inputs, output included. The naive version is the
float64 reference's code (refocus_reference.refocus_eq5_9) run in the inputs' float32: S,
Mask_pos, Mask_neg, M and the softmax as full N×N matrices. Goal ``refocus_memory``.

:func:`measure_time` and :func:`max_error` are what gpu_acceptance.py's ``refocus`` section runs
on the GPU.

    python benchmarks/bench_refocus.py [--threads 1] [--repeats 5] [--n 4096]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import best_interleaved
from goals import GOALS

# Every way to compute the attention, by name: stock SDPA and refocused_attention's paths.
# "two_pass" is the augmented-SDPA path, the one CUDA and half precisions take.
PATHS = {"sdpa": None, "refocus": "auto", "kernel": "kernel", "flash": "flash", "fused": "fused", "two_pass": "sdpa"}


def make_inputs(b: int, h: int, n: int, d: int, device: str = "cpu", dtype=None, seed: int = 0):
    """Random q, k, v (B, H, N, d) and labels (B, N) in {0, 1, 2}, drawn on the CPU, then moved."""
    import torch

    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(device, dtype or torch.float32) for _ in range(3))
    labels = torch.randint(0, 3, (b, n), generator=g).to(device)
    return q, k, v, labels


def attention(name: str, q, k, v, labels):
    """Run one of :data:`PATHS` (``naive``: the full-matrix Eq. 5-9 in the inputs' dtype)."""
    import torch.nn.functional as F

    from magiceraser.pipelines.erase.refocus import refocused_attention
    from magiceraser.pipelines.erase.refocus_reference import refocus_eq5_9

    if name == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if name == "naive":
        return refocus_eq5_9(q, k, v, labels, dtype=None)
    return refocused_attention(q, k, v, labels, _path=PATHS[name])


def measure_time(q, k, v, labels, names=tuple(PATHS), repeats: int = 5, device: str = "cpu") -> dict[str, tuple[float, float]]:
    """Best (wall, process CPU) seconds of each named path, interleaved, after one warm-up each."""
    calls = {name: (lambda name=name: attention(name, q, k, v, labels)) for name in names}
    return best_interleaved(calls, device, repeats)


def max_error(q, k, v, labels, name: str = "refocus") -> float:
    """Largest |error| of a path against the float64 reference (refocus_reference.refocus_eq5_9)."""
    from magiceraser.pipelines.erase.refocus_reference import refocus_eq5_9

    out = attention(name, q, k, v, labels)
    return (out.double() - refocus_eq5_9(q, k, v, labels)).abs().max().item()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_variant(name: str) -> None:
    """Child process: run one variant once, print the peak-RSS growth in MiB as JSON."""
    import torch

    args = json.loads(sys.argv[3])
    torch.set_num_threads(args["threads"])
    q, k, v, labels = make_inputs(args["b"], args["h"], args["n"], args["d"])
    # Warm up on a tiny problem so one-time allocations (kernels, thread pools) are not counted.
    small = make_inputs(1, 1, 64, args["d"])
    for warm in ("refocus", "flash", "naive", "sdpa"):
        attention(warm, *small)
    # Reset the kernel's peak-RSS mark (VmHWM) to the current RSS, run, read the new peak.
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _status_kib("VmRSS")
    out = attention(name, q, k, v, labels)
    after = _status_kib("VmHWM")
    del out
    print(json.dumps({"name": name, "peak_growth_mib": (after - before) / 1024.0}))


def measure_memory(name: str, cfg: dict) -> float:
    res = subprocess.run([sys.executable, __file__, "--child", name, json.dumps(cfg)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_growth_mib"]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_variant(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--d", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from magiceraser.pipelines.erase.refocus import _auto_path

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    q, k, v, labels = make_inputs(args.batch, args.heads, args.n, args.d)
    times = measure_time(q, k, v, labels, repeats=args.repeats)
    best = {name: wall for name, (wall, _) in times.items()}
    cpu = {name: c for name, (_, c) in times.items()}
    print(f"refocused_attention, B={args.batch} H={args.heads} N={args.n} d={args.d}, CPU, {threads} thread(s), best of {args.repeats}")
    rows = (("sdpa", "stock SDPA"), ("refocus", f"refocus (auto: {_auto_path(q, k, v)})"),
            ("kernel", "  one-pass CPU kernel"), ("flash", "  flash-LSE path"),
            ("fused", "  fused path"), ("two_pass", "  two-pass SDPA path"))
    for name, label in rows:
        print(f"  {label:26s} {best[name] * 1e3:9.1f} ms wall  {cpu[name] * 1e3:9.1f} ms process CPU"
              f"  ({best[name] / best['sdpa']:.2f}x wall, {cpu[name] / cpu['sdpa']:.2f}x CPU time of SDPA)")
    print(f"  time ratio refocus / SDPA: {best['refocus'] / best['sdpa']:.2f}x wall, {cpu['refocus'] / cpu['sdpa']:.2f}x CPU time "
          f"(goal {GOALS['refocus_cpu_time'].text()})")

    cfg = dict(b=args.batch, h=args.heads, n=args.n, d=args.d, threads=threads)
    mem = {name: measure_memory(name, cfg) for name in ("sdpa", "refocus", "naive")}
    print("peak working memory (growth of peak RSS during one call, fresh process each):")
    for name, label in (("sdpa", "stock SDPA"), ("refocus", "refocused_attention"), ("naive", "naive full-matrix Eq. 5-9")):
        print(f"  {label:27s} {mem[name]:9.1f} MiB")
    print(f"  memory ratio refocus / naive: {mem['refocus'] / mem['naive']:.3f}x (goal {GOALS['refocus_memory'].text()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
