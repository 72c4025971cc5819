"""One prepared acceptance run of every GPU path of magiceraser, printed as one table (issue 14).

Why one script: the GPU machine comes now and then for ~15 minutes in all (start-up included),
one H100/H200, no internet, a preinstalled stack (python3, torch 2.11 + CUDA 13, transformers
5.17, accelerate 1.15, peft, safetensors, torchmetrics, scikit-image, opencv; no diffusers,
webdataset, braceexpand, Ray, wandb, vLLM). Everything must therefore be ready before it comes,
run in one go in under 8 minutes (model building included) so that a second try fits, and
report every section even when one of them fails.

On the GPU machine
------------------
Carry this work tree plus ``.whl/`` (ignored by git, 14 wheels, 8.3 MiB: far under the 64 MiB carry limit),
made on a machine with the package index by::

    pip download --no-deps --only-binary=:all: --platform any --python-version 3.11 --implementation py -d .whl \\
        diffusers==0.42.1 webdataset==1.0.2 braceexpand==0.1.7 importlib_metadata==10.2.0 zipp==4.1.2 \\
        requests==2.34.2 urllib3==2.8.0 charset-normalizer==3.5.3 idna==3.20 certifi==2026.10.19.post1 \\
        pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0

(``bash benchmarks/gpu_acceptance.sh --download`` runs exactly that line.) The versions are those
of the project's tested environment. diffusers, webdataset and braceexpand are what the machine
lacks; requests, importlib_metadata, zipp (diffusers) and pytest, pluggy, iniconfig, pygments
(the ``gpu``-marked tests) are carried in case its stack lacks them: the install takes a carried
wheel only for a requirement that is not already satisfied. vLLM is not carried (its wheel is
hundreds of MiB): captions are measured through the transformers backend. Then, there::

    bash benchmarks/gpu_acceptance.sh

which installs into a virtual environment that sees the preinstalled packages
(``python3 -m venv --system-site-packages``; nothing of the machine's own stack is changed)::

    pip install --no-index --find-links .whl diffusers==0.42.1 webdataset==1.0.2 braceexpand==0.1.7 pytest==9.2.0
    pip install --no-deps --no-index --no-build-isolation -e .

(falling back to unpacking the pure-Python wheels onto PYTHONPATH if pip cannot install), and
runs ``python benchmarks/gpu_acceptance.py`` under ``timeout 480``. Neither Ray, wandb, vLLM nor
the network is needed: every model is a full-size architecture with random weights built on the
GPU (SD 1.5 Inpainting from the project's real configs with CLIP's 49408-token embedding table;
Mask2Former Swin-L COCO panoptic, saved to local disk and loaded through the data engine's
segmenter; LLaVA-1.5-7B shapes, in memory, handed to the data engine's captioner).

Sections (each in its own subprocess with its own time limit: a crash, an out-of-memory error or
a hang in one is reported and the others still run; rows are printed as they are measured, so a
section cut by its limit still reports what it had):

* ``env``: versions, device, and that Ray, wandb and vLLM are absent or unused.
* ``refocus``: refocused attention (the CUDA path: augmented-head SDPA) against stock SDPA at
  N = 4096/1024/256 with the UNet's head sizes 40/80/160, fp16, and its largest error against a
  float64 transcription of Eq. 5-9.
* ``erase``: 512², 50 steps (strength 1.0: 50 UNet evaluations with CFG each), fp16: the eraser
  with refocus on, off, and stock diffusers ``StableDiffusionInpaintPipeline`` on the same
  components and DDIM scheduler. Goals: on ≤ 1.2× stock, ≤ 1.0 s per image.
* ``train``: the Trainer's own step, 512², bf16, LoRA + v*, pixels (VAE every step) and the latent
  cache, at two batch sizes; images/s and peak memory. Goal: ≥ 80 images/s with the cache.
* ``mask2former``: Swin-L fp16 images/s at batch 1 and 16, post-processing included (threshold 0:
  every query is post-processed, an upper bound on that cost with random weights).
* ``llava``: captions/s through the transformers backend at batch 1 and 32 (77 new tokens).
* ``tests``: the ``gpu``-marked tests (files found by grepping tests/ for the mark; tests that
  need vLLM deselected when vLLM is absent, and said so).

``--cpu-smoke`` runs the same code paths on CPU at tiny sizes (a test in ``make test`` does, so
the script cannot rot between GPU runs); its numbers are not GPU figures and no goal applies.

torch there is 2.11 (ours 2.13): only APIs present in 2.11 are used on the GPU path
(``torch.device`` as a context manager, ``torch.cuda.max_memory_allocated``/``Event``,
``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` on CPU, all older than 2.4).

    python benchmarks/gpu_acceptance.py [--cpu-smoke] [--only erase,train] [--total-limit 470]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    m2f_batches: tuple[int, int]
    m2f_images: tuple[int, int]
    m2f_size: int
    llava_batches: tuple[int, int]
    llava_images: tuple[int, int]
    llava_tokens: int


GPU_SIZES = Sizes(
    image=512, steps=50, repeats=3, attn_tokens=(4096, 1024, 256), attn_heads=8, attn_iters=20,
    train_res=512, train_batches=(8, 16), train_warmup=3, train_steps=10,
    m2f_batches=(1, 16), m2f_images=(8, 32), m2f_size=512,
    llava_batches=(1, 32), llava_images=(3, 32), llava_tokens=77,
)
SMOKE_SIZES = Sizes(
    image=64, steps=2, repeats=1, attn_tokens=(64, 16, 4), attn_heads=2, attn_iters=2,
    train_res=64, train_batches=(1, 2), train_warmup=1, train_steps=1,
    m2f_batches=(1, 2), m2f_images=(1, 2), m2f_size=64,
    llava_batches=(1, 2), llava_images=(1, 2), llava_tokens=3,
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
    out: list[Row] = field(default_factory=list)

    def goal(self, text: str, ok: bool) -> tuple[str, bool | None]:
        """A goal applies on the GPU run only; the smoke run shows it for reference."""
        return (f"{text} (GPU)", None) if self.smoke else (text, ok)

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def build_on_device(self, dtype=None) -> Iterator[None]:
        """Create parameters directly on the device (and in ``dtype``): random init of billions of
        weights is seconds on a GPU and minutes on its host CPU."""
        import torch

        previous = torch.get_default_dtype()
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            with torch.device(self.device):
                yield
        finally:
            torch.set_default_dtype(previous)


def best_time(fn: Callable[[], Any], ctx: Ctx, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up (device synchronised around each)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        ctx.sync()
        t0 = time.perf_counter()
        fn()
        ctx.sync()
        best = min(best, time.perf_counter() - t0)
    return best


def median_time(fn: Callable[[], Any], ctx: Ctx, iters: int) -> float:
    """Median wall time of ``iters`` synchronised calls after three warm-ups (kernel timings)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        ctx.sync()
        t0 = time.perf_counter()
        fn()
        ctx.sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def peak_gib(ctx: Ctx) -> str:
    import torch

    if not ctx.device.startswith("cuda"):
        return "n/a (CPU)"
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"


