"""Time to the first batch after a resume, at step 10 and at step 10,000 (synthetic OLRD shards, CPU).

A resumed training stream is positioned by (first shard draw of the current shuffle window,
samples taken from it): it reads that one window again, whatever the step. Goal
``resume_first_batch`` (goals.py): the first batch after a resume at step 10,000 against one at
step 10. For reference, the run also
times what the previous resume did, re-reading every sample seen so far.

    .venv/bin/python benchmarks/bench_resume.py [--steps 10 10000] [--batch 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
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
    ap.add_argument("--steps", type=int, nargs=2, default=[10, 10_000])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--per-shard", type=int, default=100)
    ap.add_argument("--shuffle-buffer", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from training.olrd_fixture import write_olrd_shards
    from transformers import CLIPTokenizer

    from magiceraser.olrd_samples import expand_urls
    from magiceraser.prompts import DEFAULT_TOKEN
    from magiceraser.tiny_models import write_tiny_models
    from magiceraser.training.data import StreamSpec, make_loader, shuffled_windows
    from magiceraser.training.examples import ExampleSpec
    from magiceraser.training.sampling import stable_seed

    tmp = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    model_dir = write_tiny_models(tmp / "models", ["sd-inpaint"])["sd-inpaint"]
    tokenizer = CLIPTokenizer.from_pretrained(str(model_dir), subfolder="tokenizer")
    tokenizer.add_tokens(DEFAULT_TOKEN)
    for s in range(args.shards):  # distinct keys per shard
        write_olrd_shards(tmp / "olrd", num_shards=1, per_shard=args.per_shard, size=(64, 64), seed=s, prefix=f"olrd{s:04d}")
    urls = expand_urls([str(tmp / "olrd" / "olrd*.tar")])
    print(f"{len(urls)} shards x {args.per_shard} samples (64x64), batch {args.batch}, shuffle window >= {args.shuffle_buffer}")

    def spec(start: dict[int, list[int]]) -> StreamSpec:
        return StreamSpec(urls=urls, example=ExampleSpec(resolution=64), batch_size=args.batch, tokenizer=tokenizer,
                          token=DEFAULT_TOKEN, shuffle_buffer=args.shuffle_buffer, start_positions=start)

    def position_after(step: int) -> list[int]:
        """The saved position after ``step`` batches (set-up: walks the raw stream, decodes nothing)."""
        seed = stable_seed("stream", 0, "train", 0, 0)
        samples = shuffled_windows(urls, seed, args.shuffle_buffer)
        position, _ = next(itertools.islice(samples, step * args.batch - 1, None))
        return list(position)

    def first_batch_seconds(start: dict[int, list[int]]) -> float:
        t0 = time.perf_counter()
        next(iter(make_loader(spec(start), 0)))
        return time.perf_counter() - t0

    positions, replay = {}, {}
    for step in args.steps:
        t0 = time.perf_counter()
        positions[step] = position_after(step)
        replay[step] = time.perf_counter() - t0
    # Interleaved rounds, so drift in the machine's load falls on both resume points alike.
    times: dict[int, list[float]] = {step: [] for step in args.steps}
    for _ in range(args.rounds):
        for step in args.steps:
            times[step].append(first_batch_seconds({0: positions[step]}))
    results = {step: statistics.median(t) for step, t in times.items()}
    for step in args.steps:
        pos = positions[step]
        print(f"resume at step {step:>6}: first batch after {results[step] * 1e3:7.1f} ms (median of {args.rounds}; "
              f"position = window at draw {pos[0]}, offset {pos[1]});  re-reading the {step * args.batch} samples seen "
              f"so far (the previous resume) took {replay[step] * 1e3:7.1f} ms")
    lo, hi = args.steps
    print(f"step {hi} / step {lo}: {results[hi] / results[lo]:.2f}x (goal {GOALS['resume_first_batch'].text()})")


if __name__ == "__main__":
    main()
