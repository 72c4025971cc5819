"""One prepared acceptance run of every GPU path of magiceraser, printed as one table (issue 14).

Why one script: the GPU machine comes now and then for minutes in all (start-up included), with
no internet and its own preinstalled stack (benchmarks/README.md: what it has, what to carry and
how). Everything must therefore be ready before it comes, run in one go in under 8 minutes (model
building included) so that a second try fits, and report every section even when one fails.
``bash benchmarks/gpu_acceptance.sh`` installs the carried wheels and runs this script there.

Sections (each in its own subprocess with its own time limit: a crash, an out-of-memory error or
a hang in one is reported and the others still run; rows are printed as they are measured, so a
section cut by its limit still reports what it had). The measuring is the benchmarks' own
(imported, not copied), the goals those of goals.py:

* ``env``: versions, device, and that Ray, wandb and vLLM are absent or unused.
* ``refocus``: bench_refocus, the path CUDA takes (augmented-head SDPA) against stock SDPA at
  N = 4096/1024/256 with the UNet's head sizes 40/80/160, fp16, and its largest error against
  the float64 Eq. 5-9 (refocus_reference).
* ``erase``: bench_erase at 512², 50 steps, strength 1.0, fp16: refocus on, off, stock diffusers.
* ``train``: bench_train_gpu, the Trainer's own step, 512², bf16, LoRA + v*, pixels and the
  latent cache, at two batch sizes; images/s and peak memory.
* ``mask2former``: bench_segmenter, Swin-L fp16 images/s at batch 1 and 16.
* ``llava``: bench_captioner, captions/s through the transformers backend at batch 1 and 32.
* ``tests``: the ``gpu``-marked tests (files found by grepping tests/ for the mark; tests that
  need vLLM deselected when vLLM is absent, and said so).

``--cpu-smoke`` runs the same code paths on CPU at tiny sizes (a test in ``make test`` does, so
the script cannot rot between GPU runs); its numbers are not GPU figures and no goal applies.
Only APIs of the lent machine's older torch are used on the GPU path.

    python benchmarks/gpu_acceptance.py [--cpu-smoke] [--only erase,train] [--total-limit 470]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from goals import GOALS, Goal

REPO = Path(__file__).resolve().parents[1]
ROW_PREFIX = "@@row "
FORBIDDEN = ("ray", "wandb", "vllm")
VLLM_NOTE = "vLLM not measured: its wheel (hundreds of MiB) exceeds the 64 MiB carry; transformers backend instead"


# ----------------------------------------------------------------------------- rows and sizes


@dataclass
class Row:
    """One line of the table; ``ok`` is None where no goal applies (or on the CPU smoke run)."""

    section: str
    what: str
    value: str
    goal: str = ""
    ok: bool | None = None


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (transformers' start with a newline)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def emit(section: str, what: str, value: str, goal: str = "", ok: bool | None = None) -> None:
    """Print a row at once (a section killed by its time limit keeps what it had measured)."""
    print(ROW_PREFIX + json.dumps(asdict(Row(section, what, value, goal, ok))), flush=True)


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run: full on the GPU, tiny for ``--cpu-smoke`` (same code, seconds)."""

    image: int
    steps: int
    repeats: int
    attn_tokens: tuple[int, ...]
    attn_heads: int
    attn_iters: int
    train_res: int
    train_batches: tuple[int, int]
    train_warmup: int
    train_steps: int
    m2f_runs: list[tuple[int, int]]  # (batch size, images)
    m2f_size: int
    llava_runs: list[tuple[int, int]]  # (batch size, images)
    llava_tokens: int


GPU_SIZES = Sizes(
    image=512, steps=50, repeats=3, attn_tokens=(4096, 1024, 256), attn_heads=8, attn_iters=20,
    train_res=512, train_batches=(8, 16), train_warmup=3, train_steps=10,
    m2f_runs=[(1, 8), (16, 32)], m2f_size=512, llava_runs=[(1, 3), (32, 32)], llava_tokens=77,
)
SMOKE_SIZES = Sizes(
    image=64, steps=2, repeats=1, attn_tokens=(64, 16, 4), attn_heads=2, attn_iters=2,
    train_res=64, train_batches=(1, 2), train_warmup=1, train_steps=1,
    m2f_runs=[(1, 1), (2, 2)], m2f_size=64, llava_runs=[(1, 1), (2, 2)], llava_tokens=3,
)
# SD 1.5's self-attention head sizes at the three UNet levels (320, 640, 1280 channels / 8 heads).
HEAD_SIZES = (40, 80, 160)