def reset_peak(ctx: Ctx) -> None:
    import gc

    import torch

    gc.collect()
    if ctx.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


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


# ----------------------------------------------------------------------------- section: refocus kernel


def reference_refocus(q, k, v, labels, lambda_pos: float = 0.8, lambda_neg: float = 1.0):
    """Eq. 5-9 with full N×N matrices in float64, one batch element at a time (bounded memory)."""
    import torch

    from magiceraser.pipelines.erase.refocus import NEG_TABLE, POS_TABLE

    pos = torch.tensor(POS_TABLE, dtype=torch.float64, device=q.device)
    neg = torch.tensor(NEG_TABLE, dtype=torch.float64, device=q.device)
    outs = []
    for b in range(q.shape[0]):
        qb, kb, vb = q[b].double(), k[b].double(), v[b].double()
        lab = labels[b].long()
        s = qb @ kb.transpose(-1, -2)
        s_max, s_min = s.amax(-1, keepdim=True), s.amin(-1, keepdim=True)
        mask_pos, mask_neg = pos[lab][:, lab], neg[lab][:, lab]  # (N, N) Eq. 7, Eq. 8
        m = ((1 - lambda_pos) * s_min + lambda_pos * s_max) * mask_pos - lambda_neg * s_max * mask_neg
        outs.append(torch.softmax((s + m) / math.sqrt(q.shape[-1]), dim=-1) @ vb)
        del s, mask_pos, mask_neg, m
    return torch.stack(outs)


