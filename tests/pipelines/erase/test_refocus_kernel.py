"""The compiled one-pass CPU refocus kernel: its contract against float64, its build cache keyed on content."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys

import pytest
import torch

from magiceraser.pipelines.erase import refocus_kernel as rk
from magiceraser.pipelines.erase.refocus import _refocus_coefficients, refocused_attention
from magiceraser.pipelines.erase.refocus_reference import attention_with_extrema_term, refocus_eq5_9

CAN_BUILD = rk._compiler() is not None and "mkl" in torch.__config__.show().lower()
needs_kernel = pytest.mark.skipif(not CAN_BUILD, reason="needs a C++ compiler and an MKL-linked torch (x86 builds)")


def rand(b, h, n, d, dv=None, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, h, n, d, generator=g) * scale for _ in range(2))
    v = torch.randn(b, h, n, dv or d, generator=g)
    return q, k, v, g


@needs_kernel
def test_the_kernel_builds_and_passes_its_self_check_wherever_it_can():
    """CI runs on a machine with g++ and MKL torch: a build that silently fell back would show here."""
    assert rk.load() is not None, rk.unavailable_reason()
    assert rk.unavailable_reason() is None


@pytest.mark.numeric
@needs_kernel
@pytest.mark.parametrize(
    "b,h,n,d,dv",
    [(2, 8, 96, 40, 40), (2, 8, 64, 80, 80), (1, 2, 40, 160, 160), (2, 3, 700, 16, 16), (1, 2, 130, 24, 7)],
)
def test_matches_the_float64_contract_at_unet_head_sizes_and_block_edges(b, h, n, d, dv):
    """Random coefficient tables (not only the method's): any (S_max, S_min)-linear M per label pair."""
    q, k, v, g = rand(b, h, n, d, dv, seed=n)
    labels = torch.randint(0, 3, (b, n), generator=g)
    coef_max, coef_min = torch.randn(3, 3, generator=g), torch.randn(3, 3, generator=g)
    out = rk.refocus(q, k, v, labels, coef_max, coef_min)
    # n = 700 spans two key blocks (512) in a group and eleven query blocks (64); 130 a partial one.
    torch.testing.assert_close(out.double(), attention_with_extrema_term(q, k, v, labels, coef_max, coef_min), atol=2e-5, rtol=1e-4)


@pytest.mark.numeric
@pytest.mark.parametrize("lambda_pos,lambda_neg", [(0.8, 1.0), (0.3, 0.5)])
def test_the_contract_with_the_methods_coefficients_is_eq_5_9(lambda_pos, lambda_neg):
    """The kernel is checked against the general (S_max, S_min)-linear form; with the coefficient
    tables refocused_attention hands it, that form must be Eq. 5-9 itself."""
    q, k, v, g = rand(2, 3, 50, 8, seed=7, scale=1.5)
    labels = torch.randint(0, 3, (2, 50), generator=g)
    cm, cn = _refocus_coefficients(lambda_pos, lambda_neg, torch.float64, "cpu")
    torch.testing.assert_close(attention_with_extrema_term(q, k, v, labels, cm, cn),
                               refocus_eq5_9(q, k, v, labels, lambda_pos, lambda_neg), atol=1e-12, rtol=1e-10)


@pytest.mark.numeric
@needs_kernel
def test_large_logits_empty_groups_and_rows_with_their_own_labels():
    """Scores of ±400 (exp underflows to denormals unless clamped), a row with one label only and a
    row with two: every row uses its own key groups."""
    q, k, v, g = rand(2, 2, 90, 8, seed=3, scale=7.0)
    labels = torch.stack([torch.full((90,), 2), torch.randint(0, 2, (90,), generator=g)])
    cm, cn = _refocus_coefficients(0.8, 1.0, torch.float32, "cpu")
    out = rk.refocus(q, k, v, labels, cm, cn)
    torch.testing.assert_close(out.double(), attention_with_extrema_term(q, k, v, labels, cm, cn), atol=2e-5, rtol=1e-4)
    assert float((q @ k.transpose(-1, -2)).abs().max()) > 300


@pytest.mark.numeric
@needs_kernel
def test_threads_split_the_work_without_changing_a_bit():
    q, k, v, g = rand(2, 4, 300, 16, seed=5)
    labels = torch.randint(0, 3, (2, 300), generator=g)
    cm, cn = torch.randn(3, 3, generator=g), torch.randn(3, 3, generator=g)
    lib = rk.load()
    one = rk._run(lib, q, k, v, labels, cm, cn, threads=1)
    three = rk._run(lib, q, k, v, labels, cm, cn, threads=3)
    assert torch.equal(one, three)


@pytest.mark.numeric
@needs_kernel
def test_kernel_path_of_refocused_attention_and_its_argument_checks():
    q, k, v, g = rand(1, 2, 50, 8, seed=6)
    labels = torch.randint(0, 3, (1, 50), generator=g)
    cm, cn = _refocus_coefficients(0.6, 0.5, torch.float32, "cpu")
    out = refocused_attention(q, k, v, labels, lambda_pos=0.6, lambda_neg=0.5, _path="kernel")
    torch.testing.assert_close(out.double(), attention_with_extrema_term(q, k, v, labels, cm, cn), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="float32"):
        refocused_attention(q.double(), k.double(), v.double(), labels, _path="kernel")
    with pytest.raises(ValueError, match="values 0, 1, 2"):
        rk.refocus(q, k, v, labels + 1, cm, cn)


# ------------------------------------------------------------------------- build and cache


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(rk.ENV_CACHE, str(tmp_path / "kernels"))
    monkeypatch.delenv(rk.ENV_SWITCH, raising=False)
    return tmp_path / "kernels"


def built(cache):
    return sorted(p.name for p in cache.glob("*.so"))


@needs_kernel
def test_cache_is_keyed_on_the_source_and_a_corrupt_binary_is_rebuilt(fresh_cache, tmp_path, monkeypatch):
    assert rk._try_load() is not None
    first = built(fresh_cache)
    assert len(first) == 1 and (fresh_cache / first[0]).with_suffix(".json").is_file()
    assert rk._try_load() is not None and built(fresh_cache) == first  # reused, not rebuilt

    # Another source (here: one more comment line) is another binary, never the stale one.
    changed = tmp_path / "refocus_cpu.cpp"
    changed.write_text(rk.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(rk, "SOURCE", changed)
    assert rk._try_load() is not None
    assert len(built(fresh_cache)) == 2

    # A truncated file under the cached name (a killed copy, a foreign file) is rebuilt, once. In a
    # fresh process: this one has the good binary mapped, and dlopen answers a loaded name from memory.
    target = fresh_cache / [n for n in built(fresh_cache) if n not in first][0]
    target.unlink()
    target.write_bytes(b"\x7fELF not really")
    code = (
        "import pathlib, sys\n"
        "from magiceraser.pipelines.erase import refocus_kernel as rk\n"
        "rk.SOURCE = pathlib.Path(sys.argv[1])\n"
        "assert rk._try_load() is not None, rk._reason\n"
    )
    subprocess.run([sys.executable, "-c", code, str(changed)], check=True, env={**os.environ})
    assert target.stat().st_size > 1000
    ctypes.CDLL(str(target))


@needs_kernel
def test_a_kernel_that_computes_wrong_is_refused_by_its_self_check(fresh_cache, tmp_path, monkeypatch):
    broken = tmp_path / "refocus_cpu.cpp"
    src = rk.SOURCE.read_text()
    assert "smax[r] * a.coef[li * 3 + g]" in src
    broken.write_text(src.replace("smax[r] * a.coef[li * 3 + g]", "smin[r] * a.coef[li * 3 + g]"))
    monkeypatch.setattr(rk, "SOURCE", broken)
    assert rk._try_load() is None
    assert "self-check against float64 failed" in rk._reason


def test_switched_off_or_without_a_compiler_the_stock_paths_remain(fresh_cache, monkeypatch):
    monkeypatch.setenv(rk.ENV_SWITCH, "0")
    assert rk._try_load() is None and "MAGICERASER_CPU_KERNEL=0" in rk._reason
    monkeypatch.delenv(rk.ENV_SWITCH)
    monkeypatch.setattr(rk, "_compiler", lambda: None)
    assert rk._try_load() is None and "no C++ compiler" in rk._reason
    assert not fresh_cache.exists()


@needs_kernel
def test_a_failed_build_is_reported_not_raised(fresh_cache, tmp_path, monkeypatch):
    bad = tmp_path / "refocus_cpu.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(rk, "SOURCE", bad)
    assert rk._try_load() is None and rk._reason.startswith("build failed")
    assert built(fresh_cache) == [] and not list(fresh_cache.glob("*.tmp"))


def test_build_key_names_what_the_binary_depends_on():
    compiler = rk._compiler() or shutil.which("sh")
    key = rk.build_key(compiler)
    assert set(key) >= {"source_sha256", "compiler_version", "flags", "cpu_flags_sha256", "torch_version", "torch_lib"}
    assert "-march=native" in key["flags"]