@dataclass
class Ctx:
    """What a section needs to know about the run it is part of."""

    smoke: bool
    sizes: Sizes
    device: str
    name: str = ""

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def goal(self, goal: Goal, value: float) -> tuple[str, bool | None]:
        """A GPU goal applies on the GPU run only; the smoke run shows it for reference."""
        return (f"{goal.text()} (GPU)", None) if self.smoke else (goal.text(), goal.met(value))

    def report(self, what: str, value: str) -> None:
        emit(self.name, what, value)


# ----------------------------------------------------------------------------- section: env


def section_env(ctx: Ctx) -> None:
    """Versions and device (read from package metadata: importing everything here would only cost time)."""
    import importlib.metadata
    import importlib.util

    import torch

    versions = []
    for name in ("torch", "transformers", "diffusers", "accelerate", "peft", "webdataset", "braceexpand"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} MISSING")
    emit(ctx.name, "versions", ", ".join(versions))
    emit(ctx.name, "python", sys.version.split()[0])
    if ctx.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        emit(ctx.name, "device", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    else:
        emit(ctx.name, "device", f"CPU, {torch.get_num_threads()} thread(s) (smoke run: not GPU figures)")
    present = [name for name in FORBIDDEN if importlib.util.find_spec(name) is not None]
    emit(ctx.name, "ray / wandb / vllm installed", ", ".join(present) + " (unused)" if present else "none")
    if "vllm" not in present:
        emit(ctx.name, "vLLM captioner", VLLM_NOTE)


# ----------------------------------------------------------------------------- sections: the benchmarks'


def section_refocus(ctx: Ctx) -> None:
    """Refocus attention (the path CUDA takes) against stock SDPA at the UNet's sizes, and its error."""
    import bench_refocus
    import torch

    dtype = torch.float16 if ctx.cuda else torch.float32
    error_goal = GOALS["refocus_error_fp16" if ctx.cuda else "refocus_error_fp32"]
    s = ctx.sizes
    for n, d in zip(s.attn_tokens, HEAD_SIZES):
        q, k, v, labels = bench_refocus.make_inputs(2, s.attn_heads, n, d, ctx.device, dtype, seed=n)
        t = bench_refocus.measure_time(q, k, v, labels, ("sdpa", "two_pass"), s.attn_iters, ctx.device)
        sdpa, refocus = t["sdpa"][0], t["two_pass"][0]
        shape = f"B=2 H={s.attn_heads} N={n} d={d} {str(dtype).replace('torch.', '')}"
        emit(ctx.name, f"{shape}: stock SDPA / refocus", f"{sdpa * 1e3:.3f} / {refocus * 1e3:.3f} ms")
        emit(ctx.name, f"{shape}: refocus / SDPA", f"{refocus / sdpa:.2f}x")
        err = bench_refocus.max_error(q, k, v, labels, "two_pass")
        emit(ctx.name, f"{shape}: max |error| vs float64 Eq. 5-9", f"{err:.2e}", error_goal.text(), error_goal.met(err))
        del q, k, v


def section_erase(ctx: Ctx) -> None:
    """The eraser with refocus on / off and stock diffusers inpainting: same components, steps, CFG."""
    import bench_erase

    s = ctx.sizes
    t0 = time.perf_counter()
    eraser, sd = bench_erase.build(not ctx.smoke, ctx.device, s.image)
    emit(ctx.name, "build SD 1.5 Inpainting" + (" (tiny)" if ctx.smoke else ", random weights"), f"{time.perf_counter() - t0:.1f} s")
    t = bench_erase.measure_erase(eraser, sd, s.image, s.steps, bench_erase.STRENGTH, s.repeats, ctx.device)
    on, off, stock = t["on"][0], t["off"][0], t["stock"][0]
    label = f"{s.image}², {s.steps} steps, {'fp16' if ctx.cuda else 'fp32'}, CFG"
    emit(ctx.name, f"{label}: eraser, refocus on", f"{on:.3f} s/image", *ctx.goal(GOALS["erase_seconds_gpu"], on))
    emit(ctx.name, f"{label}: eraser, refocus off", f"{off:.3f} s/image")
    emit(ctx.name, f"{label}: stock diffusers inpainting", f"{stock:.3f} s/image")
    emit(ctx.name, "refocus on / stock diffusers", f"{on / stock:.2f}x", *ctx.goal(GOALS["erase_vs_stock"], on / stock))
    emit(ctx.name, "refocus on / refocus off", f"{on / off:.2f}x", *ctx.goal(GOALS["erase_refocus_overhead"], on / off))


def section_train(ctx: Ctx) -> None:
    """Training images/s, bf16, LoRA + v*, pixels and latent cache, two batch sizes, peak memory."""
    import bench_train_gpu
    import torch

    s = ctx.sizes
    for batch_size in s.train_batches:
        for cached in (False, True):
            what = (f"{s.train_res}², {'bf16' if ctx.cuda else 'fp32'}, LoRA + v*, batch {batch_size}, "
                    f"{'latent cache' if cached else 'pixels (VAE each step)'}")
            try:
                rate, _, mem = bench_train_gpu.train_rate(ctx.device, not ctx.smoke, s.train_res, batch_size, cached,
                                                          s.train_warmup, s.train_steps)
            except torch.cuda.OutOfMemoryError:
                emit(ctx.name, what, "out of GPU memory", ok=False)
                continue
            goal = ctx.goal(GOALS["train_images_per_s_gpu"], rate) if cached else ("", None)
            emit(ctx.name, what, f"{rate:.1f} images/s, peak " + (f"{mem:.1f} GiB" if ctx.cuda else "n/a (CPU)"), *goal)


def section_mask2former(ctx: Ctx) -> None:
    """The data engine's Mask2Former segmenter (fp16 on GPU), batch 1 and 16, post-processing included."""
    import bench_segmenter

    bench_segmenter.measure_segmenter(ctx.device, not ctx.smoke, ctx.sizes.m2f_size, ctx.sizes.m2f_runs, ctx.report)


def section_llava(ctx: Ctx) -> None:
    """Captions/s of the data engine's transformers captioner with a LLaVA-1.5-7B-shaped model."""
    import bench_captioner

    bench_captioner.measure_captioner(ctx.device, not ctx.smoke, ctx.sizes.llava_tokens, ctx.sizes.llava_runs, ctx.report)
    emit(ctx.name, "vLLM backend", VLLM_NOTE)


# ----------------------------------------------------------------------------- section: gpu tests


def gpu_test_files() -> list[str]:
    """Test files that hold a ``gpu`` mark (found by text, as ``grep -rn mark.gpu tests`` does)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())


def section_tests(ctx: Ctx) -> None:
    """The ``gpu``-marked tests through pytest (skipped by the suite's conftest without CUDA)."""
    import importlib.util

    files = gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    if importlib.util.find_spec("vllm") is None:
        cmd += ["-k", "not vllm"]
        emit(ctx.name, "tests needing vLLM", "deselected (vLLM not installed there)")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else proc.stderr.strip().splitlines()[-1:]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    for line in failed[:10]:
        emit(ctx.name, "failure", line[:160], ok=False)
    emit(ctx.name, f"pytest -m gpu ({len(files)} files)", str(summary), "all pass", proc.returncode == 0)


SECTIONS: dict[str, tuple[Callable[[Ctx], None], int, int]] = {
    # name: (function, time limit on the GPU in s, time limit of the smoke run in s). The smoke
    # limits only catch hangs: each section needs 3-18 s of CPU, but shared CI cores can stretch
    # that several times over in wall time.
    "env": (section_env, 60, 240),
    "refocus": (section_refocus, 60, 240),
    "erase": (section_erase, 120, 240),
    "train": (section_train, 150, 240),
    "mask2former": (section_mask2former, 90, 240),
    "llava": (section_llava, 120, 240),
    "tests": (section_tests, 120, 240),
}


# ----------------------------------------------------------------------------- driver


def run_section_here(name: str, smoke: bool) -> int:
    """Child process: run one section, print its rows; an exception becomes a FAILED row."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    if smoke:
        torch.set_num_threads(1)  # a shared 2-core machine: thread barriers cost more than they gain
    device = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
    ctx = Ctx(smoke=smoke, sizes=SMOKE_SIZES if smoke else GPU_SIZES, device=device, name=name)
    code = 0
    try:
        SECTIONS[name][0](ctx)
    except Exception as exc:  # reported as a row; the parent runs the next section
        emit(name, "FAILED", f"{type(exc).__name__}: {first_line(exc)[:200]}", ok=False)
        import traceback

        traceback.print_exc()
        code = 1
    imported = [m for m in FORBIDDEN if m in sys.modules]
    if imported:
        emit(name, "imported ray/wandb/vllm", ", ".join(imported), "none", False)
        code = 1
    return code


def run_section_child(name: str, smoke: bool, limit: float) -> tuple[list[Row], str]:
    """Run a section in a fresh process (own CUDA context, memory freed after) within ``limit`` s."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name] + (["--cpu-smoke"] if smoke else [])
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    status = ""
    try:
        stdout, stderr = proc.communicate(timeout=limit)
        if proc.returncode != 0:
            status = f"exit code {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the section and anything it started
        stdout, stderr = proc.communicate()
        status = f"time limit {limit:.0f} s reached"
    rows = [Row(**json.loads(line[len(ROW_PREFIX):])) for line in stdout.splitlines() if line.startswith(ROW_PREFIX)]
    if status and stderr.strip():
        tail = stderr.strip().splitlines()[-1][:200]
        rows.append(Row(name, "stderr (last line)", tail, ok=False))
    return rows, status


def format_table(rows: list[Row]) -> str:
    """The rows as one aligned text table (section | measurement | value | goal | status)."""
    def status(r: Row) -> str:
        return "-" if r.ok is None else ("ok" if r.ok else "MISSED" if r.goal and r.what != "FAILED" else "FAILED")

    header = Row("section", "measurement", "value", "goal")
    cells = [(r.section, r.what, r.value, r.goal, "status" if r is header else status(r)) for r in [header, *rows]]
    widths = [min(max(len(c[i]) for c in cells), cap) for i, cap in enumerate((12, 70, 60, 24, 7))]
    lines = []
    for i, cell in enumerate(cells):
        lines.append(" | ".join(text.ljust(w) for text, w in zip(cell, widths)).rstrip())
        if i == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _children_cpu() -> float:
    """CPU seconds used so far by finished child processes (the sections)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="same code paths on CPU at tiny sizes (seconds, no GPU)")
    parser.add_argument("--only", default="", help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    parser.add_argument("--total-limit", type=float, default=470.0, help="seconds for the whole run (default 470)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section in this process
    args = parser.parse_args(argv)
    if args.section:
        return run_section_here(args.section, args.cpu_smoke)
    names = [n for n in args.only.split(",") if n] or list(SECTIONS)
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    start = time.perf_counter()
    rows: list[Row] = []
    failures = 0
    for name in names:
        left = args.total_limit - (time.perf_counter() - start)
        if left < 5:
            rows.append(Row(name, "not run", "total time limit reached", ok=False))
            failures += 1
            continue
        limit = min(SECTIONS[name][2 if args.cpu_smoke else 1], left)
        t0, cpu0 = time.perf_counter(), _children_cpu()
        section_rows, status = run_section_child(name, args.cpu_smoke, limit)
        rows.extend(section_rows)
        if status:
            rows.append(Row(name, "FAILED", status, ok=False))
        failures += bool(status) or any(r.what == "FAILED" for r in section_rows)
        print(f"[{name}] {time.perf_counter() - t0:.1f} s wall, {_children_cpu() - cpu0:.1f} s CPU"
              f"{': ' + status if status else ''}", flush=True)
    leaked = [r for r in rows if r.what == "imported ray/wandb/vllm"]
    rows.append(Row("all", "ray / wandb / vllm imported by any section", "yes: see above" if leaked else "none", "none", not leaked))
    kind = "CPU smoke run (tiny sizes: not GPU figures)" if args.cpu_smoke else "GPU acceptance run"
    print(f"\nmagiceraser {kind}, {time.perf_counter() - start:.0f} s in all")
    print(format_table(rows))
    missed = sum(1 for r in rows if r.ok is False and r.what != "FAILED")
    print(f"\nsections: {len(names)} run, {failures} failed; rows below a goal or failing a check: {missed}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