def section_refocus(ctx: Ctx) -> None:
    """Refocus attention (the path CUDA takes) against stock SDPA at the UNet's sizes, and its error."""
    import torch
    import torch.nn.functional as F

    from magiceraser.pipelines.erase.refocus import refocused_attention

    dtype = torch.float16 if ctx.device.startswith("cuda") else torch.float32
    s = ctx.sizes
    for n, d in zip(s.attn_tokens, HEAD_SIZES):
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(2, s.attn_heads, n, d, generator=g).to(ctx.device, dtype) for _ in range(3))
        labels = torch.randint(0, 3, (2, n), generator=g).to(ctx.device)
        t_sdpa = median_time(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), ctx, s.attn_iters)
        t_ref = median_time(lambda q=q, k=k, v=v, lab=labels: refocused_attention(q, k, v, lab, _path="sdpa"), ctx, s.attn_iters)
        shape = f"B=2 H={s.attn_heads} N={n} d={d} {str(dtype).replace('torch.', '')}"
        emit(ctx.name, f"{shape}: stock SDPA / refocus", f"{t_sdpa * 1e3:.3f} / {t_ref * 1e3:.3f} ms")
        emit(ctx.name, f"{shape}: refocus / SDPA", f"{t_ref / t_sdpa:.2f}x")
        out = refocused_attention(q, k, v, labels, _path="sdpa")
        err = (out.double() - reference_refocus(q, k, v, labels)).abs().max().item()
        tol = 1e-2 if dtype == torch.float16 else 1e-4
        emit(ctx.name, f"{shape}: max |error| vs float64 Eq. 5-9", f"{err:.2e}", f"< {tol:g}", err < tol)
        del q, k, v, out


# ----------------------------------------------------------------------------- section: erase


