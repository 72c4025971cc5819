"""refocused_attention against stock scaled_dot_product_attention, and its memory against a naive version.

Time: N = 4096 tokens (the largest self-attention of a 512² image), 8 heads, d = 40, batch 2 (the
CFG pair), CPU; ``--n 1024 --d 80`` is the next UNet level. Stock SDPA and every refocus path
(the default dispatch, the compiled one-pass kernel, the flash-LSE path, the fused single-pass path, the two-pass augmented-SDPA
path) measured in the same run, interleaved, best of ``--repeats``; ratios are to that run's SDPA.
Goal: ≤ 1.3× (issue 14; measure with ``--threads 1``).

Memory: each variant runs once in a fresh subprocess; the figure is the growth of the process's
peak resident set during the call (Linux: VmHWM reset through /proc/self/clear_refs, then read
back), i.e. the working memory on top of the inputs, output included.
The naive version builds S, Mask_pos, Mask_neg, M and the softmax as full N×N matrices. Goal: ≤ 0.25×.

    python benchmarks/bench_refocus.py [--threads 1] [--repeats 5] [--n 4096]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time


def make_inputs(b: int, h: int, n: int, d: int):
    import torch

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    labels = torch.randint(0, 3, (b, n), generator=g)
    return q, k, v, labels


def naive_full_matrix(q, k, v, labels, lambda_pos=0.8, lambda_neg=1.0):
    """Eq. 5-9 with every N×N matrix materialised (the memory baseline)."""
    import torch

    s = q @ k.transpose(-1, -2)
    s_max = s.amax(-1, keepdim=True)
    s_min = s.amin(-1, keepdim=True)
    li, lj = labels[:, None, :, None], labels[:, None, None, :]
    mask_pos = (((li == 0) & (lj == 1)) | ((li == 1) & (lj <= 1))).to(s.dtype)
    mask_neg = (((li == 0) & (lj != 1)) | ((li == 2) & (lj == 0))).to(s.dtype)
    m = ((1 - lambda_pos) * s_min + lambda_pos * s_max) * mask_pos - lambda_neg * s_max * mask_neg
    return torch.softmax((s + m) / math.sqrt(q.shape[-1]), dim=-1) @ v


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_variant(name: str) -> None:
    """Child process: run one variant once, print the peak-RSS growth in MiB as JSON."""
    import torch
    import torch.nn.functional as F

    from magiceraser.pipelines.erase.refocus import refocused_attention

    args = json.loads(sys.argv[3])
    torch.set_num_threads(args["threads"])
    q, k, v, labels = make_inputs(args["b"], args["h"], args["n"], args["d"])
    fns = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "refocus": lambda: refocused_attention(q, k, v, labels),
        "naive": lambda: naive_full_matrix(q, k, v, labels),
    }
    # Warm up on a tiny problem so one-time allocations (kernels, thread pools) are not counted.
    small = make_inputs(1, 1, 64, args["d"])
    refocused_attention(*small)
    refocused_attention(*small, _path="flash")
    naive_full_matrix(*small)
    F.scaled_dot_product_attention(*small[:3])
    # Reset the kernel's peak-RSS mark (VmHWM) to the current RSS, run, read the new peak.
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _status_kib("VmRSS")
    out = fns[name]()
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
    import torch.nn.functional as F

    from magiceraser.pipelines.erase.refocus import _auto_path, refocused_attention

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    q, k, v, labels = make_inputs(args.batch, args.heads, args.n, args.d)
    fns = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
        "refocus": lambda: refocused_attention(q, k, v, labels),
        "kernel": lambda: refocused_attention(q, k, v, labels, _path="kernel"),
        "flash": lambda: refocused_attention(q, k, v, labels, _path="flash"),
        "fused": lambda: refocused_attention(q, k, v, labels, _path="fused"),
        # The two-pass augmented-SDPA path (the default off CPU), for comparison.
        "two_pass": lambda: refocused_attention(q, k, v, labels, _path="sdpa"),
    }
    best = {name: float("inf") for name in fns}
    cpu = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    print(f"refocused_attention, B={args.batch} H={args.heads} N={args.n} d={args.d}, CPU, {threads} thread(s), best of {args.repeats}")
    rows = (("sdpa", "stock SDPA"), ("refocus", f"refocus (auto: {_auto_path(q, k, v)})"),
            ("kernel", "  one-pass CPU kernel"), ("flash", "  flash-LSE path"),
            ("fused", "  fused path"), ("two_pass", "  two-pass SDPA path"))
    for name, label in rows:
        print(f"  {label:26s} {best[name] * 1e3:9.1f} ms wall  {cpu[name] * 1e3:9.1f} ms process CPU"
              f"  ({best[name] / best['sdpa']:.2f}x wall, {cpu[name] / cpu['sdpa']:.2f}x CPU time of SDPA)")
    print(f"  time ratio refocus / SDPA: {best['refocus'] / best['sdpa']:.2f}x wall, {cpu['refocus'] / cpu['sdpa']:.2f}x CPU time (goal <= 1.3x)")

    cfg = dict(b=args.batch, h=args.heads, n=args.n, d=args.d, threads=threads)
    mem = {name: measure_memory(name, cfg) for name in ("sdpa", "refocus", "naive")}
    print("peak working memory (growth of peak RSS during one call, fresh process each):")
    for name, label in (("sdpa", "stock SDPA"), ("refocus", "refocused_attention"), ("naive", "naive full-matrix Eq. 5-9")):
        print(f"  {label:27s} {mem[name]:9.1f} MiB")
    print(f"  memory ratio refocus / naive: {mem['refocus'] / mem['naive']:.3f}x (goal <= 0.25x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
