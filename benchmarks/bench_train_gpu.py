"""Images/s per GPU of the prompt-tuning step: full-size SD 1.5 Inpainting (random weights), 512², bf16, LoRA + v*.

Two variants of the same training step (the Trainer's own loop, optimizer and autocast; the batch
source replaced by one fixed batch, so the data stream is not what is measured):
  * on-the-fly: the batch holds pixels; the VAE encodes I and the masked Ĩ every step;
  * latent cache: the batch holds the VAE posterior parameters (what ``magiceraser cache-latents`` stores).
The ratio cached / on-the-fly is the gain of the cache. Goal ``train_images_per_s_gpu`` (goals.py)
with the cache. :func:`train_rate` is what gpu_acceptance.py's ``train`` section runs.

    python benchmarks/bench_train_gpu.py                 # on a CUDA GPU: full size, 512 px, bf16
    python benchmarks/bench_train_gpu.py --tiny          # CPU smoke run of the same code (tiny model, 64 px)
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import is_cuda, peak_gib, reset_peak, sd_parts, sync
from goals import GOALS


def make_batch(tokenizer, token: str, batch_size: int, res: int, cached: bool, device: str) -> dict[str, Any]:
    """One random batch in the loader's layout: pixels, or the cached latents' posterior parameters."""
    lat = res // 8
    g = torch.Generator().manual_seed(0)
    ids = tokenizer([f"A photo of {token} grass"] * batch_size, padding="max_length",
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    b: dict[str, Any] = {"input_ids": ids, "mask_latent": (torch.rand(batch_size, 1, lat, lat, generator=g) > 0.7).float(),
                         "learned": torch.ones(batch_size, dtype=torch.bool), "keys": ["k"] * batch_size,
                         "worker": 0, "position": [0, 0]}
    if cached:  # what `magiceraser cache-latents` stores: VAE posterior parameters
        b["image_latent_params"] = torch.randn(batch_size, 8, lat, lat, generator=g)
        b["masked_latent_params"] = torch.randn(batch_size, 8, lat, lat, generator=g)
    else:
        b["pixel_values"] = torch.rand(batch_size, 3, res, res, generator=g) * 2 - 1
        b["masked_pixel_values"] = b["pixel_values"] * (torch.rand(batch_size, 1, res, res, generator=g) > 0.3)
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}


def train_rate(device: str, full: bool, res: int, batch_size: int, cached: bool, warmup: int, steps: int,
               gradient_checkpointing: bool = False) -> tuple[float, float, float]:
    """(images/s, seconds per step, peak GPU GiB or nan) of the Trainer's step on a fixed batch,
    phase 2 (v* and LoRA train), bf16 autocast on CUDA; the first ``warmup`` steps are not timed."""
    from diffusers import DDPMScheduler

    from magiceraser.config import build_config
    from magiceraser.training.config import TrainConfig
    from magiceraser.training.loop import Trainer

    reset_peak(device)
    parts = sd_parts(device, full)
    parts["noise_scheduler"] = DDPMScheduler.from_config(parts.pop("scheduler").config)
    total = warmup + steps
    with tempfile.TemporaryDirectory(prefix="bench-train-gpu-") as tmp:
        shard = Path(tmp) / "olrd-000000.tar"
        shard.write_bytes(b"")  # the Trainer checks that its shards exist; the batches come from below
        cfg = build_config(TrainConfig, {
            "out_dir": str(Path(tmp) / "run"), "device": "cuda" if is_cuda(device) else "cpu",
            "data": {"urls": [str(shard)], "resolution": res, "batch_size": batch_size},
            "model": {"base_model": "random-full-size" if full else "random-tiny",
                      "gradient_checkpointing": gradient_checkpointing},
            "phases": {"total_steps": total, "textual_inversion_steps": 0},
            "optim": {"mixed_precision": "bf16" if is_cuda(device) else "no", "warmup_steps": 0},
            "checkpoint": {"every": 0}, "wandb": {"mode": "disabled"}, "log_every": 10_000,
        })
        trainer = Trainer(cfg, components=parts)
        batch = make_batch(trainer.model.tokenizer, cfg.model.token, batch_size, res, cached, device)
        stamps: list[float] = []

        def timed_batches(phase: int):
            for _ in itertools.count():  # a timestamp at every batch fetch = step boundaries
                sync(device)
                stamps.append(time.perf_counter())
                yield batch

        trainer._loader = timed_batches
        trainer.train()
        sync(device)
        stamps.append(time.perf_counter())
        measured = stamps[warmup : total + 1]
        per_step = (measured[-1] - measured[0]) / (len(measured) - 1)
        del trainer
    return batch_size / per_step, per_step, peak_gib(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model at 64 px on CPU (checks the script runs)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        raise SystemExit("no CUDA GPU: run with --tiny for a CPU smoke run")
    device = "cuda" if cuda else "cpu"
    res = 64 if args.tiny else 512
    batch_size = 2 if args.tiny else args.batch
    steps = 3 if args.tiny else args.steps
    warmup = 1 if args.tiny else args.warmup
    results = {}
    for cached in (False, True):
        rate, per_step, mem = train_rate(device, not args.tiny, res, batch_size, cached, warmup, steps,
                                         args.gradient_checkpointing)
        results[cached] = rate
        print(f"{'latent cache' if cached else 'on-the-fly  '}: {rate:8.2f} images/s per {'GPU' if cuda else 'CPU process'}"
              f"   ({per_step * 1e3:.1f} ms/step, batch {batch_size}, {res}px, peak mem {mem:.1f} GiB)")
    goal = GOALS["train_images_per_s_gpu"]
    print(f"cache speed-up: {results[True] / results[False]:.2f}x  (device: {torch.cuda.get_device_name() if cuda else 'CPU, tiny model: not a GPU figure'})")
    verdict = ("met" if goal.met(results[True]) else "NOT met") if cuda else "not judged: CPU, tiny model"
    print(f"latent cache: {results[True]:.1f} images/s (goal {goal.text()} on an H100/H200: {verdict})")


if __name__ == "__main__":
    main()
