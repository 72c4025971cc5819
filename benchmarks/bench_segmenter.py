"""Images/s of the data engine's Mask2Former segmenter: Swin-L COCO panoptic (random weights), fp16 on a GPU.

The model is facebook/mask2former-swin-large-coco-panoptic's architecture built on the device,
saved with its image processor in the checkpoint's on-disk format and loaded through
``Mask2FormerSegmenter`` (the data engine's own loading, batching and panoptic post-processing).
Threshold 0: every query is post-processed, an upper bound on that cost with random weights.
No goal: the figure sizes the segment stage (cluster/README.md). :func:`measure_segmenter` is what
gpu_acceptance.py's ``mask2former`` section runs.

    python benchmarks/bench_segmenter.py                  # on a CUDA GPU: Swin-L, 512², batch 1 and 16
    python benchmarks/bench_segmenter.py --tiny           # CPU smoke run of the same code (tiny model)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import built_on, default_device, peak_text, print_row, reset_peak, sync


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


def write_mask2former(device: str, full: bool, out: Path) -> None:
    """Random-weight model (built on the device) + image processor in the checkpoint's on-disk format."""
    from transformers import Mask2FormerForUniversalSegmentation
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    from magiceraser.tiny_models.mask2former import TINY_PROCESSOR

    with built_on(device):
        model = Mask2FormerForUniversalSegmentation(mask2former_config(full)).eval()
    model.save_pretrained(out)
    proc = dict(size={"shortest_edge": 384, "longest_edge": 1333}, size_divisor=32, ignore_index=255) if full else TINY_PROCESSOR
    Mask2FormerImageProcessorPil(**proc).save_pretrained(out)


def measure_segmenter(device: str, full: bool, size: int, runs: list[tuple[int, int]], report) -> None:
    """Build, save and load the segmenter, then segment ``count`` random size² images at each
    ``(batch_size, count)`` of ``runs`` (after a one-batch warm-up). ``report(what, value)`` gets
    one line per figure, as it is measured."""
    import numpy as np

    from magiceraser.models.segmenter import Mask2FormerSegmenter

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-segmenter-") as tmp:
        t0 = time.perf_counter()
        write_mask2former(device, full, Path(tmp))
        reset_peak(device)
        segmenter = Mask2FormerSegmenter(tmp, device=device, threshold=0.0)
        report("build + save + load Mask2Former" + (" Swin-L" if full else " (tiny)"),
               f"{time.perf_counter() - t0:.1f} s, {segmenter.dtype}".replace("torch.", ""))
    for batch_size, count in runs:
        segmenter.batch_size = batch_size
        images = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(count)]
        segmenter.segment(images[:batch_size])  # warm-up
        sync(device)
        t1 = time.perf_counter()
        pans = segmenter.segment(images)
        sync(device)
        rate = count / (time.perf_counter() - t1)
        segments = sum(len(p.segments) for p in pans) / len(pans)
        report(f"{size}² images, batch {batch_size}, post-processing included",
               f"{rate:.2f} images/s ({segments:.0f} segments/image), peak {peak_text(device)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny test model at 64 px on CPU (checks the script runs)")
    args = parser.parse_args()
    device = default_device(args.tiny)
    full = device == "cuda"
    runs = [(1, 8), (16, 32)] if full else [(1, 1), (2, 2)]
    measure_segmenter(device, full, 512 if full else 64, runs, print_row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
