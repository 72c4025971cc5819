"""Images/s per GPU of the prompt-tuning step: full-size SD 1.5 Inpainting (random weights), 512², bf16, LoRA + v*.

Two variants of the same training step (the Trainer's own loop, batch source fixed):
  * on-the-fly: the batch holds pixels; the VAE encodes I and the masked Ĩ every step;
  * latent cache: the batch holds the VAE posterior parameters (what ``magiceraser cache-latents`` stores).
The ratio cached / on-the-fly is the gain of the cache (goal: >= 40 images/s on an H100 with the cache).

    python benchmarks/bench_train_gpu.py                 # on a CUDA GPU: full size, 512 px, bf16
    python benchmarks/bench_train_gpu.py --tiny          # CPU smoke run of the same code (tiny model, 64 px)
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model at 64 px on CPU (checks the script runs)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()

    from diffusers import DDPMScheduler

    from magiceraser.config import build_config
    from magiceraser.tiny_models.sd_inpaint import build_sd_inpaint
    from magiceraser.training.config import TrainConfig
    from magiceraser.training.loop import Trainer

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        raise SystemExit("no CUDA GPU: run with --tiny for a CPU smoke run")
    res = 64 if args.tiny else 512
    batch_size = 2 if args.tiny else args.batch
    steps = 3 if args.tiny else args.steps
    warmup = 1 if args.tiny else args.warmup

    def components():
        parts = build_sd_inpaint(full=not args.tiny, seed=0)
        parts["noise_scheduler"] = DDPMScheduler.from_config(parts.pop("scheduler").config)
        return parts

    scratch = Path(tempfile.mkdtemp(prefix="bench-train-gpu-"))
    (scratch / "unused.tar").touch()  # the batch source is replaced below; data.urls must still name a shard

    def config(total: int) -> TrainConfig:
        return build_config(TrainConfig, {
            "out_dir": tempfile.mkdtemp(dir=scratch, prefix="run-"), "device": "cuda" if cuda else "cpu",
            "data": {"urls": [str(scratch / "unused.tar")], "resolution": res, "batch_size": batch_size},
            "model": {"base_model": "random-full-size" if not args.tiny else "random-tiny",
                      "gradient_checkpointing": args.gradient_checkpointing},
            "phases": {"total_steps": total, "textual_inversion_steps": 0},
            "optim": {"mixed_precision": "bf16" if cuda else "no", "warmup_steps": 0},
            "checkpoint": {"every": 0}, "wandb": {"mode": "disabled"}, "log_every": 10_000,
        })

    device = torch.device("cuda" if cuda else "cpu")
    lat = res // 8
    g = torch.Generator().manual_seed(0)
    token_ids = None

    def make_batch(trainer: Trainer, cached: bool) -> dict:
        nonlocal token_ids
        tok = trainer.model.tokenizer
        ids = tok([f"A photo of {trainer.cfg.model.token} grass"] * batch_size, padding="max_length",
                  max_length=tok.model_max_length, return_tensors="pt").input_ids
        b = {"input_ids": ids, "mask_latent": (torch.rand(batch_size, 1, lat, lat, generator=g) > 0.7).float(),
             "learned": torch.ones(batch_size, dtype=torch.bool), "keys": ["k"] * batch_size, "worker": 0, "position": [0, 0]}
        if cached:
            b["image_latent_params"] = torch.randn(batch_size, 8, lat, lat, generator=g)
            b["masked_latent_params"] = torch.randn(batch_size, 8, lat, lat, generator=g)
        else:
            b["pixel_values"] = torch.rand(batch_size, 3, res, res, generator=g) * 2 - 1
            b["masked_pixel_values"] = b["pixel_values"] * (torch.rand(batch_size, 1, res, res, generator=g) > 0.3)
        return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    results = {}
    for cached in (False, True):
        trainer = Trainer(config(warmup + steps), components=components())
        batch = make_batch(trainer, cached)
        timings = []

        def timed_batches(batch: dict = batch, timings: list = timings):
            for _ in itertools.count():
                sync()
                timings.append(time.perf_counter())
                yield batch

        trainer._loader = lambda phase: timed_batches()
        trainer.train()
        sync()
        timings.append(time.perf_counter())
        measured = timings[warmup:]
        per_step = (measured[-1] - measured[0]) / (len(measured) - 1)
        results[cached] = batch_size / per_step
        mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"{'latent cache' if cached else 'on-the-fly  '}: {results[cached]:8.2f} images/s per {'GPU' if cuda else 'CPU process'}"
              f"   ({per_step * 1e3:.1f} ms/step, batch {batch_size}, {res}px, peak mem {mem:.1f} GiB)")
        del trainer
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    print(f"cache speed-up: {results[True] / results[False]:.2f}x  (device: {torch.cuda.get_device_name() if cuda else 'CPU, tiny model: not a GPU figure'})")


if __name__ == "__main__":
    main()
