"""What preemption costs at full SD 1.5 size: the checkpoint save and its verification, and the stop-flag agreement.

1. **Save and verify** (full-size SD 1.5 Inpainting architectures with random weights, the
   default LoRA and a larger one): the trainer's own ``_save_checkpoint`` (gather the states,
   serialise, write every file with fsync, the marker last, prune) and the resume's verification
   (``startup.choose_checkpoint``: read every file, size and sha256, decode every header), each
   against the floor of the same bytes written once with fsync / read once, measured in the same
   run. A preempted process has its grace period (Kubernetes: 30 s) for the rest of its step plus
   this save.
2. **Stop-flag agreement**: two gloo processes all-reducing the gradients of exactly the
   trainable tensors of that model, per step, without the preemption flag and with it (one more
   float in the same all-reduce, read through ``StepFlags``), interleaved rounds.

    .venv/bin/python benchmarks/bench_checkpoint.py [--ranks 4 64] [--repeats 5] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

GRACE_S = 30.0


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _floor_write(path: Path, total: int) -> None:
    with open(path, "wb") as fh:
        fh.write(os.urandom(total))
        fh.flush()
        os.fsync(fh.fileno())


def save_and_verify(rank: int, repeats: int, scratch: Path) -> list[tuple[int, ...]]:
    """Prints the figures of LoRA ``rank``; returns the shapes of the trainable tensors (for part 2)."""
    from diffusers import DDPMScheduler

    from magiceraser.config import build_config
    from magiceraser.tiny_models.sd_inpaint import build_sd_inpaint
    from magiceraser.training import startup
    from magiceraser.training.config import TrainConfig
    from magiceraser.training.loop import Trainer

    t0 = time.perf_counter()
    parts = build_sd_inpaint(full=True, seed=0)
    parts["noise_scheduler"] = DDPMScheduler.from_config(parts.pop("scheduler").config)
    (scratch / "unused.tar").touch()  # data.urls must name a shard; no batch is read here
    out = scratch / f"run-r{rank}"
    cfg = build_config(TrainConfig, {
        "out_dir": str(out), "device": "cpu",
        "data": {"urls": [str(scratch / "unused.tar")], "resolution": 512},
        "model": {"base_model": "random-full-size", "lora": {"rank": rank, "alpha": float(rank)}},
        "phases": {"total_steps": 10, "textual_inversion_steps": 0},
        "checkpoint": {"every": 1, "keep_last": 2}, "wandb": {"mode": "disabled"},
    })
    trainer = Trainer(cfg, components=parts)
    built = time.perf_counter() - t0
    # The optimizer state of a real step, at its real size: one AdamW step on random gradients.
    trainer.model.set_phase(2)
    params = [p for g in trainer.optimizer.param_groups for p in g["params"] if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    trainer.optimizer.step()
    n_params = sum(p.numel() for p in params)

    steps = iter(range(1, 10_000))

    def save() -> None:
        trainer.step = next(steps)
        trainer._save_checkpoint()

    save()  # first write (page cache warm-up of the folder); not counted
    t_save = _median_time(save, repeats)
    store = trainer.store
    newest = store.list()[-1]
    size = sum(p.stat().st_size for p in (out / "checkpoints" / newest.name).iterdir())
    t_verify = _median_time(lambda: startup.choose_checkpoint(store), repeats)
    t_floor_write = _median_time(lambda: _floor_write(scratch / "floor.bin", size), repeats)
    t_floor_read = _median_time(lambda: (scratch / "floor.bin").read_bytes(), repeats)
    trainer.close()
    print(f"SD 1.5 Inpainting, full size, random weights (built in {built:.0f} s); LoRA rank {rank}: "
          f"{n_params / 1e6:.2f} M trainable parameters, checkpoint {size / 2**20:.1f} MiB (5 files)")
    print(f"  save   (gather, serialise, write + fsync, marker last, prune) {t_save * 1e3:8.1f} ms   "
          f"floor: same bytes written once + fsync {t_floor_write * 1e3:7.1f} ms   ratio {t_save / t_floor_write:5.2f}x   "
          f"{t_save / GRACE_S * 100:.2f}% of a {GRACE_S:.0f} s grace period")
    print(f"  verify (read, size + sha256 of every file, decode every header) {t_verify * 1e3:6.1f} ms   "
          f"floor: same bytes read once {t_floor_read * 1e3:7.1f} ms   ratio {t_verify / max(t_floor_read, 1e-9):5.2f}x")
    shapes = [tuple(p.shape) for p in params]
    return shapes


def _agreement_worker(rank: int, world: int, init: str, shapes: list[tuple[int, ...]], steps: int, rounds: int, results) -> None:
    import torch.distributed as dist

    from magiceraser.training.distributed import DistContext, StepFlags, all_reduce_mean_

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    g = torch.Generator().manual_seed(rank)
    grads = [torch.randn(s, generator=g) for s in shapes]

    def loop(with_flag: bool) -> float:
        flags = StepFlags()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            if with_flag:
                agreed = flags.push(all_reduce_mean_(params, ctx, flags=[0.0]))
                if agreed and agreed[0] > 0:
                    raise AssertionError("no process was signalled")
            else:
                all_reduce_mean_(params, ctx)
        dist.barrier()
        return (time.perf_counter() - t0) / steps

    loop(False), loop(True)  # warm-up
    pairs = []
    for r in range(rounds):  # interleaved, the order alternating: the machine's noise falls on both alike
        if r % 2:
            b, a = loop(True), loop(False)
        else:
            a, b = loop(False), loop(True)
        pairs.append((a, b))
    if rank == 0:
        results.extend(pairs)
    dist.destroy_process_group()


def agreement(shapes: list[tuple[int, ...]], steps: int, rounds: int, scratch: Path) -> None:
    import torch.multiprocessing as mp

    n = sum(int(torch.Size(s).numel()) for s in shapes)
    manager = mp.Manager()
    results = manager.list()
    init = f"file://{scratch / 'rendezvous'}"
    mp.spawn(_agreement_worker, args=(2, init, shapes, steps, rounds, results), nprocs=2, join=True)
    pairs = list(results)
    a = statistics.median(p[0] for p in pairs)
    b = statistics.median(p[1] for p in pairs)
    ratios = [q[1] / q[0] for q in pairs]
    print(f"stop-flag agreement, 2 gloo processes, {len(shapes)} trainable tensors ({n / 1e6:.2f} M floats), "
          f"{steps} steps x {rounds} interleaved rounds, 1 thread each")
    print(f"  gradient all-reduce per step, without the flag {a * 1e6:9.1f} us")
    print(f"  gradient all-reduce per step, with the flag    {b * 1e6:9.1f} us   ({(b - a) * 1e6:+.1f} us)")
    print(f"  ratio with / without: {b / a:.3f}x (median of rounds; rounds from {min(ratios):.3f}x to {max(ratios):.3f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 64], help="LoRA ranks to measure (4 = the default config)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300, help="all-reduce steps per round (part 2)")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    scratch = Path(tempfile.mkdtemp(prefix="bench-checkpoint-"))
    try:
        shapes = None
        for rank in args.ranks:
            s = save_and_verify(rank, args.repeats, scratch)
            shapes = shapes or s
        agreement(shapes, args.steps, args.rounds, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
