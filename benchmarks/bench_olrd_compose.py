"""Compose stage throughput against the floor of decoding its input and encoding its outputs.

For 512x384 and 1024x768 inputs (demo scenes scaled up, with their panoptic maps), in one process:

    floor  = decode the input JPEG + encode the sample's outputs (I, Ĩ as JPEG q95, m̃ as PNG)
    stage  = decode + compose (object choice, every valid offset, blend, tags) + the same encodes

and prints images/s of each and their ratio stage / floor (goal ``olrd_compose`` of goals.py).

    .venv/bin/python benchmarks/bench_olrd_compose.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from goals import GOALS


def make_inputs(h: int, w: int, n: int):
    import cv2

    from magiceraser.datasets.demo_scenes import NUM_SCENES, make_scene
    from magiceraser.imageio import encode_image
    from magiceraser.panoptic import PanopticResult

    out = []
    for i in range(n):
        image, seg, segments = make_scene(i % NUM_SCENES)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        seg = cv2.resize(seg, (w, h), interpolation=cv2.INTER_NEAREST)
        out.append((f"img{i}", encode_image(image, "jpg", 95), PanopticResult(seg, segments)))
    return out


def run(h: int, w: int, n: int, repeats: int) -> tuple[float, float]:
    from magiceraser.datasets.compose import ComposeConfig, ComposeSkip, compose, rng_for
    from magiceraser.imageio import decode_image, encode_image

    cfg = ComposeConfig()
    inputs = make_inputs(h, w, n)
    outputs = {}
    for key, data, pan in inputs:  # the outputs the floor encodes: the very samples the stage makes
        image = decode_image(data)
        try:
            c = compose(image, pan, rng_for(key, 0), cfg)
            outputs[key] = (c.blended, c.mask)
        except ComposeSkip:
            outputs[key] = (image, np.zeros(image.shape[:2], bool))

    def floor_pass():
        for key, data, _ in inputs:
            image = decode_image(data)
            blended, mask = outputs[key]
            encode_image(image, "jpg", 95)
            encode_image(blended, "jpg", 95)
            encode_image(mask.astype(np.uint8) * 255, "png")

    def stage_pass():
        for key, data, pan in inputs:
            image = decode_image(data)
            try:
                c = compose(image, pan, rng_for(key, 0), cfg)
                blended, mask = c.blended, c.mask
            except ComposeSkip:
                blended, mask = image, np.zeros(image.shape[:2], bool)
            encode_image(image, "jpg", 95)
            encode_image(blended, "jpg", 95)
            encode_image(mask.astype(np.uint8) * 255, "png")

    best_floor = best_stage = float("inf")
    for _ in range(repeats):  # interleaved, best of N: robust to other load on the machine
        t = time.perf_counter()
        floor_pass()
        best_floor = min(best_floor, time.perf_counter() - t)
        t = time.perf_counter()
        stage_pass()
        best_stage = min(best_stage, time.perf_counter() - t)
    return n / best_floor, n / best_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    args = parser.parse_args()
    n, repeats = (12, 2) if args.quick else (48, 3)
    print(f"compose stage vs decode+encode floor ({n} images, best of {repeats})")
    for h, w in ((384, 512), (768, 1024)):
        floor, stage = run(h, w, n, repeats)
        print(f"  {w}x{h}: floor {floor:7.1f} images/s, compose stage {stage:7.1f} images/s, "
              f"ratio {stage / floor:.2f} (goal {GOALS['olrd_compose'].text()})")


if __name__ == "__main__":
    main()
