"""Trainer overhead and data-loader throughput on the tiny SD-inpainting model (CPU).

1. Step time of our training loop (Trainer.train with the batch source fixed) against a bare
   PyTorch loop doing the same work on the same model and batch: VAE encode, text encode, UNet
   forward/backward with LoRA and v*, clipping, AdamW step. Goal ``train_loop_overhead`` (goals.py).
2. Data-loader samples/s (decode, crop, stock inpainting inputs, tokenize) against the samples/s
   a training step consumes.

    .venv/bin/python benchmarks/bench_train_step.py [--steps 30] [--resolution 64] [--batch 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from goals import GOALS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the trainer tests' helpers (tests/training is a package)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from training.olrd_fixture import write_olrd_shards
    from training.run_config import tiny_train_config

    from magiceraser.olrd_samples import expand_urls
    from magiceraser.tiny_models import write_tiny_models
    from magiceraser.training.data import make_loader
    from magiceraser.training.loop import Trainer
    from magiceraser.training.model import sample_latents

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model_dir = write_tiny_models(tmp / "models", ["sd-inpaint"])["sd-inpaint"]
    write_olrd_shards(tmp / "olrd", num_shards=2, per_shard=16, size=(160, 120))
    urls = [tmp / "olrd" / "olrd-*.tar"]
    over = {"phases.total_steps": args.steps, "phases.textual_inversion_steps": 0, "data.batch_size": args.batch,
            "data.resolution": args.resolution, "log_every": args.steps, "wandb.log_every": args.steps}

    # One fixed batch for both loops.
    probe = Trainer(tiny_train_config(model_dir, urls, tmp / "probe", **over))
    batch = next(probe._loader(2))

    def ours() -> float:
        trainer = Trainer(tiny_train_config(model_dir, urls, Path(tempfile.mkdtemp(dir=tmp, prefix="ours-")), **over))  # fresh out_dir per round
        stamps: list[float] = []

        def timed():  # a timestamp at every batch fetch = step boundaries (set-up and export excluded)
            while True:
                stamps.append(time.perf_counter())
                yield batch

        trainer._loader = lambda phase: timed()
        trainer.train()
        stamps.append(time.perf_counter())
        return (stamps[-1] - stamps[1]) / (len(stamps) - 2)  # first step (warm-up) excluded

    def bare() -> float:
        # A fresh out_dir per round: a Trainer holds its folder's lock until it has trained.
        trainer = Trainer(tiny_train_config(model_dir, urls, Path(tempfile.mkdtemp(dir=tmp, prefix="bare-")), **over))
        m = trainer.model
        m.set_phase(2)
        params = [m.placeholder.vector, *m.lora_parameters()]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
        sched = m.noise_scheduler
        gen = torch.Generator().manual_seed(0)
        b = batch
        t0 = 0.0
        for i in range(args.steps + 1):
            if i == 1:  # first step (warm-up) excluded, as for ours
                t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                p_img = m.vae.encode(b["pixel_values"]).latent_dist.parameters
                p_msk = m.vae.encode(b["masked_pixel_values"]).latent_dist.parameters
            shape = (b["pixel_values"].shape[0], 4, args.resolution // 8, args.resolution // 8)
            t = torch.randint(0, 1000, (shape[0],), generator=gen)
            lat = sample_latents(p_img, torch.randn(shape, generator=gen), m.scaling_factor)
            mlat = sample_latents(p_msk, torch.randn(shape, generator=gen), m.scaling_factor)
            noise = torch.randn(shape, generator=gen)
            noisy = sched.add_noise(lat, noise, t)
            hidden = m.text_encoder(b["input_ids"])[0]
            pred = m.unet(torch.cat([noisy, b["mask_latent"], mlat], 1), t, hidden).sample
            loss = torch.nn.functional.mse_loss(pred, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        return (time.perf_counter() - t0) / args.steps

    ours_t, bare_t = [], []
    for _ in range(args.rounds):  # interleaved so machine load affects both alike
        bare_t.append(bare())
        ours_t.append(ours())
    o, b_ = statistics.median(ours_t), statistics.median(bare_t)
    print(f"train step  (tiny SD-inpaint, {args.resolution}px, batch {args.batch}, {args.steps} steps x {args.rounds} rounds, median)")
    print(f"  bare PyTorch loop : {b_ * 1e3:8.1f} ms/step")
    print(f"  magiceraser loop  : {o * 1e3:8.1f} ms/step")
    print(f"  ratio ours / bare : {o / b_:8.3f}   (goal {GOALS['train_loop_overhead'].text()})")

    step_rate = args.batch / o
    print(f"data loader (OLRD 160x120 JPEG shards -> {args.resolution}px examples)")
    for workers in (0, 2):
        spec = probe._loader.__self__  # noqa: B018 (keeps the trainer alive)
        t = Trainer(tiny_train_config(model_dir, urls, tmp / f"dl-{workers}", **{**over, "data.num_workers": workers}))
        it = t._loader(2)
        next(it)  # worker start-up excluded
        n = 20
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        rate = n * args.batch / (time.perf_counter() - t0)
        print(f"  {workers} workers : {rate:8.1f} samples/s   = {rate / step_rate:6.2f}x what a training step consumes ({step_rate:.1f} samples/s)")
    del spec, expand_urls, make_loader


if __name__ == "__main__":
    main()
