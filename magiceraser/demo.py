"""``magiceraser demo``: the whole system on its embedded default, under ``demo/``.

Local Ray, local files, W&B offline, tiny random-weight models. Each step is the same subcommand
a user runs; the demo only chains them with the shipped ``configs/*/demo.yaml`` files:

    demo/models/   tiny models (tiny-models)
    demo/scenes/   scenes built from skimage.data photos with panoptic annotations (demo-scenes)
    demo/olrd/     OLRD WebDataset shards + preview.png (olrd, preview)
    demo/train/    prompt-tuned v* + LoRA, loadable by stock diffusers (train)
    demo/erase/    input, mask and erased result of one demo scene (erase)
    demo/eval/     results table: the demo model against Telea (evaluate)
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

from magiceraser.cli import main as cli_main
from magiceraser.cli_args import PlainTextHelpFormatter

DEMO_STEPS: list[tuple[str, list[str]]] = [
    ("tiny models", ["tiny-models", "demo/models"]),
    ("demo scenes", ["demo-scenes", "demo/scenes"]),
    ("OLRD shards", ["olrd", "--config", "configs/olrd/demo.yaml"]),
    ("shard preview", ["preview", "demo/olrd/olrd-000000.tar", "--out", "demo/olrd/preview.png"]),
    # --resume: a second `make demo` continues (here: re-exports) the run in demo/train; a fresh
    # run into a folder holding another run is refused.
    ("training", ["train", "--config", "configs/train/demo.yaml", "--resume"]),
    ("erasing", ["erase", "--config", "configs/erase/demo.yaml", "--image", "demo/scenes/erase/image.png",
                 "--mask", "demo/scenes/erase/mask.png", "--out", "demo/erase"]),
    ("evaluation", ["evaluate", "--config", "configs/eval/demo.yaml"]),
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="magiceraser demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=PlainTextHelpFormatter)
    parser.add_argument("--from-step", type=int, default=1, help="start at this step (1-based)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    for i, (title, step) in enumerate(DEMO_STEPS, start=1):
        if i < args.from_step:
            continue
        print(f"\n=== [{i}/{len(DEMO_STEPS)}] {title}: magiceraser {' '.join(step)}", flush=True)
        t0 = time.time()
        rc = cli_main(step)
        if rc:
            print(f"demo step {i} ({title}) failed with exit code {rc}; rerun from it with `magiceraser demo --from-step {i}`")
            return rc
        print(f"--- {title} done in {time.time() - t0:.1f} s", flush=True)
    print("\nDemo finished. Everything is under demo/:")
    print(__doc__.split("\n\n")[2])
    print("Look at demo/olrd/preview.png, demo/erase/result.png and demo/eval/results.md.")
    return 0
