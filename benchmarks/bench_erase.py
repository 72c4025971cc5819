"""The whole eraser with the attention refocus on against off, and against stock diffusers, in the same run.

Default (CPU): the tiny random-weight SD-inpainting model. ``--gpu``: the full-size SD 1.5
inpainting architecture with random weights (``build_sd_inpaint(full=True)``) built on the GPU, a
512² image, 50 steps at strength 1.0 (50 UNet evaluations with CFG), float16 on CUDA.
``--gpu --device cpu --size 128 --steps 2`` runs the same code path reduced on a CPU (a check
that it works, not a timing).

Three calls, interleaved, best of ``--repeats``: the eraser with refocus on, with refocus off, and
stock diffusers ``StableDiffusionInpaintPipeline`` on the same components, DDIM scheduler (one
UNet evaluation per step), prompt, steps, strength and CFG. The scene is a textured image, a box
mask and a grass-with-person segmentation (all three refocus labels occur). Goals (goals.py):
``erase_refocus_overhead`` (on / off), ``erase_vs_stock`` (on / stock) and, on the GPU,
``erase_seconds_gpu``.

:func:`build` and :func:`measure_erase` are what gpu_acceptance.py's ``erase`` section runs.

    python benchmarks/bench_erase.py [--size 128] [--steps 10] [--repeats 3] [--threads 1]
    python benchmarks/bench_erase.py --gpu
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from common import best_interleaved, is_cuda, sd_parts
from goals import GOALS

GUIDANCE = 7.5
STRENGTH = 1.0  # every step runs: the conditions of the erase_seconds_gpu goal


def erase_scene(size: int):
    """A textured image, a box mask and a grass-with-person segmentation (three refocus labels)."""
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


def build(full: bool, device: str, size: int):
    """(eraser, stock pipeline): one set of SD 1.5 Inpainting components built on ``device`` (float16
    on CUDA), DDIM as from_pretrained installs it by default, shared by both."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    from magiceraser.pipelines import MagicEraserPipeline

    parts = sd_parts(device, full)
    scheduler = DDIMScheduler.from_config(parts.pop("scheduler").config)
    sd = StableDiffusionInpaintPipeline(**parts, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                        requires_safety_checker=False)
    if is_cuda(device):  # built on the device already; float32 on CPU
        sd.to(device, torch.float16)
    sd.set_progress_bar_config(disable=True)
    return MagicEraserPipeline(sd, model_size=size), sd


def measure_erase(eraser, sd, size: int, steps: int, strength: float, repeats: int, device: str) -> dict[str, tuple[float, float]]:
    """Best (wall, process CPU) seconds per image of ``on``, ``off`` (the eraser with refocus on /
    off) and ``stock`` (diffusers on the same components and the eraser's own prompt)."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0
    from PIL import Image

    from magiceraser.panoptic import dominant_background_tag
    from magiceraser.pipelines.erase.pipeline import choose_prompt

    image, mask, pan = erase_scene(size)
    image_pil, mask_pil = Image.fromarray(image), Image.fromarray(mask.astype("uint8") * 255)
    prompt = choose_prompt(None, dominant_background_tag(pan, mask), None)  # what the eraser prompts with

    def erase(refocus: bool) -> None:
        # crop_margin 10: the crop is the whole image, so the UNet runs at size × size.
        eraser(image, mask, pan=pan, num_inference_steps=steps, strength=strength, refocus=refocus, seed=0,
               crop_margin=10.0, mask_dilation=4, guidance_scale=GUIDANCE)

    def stock() -> None:
        sd.unet.set_attn_processor(AttnProcessor2_0())  # the eraser reinstalls its processors itself
        sd(prompt=prompt, image=image_pil, mask_image=mask_pil, height=size, width=size, strength=strength,
           num_inference_steps=steps, guidance_scale=GUIDANCE, generator=torch.Generator("cpu").manual_seed(0),
           output_type="np")

    calls: dict[str, Any] = {"on": lambda: erase(True), "off": lambda: erase(False), "stock": stock}
    return best_interleaved(calls, device, repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="full-size SD 1.5 architecture, fp16 (CUDA unless --device)")
    parser.add_argument("--device", default=None, help="default: cuda with --gpu, else cpu")
    parser.add_argument("--size", type=int, default=None, help="image and model size (default 512 with --gpu, else 128)")
    parser.add_argument("--steps", type=int, default=None, help="scheduler steps (default 50 with --gpu, else 10)")
    parser.add_argument("--strength", type=float, default=STRENGTH, help=f"denoising strength (default {STRENGTH}: every step runs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if args.gpu else "cpu")
    size = args.size or (512 if args.gpu else 128)
    steps = args.steps or (50 if args.gpu else 10)
    t0 = time.perf_counter()
    eraser, sd = build(args.gpu, device, size)
    dtype = str(sd.unet.dtype).replace("torch.", "")
    print(f"built {'full-size SD 1.5' if args.gpu else 'tiny'} inpainting pipeline on {device} ({dtype}) in {time.perf_counter() - t0:.1f} s")
    t = measure_erase(eraser, sd, size, steps, args.strength, args.repeats, device)
    n_run = min(int(steps * args.strength), steps)
    print(f"{size}x{size} image, {steps} steps at strength {args.strength} ({n_run} UNet steps, CFG), best of {args.repeats}:")
    for name, label in (("off", "refocus off "), ("on", "refocus on  "), ("stock", "stock diffusers")):
        print(f"  {label:15s} {t[name][0]:8.3f} s/image wall   {t[name][1]:8.3f} s process CPU")
    on, off, stock = t["on"], t["off"], t["stock"]
    print(f"  ratio on / off: {on[0] / off[0]:.2f}x wall, {on[1] / off[1]:.2f}x CPU time "
          f"(goal {GOALS['erase_refocus_overhead'].text()})")
    print(f"  ratio on / stock diffusers: {on[0] / stock[0]:.2f}x wall, {on[1] / stock[1]:.2f}x CPU time "
          f"(goal {GOALS['erase_vs_stock'].text()})")
    if args.gpu and is_cuda(device):
        goal = GOALS["erase_seconds_gpu"]
        print(f"  {torch.cuda.get_device_name()}: {on[0]:.3f} s/image with refocus (goal {goal.text()} on an H100/H200)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
