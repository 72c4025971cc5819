"""The one-pass CPU refocus kernel (``refocus_cpu.cpp``): compiled on first use, cached by content.

The kernel is plain C++ with a C ABI, called through ctypes on the tensors' memory. It is built
with the machine's C++ compiler (``$CXX``, else ``c++`` / ``g++``) into a shared object under
``$MAGICERASER_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/magiceraser/kernels``, i.e.
``~/.cache/magiceraser/kernels``), named by a digest of everything the binary depends on: the
source, the compiler and its flags, the CPU's instruction-set flags (it is built with
``-march=native``, so a cache shared by different machines, e.g. a home directory on NFS, holds one
binary per CPU kind), the torch version and the torch library it links. A changed key means a new
build, never a stale binary. The build writes a temporary file and renames it, so concurrent first
uses are safe. A freshly loaded binary is checked against the float64 reference
(:mod:`magiceraser.pipelines.erase.refocus_reference`) on a small problem before it is used.

Where it cannot be built or loaded (no compiler, a torch built without MKL's ``sgemm_``, a failed
self-check) :func:`load` returns None, :func:`unavailable_reason` says why, one warning is logged,
and refocused_attention keeps its stock-kernel paths. ``MAGICERASER_CPU_KERNEL=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from magiceraser.pipelines.erase.refocus_reference import attention_with_extrema_term

log = logging.getLogger(__name__)

__all__ = ["load", "unavailable_reason", "refocus", "build_key", "cache_dir", "Q_BLOCK", "K_BLOCK"]

SOURCE = Path(__file__).with_name("refocus_cpu.cpp")
# -fassociative-math lets gcc vectorise the row sums (without it the kernel is measurably slower:
# benchmarks/README.md); finite-math is safe because the kernel never forms an infinity (±FLT_MAX sentinels, clamped exp).
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffinite-math-only", "-fno-signed-zeros", "-fno-trapping-math",
          "-fassociative-math", "-fno-rounding-math", "-fPIC", "-shared", "-std=c++17", "-pthread"]
# Queries and keys per block: the scores of a block (64 × 512 floats, 128 KiB) stay in L2; smaller
# blocks pay more per-block overhead, larger ones leave the cache (benchmarks/README.md).
Q_BLOCK = 64
K_BLOCK = 512
ENV_SWITCH = "MAGICERASER_CPU_KERNEL"
ENV_CACHE = "MAGICERASER_KERNEL_CACHE"

_reason: str | None = None


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "magiceraser" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def _torch_lib() -> Path:
    return Path(torch.__file__).parent / "lib"


def build_key(compiler: str) -> dict:
    """What the binary depends on; its digest names the cached file."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    return {
        "source_sha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        "compiler": compiler,
        "compiler_version": version[0] if version else "",
        "flags": CFLAGS,
        "machine": platform.machine(),
        "cpu_flags_sha256": hashlib.sha256(_cpu_flags().encode()).hexdigest(),
        "torch_version": torch.__version__,
        "torch_lib": str(_torch_lib()),
    }


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _compile(compiler: str, target: Path, key: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    lib = str(_torch_lib())
    cmd = [compiler, *CFLAGS, str(SOURCE), "-o", tmp, f"-L{lib}", "-ltorch_cpu", f"-Wl,-rpath,{lib}", "-Wl,--no-undefined"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {(res.stderr or res.stdout).strip()[-800:]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    info = target.with_suffix(".json")
    tmp_info = info.with_name(info.name + f".{os.getpid()}.tmp")
    tmp_info.write_text(json.dumps(key, indent=1, sort_keys=True))
    os.replace(tmp_info, info)


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    fn = lib.me_refocus
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    fn.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i64, ctypes.c_float, p, p, c_int, c_int, c_int]
    fn.restype = c_int
    return lib


def _self_check(lib: ctypes.CDLL) -> str | None:
    """A small problem (an empty label group, key and query block edges, dv < d) against float64."""
    g = torch.Generator().manual_seed(0)
    b, h, n, d, dv = 2, 2, 70, 8, 5
    q, k = (torch.randn(b, h, n, d, generator=g) for _ in range(2))
    v = torch.randn(b, h, n, dv, generator=g)
    labels = torch.stack([torch.randint(0, 3, (n,), generator=g), torch.randint(0, 2, (n,), generator=g) * 2])
    coef_max, coef_min = torch.randn(3, 3, generator=g), torch.randn(3, 3, generator=g)
    out = _run(lib, q, k, v, labels, coef_max, coef_min, q_block=16, k_block=16)
    worst = float((out.double() - attention_with_extrema_term(q, k, v, labels, coef_max, coef_min)).abs().max())
    return None if worst < 1e-4 else f"self-check against float64 failed (max error {worst:.3g})"


def _try_load() -> ctypes.CDLL | None:
    global _reason
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        _reason = f"turned off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
        return None
    compiler = _compiler()
    if compiler is None:
        _reason = "no C++ compiler found (set CXX, or install g++)"
        return None
    key = build_key(compiler)
    target = cache_dir() / f"refocus_cpu-{_digest(key)}.so"
    lib = None
    for attempt in range(2):
        try:
            if not target.exists():
                _compile(compiler, target, key)
            lib = _bind(target)
            break
        except OSError as exc:  # a truncated or foreign file under the cached name: build it again, once
            if attempt == 0 and target.exists():
                log.warning("refocus CPU kernel: cannot load %s (%s); rebuilding it", target, exc)
                target.unlink(missing_ok=True)
                continue
            _reason = f"cannot load {target}: {exc}"
            return None
        except (RuntimeError, subprocess.SubprocessError) as exc:
            _reason = f"build failed: {exc}"
            return None
    bad = _self_check(lib)
    if bad:
        _reason = f"{target}: {bad}"
        return None
    return lib


@functools.cache
def load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None (see :func:`unavailable_reason`) where it cannot be had."""
    lib = _try_load()
    if lib is None:
        log.warning("refocus CPU kernel unavailable, using the stock-kernel path: %s", _reason)
    return lib


def unavailable_reason() -> str | None:
    load()
    return _reason


def _run(lib, q, k, v, labels, coef_max, coef_min, q_block=Q_BLOCK, k_block=K_BLOCK, threads=None):
    b, h, n, d = q.shape
    dv = v.shape[-1]
    labels = labels.to(torch.int64).contiguous()
    # Keys and values sorted by label (stable) so that each label group is one contiguous range.
    # (index_select into preallocated tensors: a gather over the (H, N, d) views is many times slower)
    order = torch.argsort(labels, dim=1, stable=True)
    k_sorted = torch.empty(b, h, n, d, dtype=torch.float32)
    v_sorted = torch.empty(b, h, n, dv, dtype=torch.float32)
    for row in range(b):
        torch.index_select(k[row], 1, order[row], out=k_sorted[row])
        torch.index_select(v[row], 1, order[row], out=v_sorted[row])
    counts = torch.stack([(labels == label).sum(1) for label in range(3)], dim=1)
    bounds = torch.cat([counts.new_zeros(b, 1), counts.cumsum(1)], dim=1).contiguous()  # 0, n_m, n_m + n_p, N
    coef = torch.cat([coef_max.reshape(9), coef_min.reshape(9)]).to(torch.float32).contiguous()
    q = q.contiguous()
    out = torch.empty(b, h, n, dv, dtype=torch.float32)
    rc = lib.me_refocus(
        q.data_ptr(), k_sorted.data_ptr(), v_sorted.data_ptr(), bounds.data_ptr(), labels.data_ptr(),
        b, h, n, d, dv, 1.0 / math.sqrt(d), coef.data_ptr(), out.data_ptr(),
        threads or torch.get_num_threads(), q_block, k_block,
    )
    if rc != 0:
        raise RuntimeError(f"me_refocus returned {rc} for shapes {tuple(q.shape)}, {tuple(v.shape)}")
    return out


def refocus(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, labels: torch.Tensor,
            coef_max: torch.Tensor, coef_min: torch.Tensor) -> torch.Tensor:
    """softmax((S + M)/√d) V in one pass, M[i, j] = S_max[i]·coef_max[l_i, l_j] + S_min[i]·coef_min[l_i, l_j].

    q, k: (B, H, N, d), v: (B, H, N, dv ≤ d), float32 CPU; labels (B, N) in {0, 1, 2}; coef_max,
    coef_min: 3×3 (row: query label, column: key label). Its float64 reference is
    :func:`magiceraser.pipelines.erase.refocus_reference.attention_with_extrema_term`.
    """
    lib = load()
    if lib is None:
        raise RuntimeError(f"the refocus CPU kernel is unavailable: {_reason}")
    if not (q.dtype == k.dtype == v.dtype == torch.float32) or q.device.type != "cpu":
        raise ValueError("the refocus CPU kernel takes float32 CPU tensors")
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, H, N, d) and v (B, H, N, dv); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if labels.shape != (q.shape[0], q.shape[2]) or labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 2):
        raise ValueError(f"labels must be (B, N) = {(q.shape[0], q.shape[2])} with values 0, 1, 2")
    if coef_max.shape != (3, 3) or coef_min.shape != (3, 3):
        raise ValueError("coef_max and coef_min must be 3×3")
    return _run(lib, q, k, v, labels, coef_max, coef_min)