def erase_scene(size: int):
    """A textured image, a box mask and a grass-with-person segmentation (three refocus labels)."""
    import numpy as np

    from magiceraser import coco
    from magiceraser.panoptic import PanopticResult, Segment

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), bool)
    mask[size // 4 : size // 2, size // 3 : 2 * size // 3] = True
    seg = np.ones((size, size), np.int32)
    seg[size // 5 : 3 * size // 5, size // 4 : 3 * size // 4] = 2
    pan = PanopticResult(seg, [Segment(1, coco.BY_NAME["grass-merged"].label), Segment(2, coco.BY_NAME["person"].label)])
    return image, mask, pan


_TOKENIZER_DIR: list[str] = []


def sd_parts(ctx: Ctx) -> dict[str, Any]:
    """SD 1.5 Inpainting components (full: the real configs, 49408-token embedding table) built on
    the device; the CLIP tokenizer files are written once per process (learning its merges takes seconds)."""
    from magiceraser.tiny_models.clip_tokenizer import write_clip_tokenizer
    from magiceraser.tiny_models.sd_inpaint import build_sd_inpaint

    if not _TOKENIZER_DIR:
        import atexit
        import shutil

        _TOKENIZER_DIR.append(tempfile.mkdtemp(prefix="accept-clip-tokenizer-"))
        atexit.register(shutil.rmtree, _TOKENIZER_DIR[0], True)
        write_clip_tokenizer(_TOKENIZER_DIR[0])
    with ctx.build_on_device():
        return build_sd_inpaint(full=not ctx.smoke, seed=0, tokenizer_dir=_TOKENIZER_DIR[0])


def build_sd(ctx: Ctx):
    """SD 1.5 Inpainting (full: the real configs) as a stock diffusers pipeline with DDIM, on the device."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    dtype = torch.float16 if ctx.device.startswith("cuda") else torch.float32
    parts = sd_parts(ctx)
    scheduler = DDIMScheduler.from_config(parts.pop("scheduler").config)
    sd = StableDiffusionInpaintPipeline(**parts, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False)
    sd.to(ctx.device, dtype)
    sd.set_progress_bar_config(disable=True)
    return sd


def section_erase(ctx: Ctx) -> None:
    """The eraser with refocus on / off and stock diffusers inpainting: same components, steps, CFG."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0
    from PIL import Image

    from magiceraser.panoptic import dominant_background_tag
    from magiceraser.pipelines import MagicEraserPipeline
    from magiceraser.pipelines.erase.pipeline import choose_prompt

    s = ctx.sizes
    t0 = time.perf_counter()
    sd = build_sd(ctx)
    eraser = MagicEraserPipeline(sd, model_size=s.image)
    emit(ctx.name, "build SD 1.5 Inpainting" + (" (tiny)" if ctx.smoke else ", random weights"), f"{time.perf_counter() - t0:.1f} s")
    image, mask, pan = erase_scene(s.image)
    image_pil, mask_pil = Image.fromarray(image), Image.fromarray(mask.astype("uint8") * 255)
    prompt = choose_prompt(None, dominant_background_tag(pan, mask), None)  # what the eraser prompts with

    def erase(refocus: bool) -> None:
        # crop_margin 10: the crop is the whole image, so the UNet runs at image × image.
        eraser(image, mask, pan=pan, num_inference_steps=s.steps, strength=1.0, refocus=refocus, seed=0,
               crop_margin=10.0, mask_dilation=4)

    def stock() -> None:
        sd.unet.set_attn_processor(AttnProcessor2_0())  # the eraser reinstalls its processors itself
        sd(prompt=prompt, image=image_pil, mask_image=mask_pil, height=s.image, width=s.image, strength=1.0,
           num_inference_steps=s.steps, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(0), output_type="np")

    times = {"on": math.inf, "off": math.inf, "stock": math.inf}
    calls = {"on": lambda: erase(True), "off": lambda: erase(False), "stock": stock}
    for fn in calls.values():
        fn()  # warm-up: kernels, allocator, cuDNN autotune
    for _ in range(s.repeats):  # interleaved, so any drift hits all three alike
        for name, fn in calls.items():
            ctx.sync()
            t1 = time.perf_counter()
            fn()
            ctx.sync()
            times[name] = min(times[name], time.perf_counter() - t1)
    label = f"{s.image}², {s.steps} steps, {'fp16' if ctx.device.startswith('cuda') else 'fp32'}, CFG"
    emit(ctx.name, f"{label}: eraser, refocus on", f"{times['on']:.3f} s/image", *ctx.goal("<= 1.0 s", times["on"] <= 1.0))
    emit(ctx.name, f"{label}: eraser, refocus off", f"{times['off']:.3f} s/image")
    emit(ctx.name, f"{label}: stock diffusers inpainting", f"{times['stock']:.3f} s/image")
    emit(ctx.name, "refocus on / stock diffusers", f"{times['on'] / times['stock']:.2f}x",
         *ctx.goal("<= 1.2x", times["on"] <= 1.2 * times["stock"]))
    emit(ctx.name, "refocus on / refocus off", f"{times['on'] / times['off']:.2f}x")


# ----------------------------------------------------------------------------- section: train


def train_step_rate(ctx: Ctx, batch_size: int, cached: bool) -> tuple[float, str]:
    """Images/s of the Trainer's own step (its loop, optimizer, bf16 autocast) on a fixed batch."""
    import itertools

    import torch
    from diffusers import DDPMScheduler

    from magiceraser.config import build_config
    from magiceraser.training.config import TrainConfig
    from magiceraser.training.loop import Trainer

    s, cuda = ctx.sizes, ctx.device.startswith("cuda")
    res, lat = s.train_res, s.train_res // 8
    parts = sd_parts(ctx)
    parts["noise_scheduler"] = DDPMScheduler.from_config(parts.pop("scheduler").config)
    total = s.train_warmup + s.train_steps
    with tempfile.TemporaryDirectory() as tmp:
        out_dir, shard = Path(tmp) / "run", Path(tmp) / "olrd-000000.tar"
        shard.write_bytes(b"")  # the Trainer checks that its shards exist; the batches come from below
        cfg = build_config(TrainConfig, {
            "out_dir": str(out_dir), "device": "cuda" if cuda else "cpu",
            "data": {"urls": [str(shard)], "resolution": res, "batch_size": batch_size},
            "model": {"base_model": "random-full-size" if not ctx.smoke else "random-tiny"},
            "phases": {"total_steps": total, "textual_inversion_steps": 0},  # phase 2: v* and LoRA train
            "optim": {"mixed_precision": "bf16", "warmup_steps": 0},
            "checkpoint": {"every": 0}, "wandb": {"mode": "disabled"}, "log_every": 10_000,
        })
        trainer = Trainer(cfg, components=parts)
        g = torch.Generator().manual_seed(0)
        tok = trainer.model.tokenizer
        ids = tok([f"A photo of {cfg.model.token} grass"] * batch_size, padding="max_length",
                  max_length=tok.model_max_length, return_tensors="pt").input_ids
        batch: dict[str, Any] = {"input_ids": ids, "mask_latent": (torch.rand(batch_size, 1, lat, lat, generator=g) > 0.7).float(),
                                 "learned": torch.ones(batch_size, dtype=torch.bool), "keys": ["k"] * batch_size,
                                 "worker": 0, "position": 0}
        if cached:  # what `magiceraser cache-latents` stores: VAE posterior parameters
            batch["image_latent_params"] = torch.randn(batch_size, 8, lat, lat, generator=g)
            batch["masked_latent_params"] = torch.randn(batch_size, 8, lat, lat, generator=g)
        else:
            batch["pixel_values"] = torch.rand(batch_size, 3, res, res, generator=g) * 2 - 1
            batch["masked_pixel_values"] = batch["pixel_values"] * (torch.rand(batch_size, 1, res, res, generator=g) > 0.3)
        batch = {k: (v.to(ctx.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        stamps: list[float] = []

        def timed_batches(phase: int):
            for _ in itertools.count():
                ctx.sync()
                stamps.append(time.perf_counter())
                yield batch

        trainer._loader = timed_batches  # the data stream is not what is measured
        trainer.train()
        ctx.sync()
        stamps.append(time.perf_counter())
        measured = stamps[s.train_warmup : total + 1]
        per_step = (measured[-1] - measured[0]) / (len(measured) - 1)
        mem = peak_gib(ctx)
        del trainer
    return batch_size / per_step, mem


def section_train(ctx: Ctx) -> None:
    """Training images/s, bf16, LoRA + v*, pixels and latent cache, two batch sizes, peak memory."""
    import torch

    s = ctx.sizes
    for batch_size in s.train_batches:
        for cached in (False, True):
            reset_peak(ctx)
            what = f"{s.train_res}², bf16, LoRA + v*, batch {batch_size}, {'latent cache' if cached else 'pixels (VAE each step)'}"
            try:
                rate, mem = train_step_rate(ctx, batch_size, cached)
            except torch.cuda.OutOfMemoryError:
                emit(ctx.name, what, "out of GPU memory", ok=False)
                continue
            goal = ctx.goal(">= 80 images/s", rate >= 80) if cached else ("", None)
            emit(ctx.name, what, f"{rate:.1f} images/s, peak {mem}", *goal)


# ----------------------------------------------------------------------------- section: mask2former


def mask2former_config(full: bool):
    """facebook/mask2former-swin-large-coco-panoptic's architecture (full) or the tiny test model's."""
    from transformers import Mask2FormerConfig, SwinConfig

    from magiceraser import coco
    from magiceraser.tiny_models.mask2former import TINY_MASK2FORMER, TINY_SWIN

    labels = coco.id2label()
    if full:
        swin = SwinConfig(image_size=384, embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                          drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
        head: dict[str, Any] = dict(num_queries=200)  # Mask2FormerConfig's defaults are the rest of Swin-L's head
    else:
        swin, head = SwinConfig(**TINY_SWIN), dict(TINY_MASK2FORMER)
    return Mask2FormerConfig(backbone_config=swin, id2label=labels, label2id={n: i for i, n in labels.items()}, **head)


def write_mask2former(ctx: Ctx, out: Path) -> None:
    """Random-weight model (built on the device) + image processor in the checkpoint's on-disk format."""
    from transformers import Mask2FormerForUniversalSegmentation
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    from magiceraser.tiny_models.mask2former import TINY_PROCESSOR

    with ctx.build_on_device():
        model = Mask2FormerForUniversalSegmentation(mask2former_config(full=not ctx.smoke)).eval()
    model.save_pretrained(out)
    proc = TINY_PROCESSOR if ctx.smoke else dict(size={"shortest_edge": 384, "longest_edge": 1333}, size_divisor=32, ignore_index=255)
    Mask2FormerImageProcessorPil(**proc).save_pretrained(out)


@contextlib.contextmanager
def image_processor_without_torchvision(ctx: Ctx) -> Iterator[None]:
    """Let the segmenter load its processor where ``AutoImageProcessor`` demands torchvision.

    transformers 5.17 (the GPU machine's) refuses ``AutoImageProcessor`` without torchvision even
    for PIL-backed processors (5.23, ours, does not): there the segmenter is a known failure,
    reported as a row, and its processor is loaded as ``Mask2FormerImageProcessorPil`` so that the
    model and post-processing are still measured.
    """
    import transformers
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    try:
        transformers.AutoImageProcessor.from_pretrained  # noqa: B018 - the gate fires on attribute access
    except ImportError as exc:
        emit(ctx.name, f"AutoImageProcessor (transformers {transformers.__version__})", first_line(exc)[:120],
             "loads without torchvision", False)

        class PilProcessor:
            from_pretrained = staticmethod(Mask2FormerImageProcessorPil.from_pretrained)

        from unittest import mock

        with mock.patch.object(transformers, "AutoImageProcessor", PilProcessor):
            yield
        return
    yield


def section_mask2former(ctx: Ctx) -> None:
    """The data engine's Mask2Former segmenter (fp16 on GPU), batch 1 and 16, post-processing included."""
    import numpy as np

    from magiceraser.models.segmenter import Mask2FormerSegmenter

    s = ctx.sizes
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_mask2former(ctx, Path(tmp))
        reset_peak(ctx)
        with image_processor_without_torchvision(ctx):
            segmenter = Mask2FormerSegmenter(tmp, device=ctx.device, threshold=0.0)
        emit(ctx.name, "build + save + load Mask2Former" + (" (tiny)" if ctx.smoke else " Swin-L"),
             f"{time.perf_counter() - t0:.1f} s, {segmenter.dtype}".replace("torch.", ""))
    for batch_size, count in zip(s.m2f_batches, s.m2f_images):
        segmenter.batch_size = batch_size
        images = [rng.integers(0, 255, (s.m2f_size, s.m2f_size, 3), dtype=np.uint8) for _ in range(count)]
        segmenter.segment(images[:batch_size])  # warm-up
        ctx.sync()
        t1 = time.perf_counter()
        pans = segmenter.segment(images)
        ctx.sync()
        rate = count / (time.perf_counter() - t1)
        segments = sum(len(p.segments) for p in pans) / len(pans)
        emit(ctx.name, f"{s.m2f_size}² images, batch {batch_size}, post-processing included",
             f"{rate:.2f} images/s ({segments:.0f} segments/image), peak {peak_gib(ctx)}")


# ----------------------------------------------------------------------------- section: llava


def llava_config(full: bool, tokenizer):
    """llava-hf/llava-1.5-7b-hf's architecture (CLIP ViT-L/14-336 + Llama-2-7B) or the tiny test model's."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from magiceraser.tiny_models.llava import TINY_TEXT, TINY_VISION

    if full:
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
        text_kw: dict[str, Any] = dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                                       rms_norm_eps=1e-5)
    else:
        vision, text_kw = CLIPVisionConfig(**TINY_VISION), dict(TINY_TEXT, vocab_size=len(tokenizer))
    text = LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **text_kw)
    patches = (vision.image_size // vision.patch_size) ** 2
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                       image_seq_length=patches, vision_feature_select_strategy="default", vision_feature_layer=-2)


def write_llava_processor(out: Path, image_size: int, patch_size: int, tokenizer) -> None:
    """LLaVA-1.5's processor (CLIP image processor, tokenizer with <image>, chat template) on disk."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from magiceraser.tiny_models.llava import CHAT_TEMPLATE

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=CHAT_TEMPLATE).save_pretrained(out)


def section_llava(ctx: Ctx) -> None:
    """Captions/s of the data engine's transformers captioner with a LLaVA-1.5-7B-shaped model."""
    from unittest import mock

    import numpy as np
    import torch
    from transformers import LlavaForConditionalGeneration

    from magiceraser.models.captioner import TransformersCaptioner
    from magiceraser.tiny_models.llava import CHAT_TEMPLATE, _train_tokenizer

    s = ctx.sizes
    dtype = torch.float16 if ctx.device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    tokenizer = _train_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = llava_config(not ctx.smoke, tokenizer)
    with ctx.build_on_device(dtype):
        model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    reset_peak(ctx)
    with tempfile.TemporaryDirectory() as tmp:
        write_llava_processor(Path(tmp), config.vision_config.image_size, config.vision_config.patch_size, tokenizer)
        # Weights stay in memory: 14 GB written and read back would take a third of the time budget;
        # everything else (processor, prompt, batching, generate, decoding) is the captioner's own.
        with mock.patch.object(LlavaForConditionalGeneration, "from_pretrained", lambda *a, **kw: model):
            captioner = TransformersCaptioner(tmp, device=ctx.device, max_new_tokens=s.llava_tokens)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    emit(ctx.name, "build LLaVA-1.5" + (" (tiny)" if ctx.smoke else "-7B shape, random weights"),
         f"{time.perf_counter() - t0:.1f} s, {params:.2f} B parameters, {dtype}".replace("torch.", ""))
    rng = np.random.default_rng(0)
    question = "Describe the grass and gravel in the image."
    for batch_size, count in zip(s.llava_batches, s.llava_images):
        captioner.batch_size = batch_size
        images = [rng.integers(0, 255, (384, 512, 3), dtype=np.uint8) for _ in range(count)]
        captioner.caption(images[:1], [question])  # warm-up
        ctx.sync()
        t1 = time.perf_counter()
        captions = captioner.caption(images, [question] * count)
        ctx.sync()
        rate = count / (time.perf_counter() - t1)
        emit(ctx.name, f"transformers backend, batch {batch_size}, {s.llava_tokens} new tokens max",
             f"{rate:.2f} captions/s ({len(captions)} captions), peak {peak_gib(ctx)}")
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
