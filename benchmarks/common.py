"""What the benchmarks share: timing on CPU and CUDA, peak memory, models built on the device.

Imported by the bench_* scripts and gpu_acceptance.py (all run as ``python benchmarks/X.py``, so
this folder is on ``sys.path``). torch is imported inside the functions: the acceptance run's
parent process never imports it.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any


def is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")


def sync(device: Any) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a wall time covers the work itself."""
    import torch

    if is_cuda(device):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one synchronised call."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def best_interleaved(calls: dict[str, Callable[[], Any]], device: Any, repeats: int,
                     warmup: int = 1) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) seconds of each call over ``repeats`` rounds after ``warmup`` calls each.

    The calls alternate within each round, so drift in the machine's load (other processes, GPU
    clocks) falls on all of them alike; their ratios are what the goals judge.
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()  # kernels, allocator, autotuning, thread pools
    best = {name: (math.inf, math.inf) for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            wall, cpu = timed(fn, device)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def reset_peak(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: Any) -> float:
    """Peak GPU memory allocated since :func:`reset_peak`, GiB (nan on CPU)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if is_cuda(device) else math.nan


def peak_text(device: Any) -> str:
    return f"{peak_gib(device):.1f} GiB" if is_cuda(device) else "n/a (CPU)"


@contextlib.contextmanager
def built_on(device: Any, dtype=None) -> Iterator[None]:
    """Create parameters directly on ``device`` (and in ``dtype``): random init of billions of
    weights takes seconds on a GPU and minutes on its host CPU."""
    import torch

    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


_TOKENIZER_DIR: list[str] = []


def sd_parts(device: Any, full: bool, seed: int = 0) -> dict[str, Any]:
    """SD 1.5 Inpainting components with random weights (full: the real configs, CLIP's 49408-token
    embedding table; else the tiny test model), built on ``device``. The CLIP tokenizer files are
    written once per process (learning its merges takes seconds)."""
    from magiceraser.tiny_models.clip_tokenizer import write_clip_tokenizer
    from magiceraser.tiny_models.sd_inpaint import build_sd_inpaint

    if not _TOKENIZER_DIR:
        import atexit
        import shutil

        _TOKENIZER_DIR.append(tempfile.mkdtemp(prefix="bench-clip-tokenizer-"))
        atexit.register(shutil.rmtree, _TOKENIZER_DIR[0], True)
        write_clip_tokenizer(_TOKENIZER_DIR[0])
    with built_on(device):
        return build_sd_inpaint(full=full, seed=seed, tokenizer_dir=_TOKENIZER_DIR[0])


def default_device(tiny: bool) -> str:
    """CUDA where a GPU is visible and the full-size run is asked for, else CPU (saying so when not asked)."""
    import torch

    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    if device == "cpu" and not tiny:
        print("no CUDA GPU: the tiny model on CPU (not a GPU figure)")
    return device


def print_row(what: str, value: str) -> None:
    """A benchmark's figure as one indented line (the report callback of the measuring functions)."""
    print(f"  {what}: {value}", flush=True)
