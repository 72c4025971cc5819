"""Random-weight models saved in the real on-disk formats, so the real loading code runs offline.

``magiceraser tiny-models OUT_DIR`` writes:
    OUT_DIR/sd-inpaint/     diffusers StableDiffusionInpaintPipeline directory (9-channel UNet)
    OUT_DIR/mask2former/    transformers Mask2FormerForUniversalSegmentation + image processor (COCO panoptic labels)
    OUT_DIR/llava/          transformers LlavaForConditionalGeneration + LlavaProcessor
    OUT_DIR/big-lama.pt     TorchScript inpainter with Big-LaMa's calling convention
    OUT_DIR/sam/            transformers SamModel + SamProcessor (facebook/sam-vit-huge's format; ReMOVE)
    OUT_DIR/dinov2/         transformers Dinov2Model + image processor (facebook/dinov2-giant's format; CFD)
Each loads with the same ``from_pretrained`` / ``torch.jit.load`` call as the real checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

# name -> (module, writer function, path under OUT_DIR)
WRITERS: dict[str, tuple[str, str, str]] = {
    "sd-inpaint": ("magiceraser.tiny_models.sd_inpaint", "write_tiny_sd_inpaint", "sd-inpaint"),
    "mask2former": ("magiceraser.tiny_models.mask2former", "write_tiny_mask2former", "mask2former"),
    "llava": ("magiceraser.tiny_models.llava", "write_tiny_llava", "llava"),
    "big-lama": ("magiceraser.tiny_models.lama", "write_tiny_lama", "big-lama.pt"),
    "sam": ("magiceraser.tiny_models.sam", "write_tiny_sam", "sam"),
    "dinov2": ("magiceraser.tiny_models.dinov2", "write_tiny_dinov2", "dinov2"),
}


def writer(name: str) -> Callable[..., Path]:
    module, func, _ = WRITERS[name]
    return getattr(importlib.import_module(module), func)


def write_tiny_models(out_dir: str | Path, names: Sequence[str] | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write the named tiny models (all by default) under ``out_dir``; existing ones are kept unless ``overwrite``."""
    from magiceraser.atomic import TMP_PREFIX, atomic_directory

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names or list(WRITERS):
        if name not in WRITERS:
            raise ValueError(f"unknown tiny model {name!r}; choose from {list(WRITERS)}")
        target = out / WRITERS[name][2]
        if target.exists() and not overwrite:
            written[name] = target
            continue
        if target.suffix:  # a single file: written under a temporary name, renamed when complete
            tmp = target.with_name(f"{TMP_PREFIX}{target.name}")
            try:
                writer(name)(tmp)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            with atomic_directory(target) as tmp:
                writer(name)(tmp)
        written[name] = target
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="magiceraser tiny-models", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write the models into")
    parser.add_argument("--only", nargs="*", choices=list(WRITERS), help="write only these models")
    parser.add_argument("--overwrite", action="store_true", help="rewrite models that already exist")
    args = parser.parse_args(argv)
    for name, path in write_tiny_models(args.out_dir, args.only, args.overwrite).items():
        print(f"{name:12s} {path}")
    return 0
