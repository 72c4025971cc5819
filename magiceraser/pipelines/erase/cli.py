"""``magiceraser erase``: erase masked objects from one image or from directories of images and masks.

    magiceraser erase --image IMG --mask MASK --out OUT_DIR [--config FILE] [key=value ...]
    magiceraser erase --image IMG --mask MASK --out RESULT.png
    magiceraser erase --image IMAGES_DIR --mask MASKS_DIR --out OUT_DIR     # matched by file stem

A single image writes ``result.png`` (plus ``input.png`` and ``mask.png`` with save_inputs) and
``erase.json`` into OUT_DIR, or just the result when OUT ends in .png/.jpg. Directory mode writes
``{stem}.png`` per image and ``erase_report.json`` listing what was erased and what was skipped
and why (unreadable files, size mismatch, empty mask, no matching mask); a bad item never stops
the batch. Masks are binarised at mask_threshold (default 128 of 255).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from magiceraser.pipelines.erase.config import EraseConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


class SkipItem(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def build_pipeline(cfg: EraseConfig):
    """The pipeline a config describes (loads the models)."""
    import torch

    from magiceraser.pipelines.erase.pipeline import MagicEraserPipeline

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    segmenter = None
    if cfg.segmenter:
        from magiceraser.datasets.segment import Mask2FormerSegmenter

        segmenter = Mask2FormerSegmenter(cfg.segmenter, device=device)
    content_init: Any = cfg.content_init
    if cfg.content_init == "telea":
        from magiceraser.pipelines.erase.content_init import TeleaInpainter

        content_init = TeleaInpainter(cfg.telea_radius)
    return MagicEraserPipeline.from_pretrained(
        cfg.base_model, trained_dir=cfg.trained_dir, segmenter=segmenter, content_init=content_init,
        lama_path=cfg.lama_path, device=device, dtype=cfg.dtype, model_size=cfg.model_size,
        lambda_pos=cfg.lambda_pos, lambda_neg=cfg.lambda_neg,
    )


def load_pair(image_path: Path, mask_path: Path, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check an (image, mask) pair; SkipItem with a reason code when unusable."""
    from magiceraser.imageio import ImageDecodeError, decode_image, decode_mask
    from magiceraser.pipelines.erase.pipeline import prepare_inputs

    try:
        image = decode_image(image_path)
    except ImageDecodeError as exc:
        raise SkipItem(f"image_{exc.reason}", f"{image_path}: {exc}") from exc
    try:
        mask = decode_mask(mask_path, threshold=threshold)
    except ImageDecodeError as exc:
        raise SkipItem(f"mask_{exc.reason}", f"{mask_path}: {exc}") from exc
    try:
        return prepare_inputs(image, mask, threshold)
    except ValueError as exc:
        reason = "size_mismatch" if "same size" in str(exc) else "empty_mask" if "empty" in str(exc) else "bad_input"
        raise SkipItem(reason, f"{image_path}: {exc}") from exc


def erase_one(pipe, cfg: EraseConfig, image: np.ndarray, mask: np.ndarray):
    return pipe(
        image, mask, tag=cfg.tag, prompt=cfg.prompt, negative_prompt=cfg.negative_prompt,
        num_inference_steps=cfg.num_inference_steps, strength=cfg.strength, guidance_scale=cfg.guidance_scale,
        refocus=cfg.refocus, seed=cfg.seed, mask_dilation=cfg.mask_dilation, crop_margin=cfg.crop_margin,
        feather=cfg.feather,
    )


def _write_png(path: Path, arr: np.ndarray) -> None:
    from magiceraser.atomic import atomic_write_bytes
    from magiceraser.imageio import encode_image

    atomic_write_bytes(path, encode_image(arr, "png"))


def match_by_stem(image_dir: Path, mask_dir: Path) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """(image, mask) pairs with the same file stem; images without a mask are reported."""
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs, missing = [], []
    for img in sorted(image_dir.iterdir()):
        if img.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if img.stem in masks:
            pairs.append((img, masks[img.stem]))
        else:
            missing.append({"image": str(img), "reason": "no_mask", "message": f"no mask named {img.stem}.* in {mask_dir}"})
    return pairs, missing


def run_single(pipe, cfg: EraseConfig, image_path: Path, mask_path: Path, out: Path) -> int:
    from magiceraser.atomic import atomic_write_json

    try:
        image, mask = load_pair(image_path, mask_path, cfg.mask_threshold)
    except SkipItem as exc:
        print(f"magiceraser erase: {exc}", file=sys.stderr)
        return 1
    t0 = time.time()
    result = erase_one(pipe, cfg, image, mask)
    seconds = time.time() - t0
    if out.suffix.lower() in IMAGE_SUFFIXES:
        _write_png(out, result.image) if out.suffix.lower() == ".png" else _write_jpg(out, result.image)
        print(f"wrote {out} ({seconds:.1f} s, prompt {result.prompt!r})")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    _write_png(out / "result.png", result.image)
    if cfg.save_inputs:
        _write_png(out / "input.png", image)
        _write_png(out / "mask.png", mask.astype(np.uint8) * 255)
    atomic_write_json(out / "erase.json", {
        "image": str(image_path), "mask": str(mask_path), "seconds": round(seconds, 3),
        "prompt": result.prompt, "tag": result.tag,
        "regions": [{"box": list(r.box), "model_shape": list(r.model_shape), "tag": r.tag, "prompt": r.prompt} for r in result.regions],
    })
    print(f"wrote {out / 'result.png'} ({seconds:.1f} s, prompt {result.prompt!r})")
    return 0


def _write_jpg(path: Path, arr: np.ndarray) -> None:
    from magiceraser.atomic import atomic_write_bytes
    from magiceraser.imageio import encode_image

    atomic_write_bytes(path, encode_image(arr, "jpg", quality=95))


def run_batch(pipe, cfg: EraseConfig, image_dir: Path, mask_dir: Path, out: Path) -> int:
    from tqdm import tqdm

    from magiceraser.atomic import atomic_write_json

    pairs, skipped = match_by_stem(image_dir, mask_dir)
    done: list[dict[str, Any]] = []
    out.mkdir(parents=True, exist_ok=True)
    for image_path, mask_path in tqdm(pairs, desc="erasing", unit="image"):
        try:
            image, mask = load_pair(image_path, mask_path, cfg.mask_threshold)
        except SkipItem as exc:
            skipped.append({"image": str(image_path), "reason": exc.reason, "message": str(exc)})
            tqdm.write(f"skipped {image_path.name}: {exc}")
            continue
        result = erase_one(pipe, cfg, image, mask)
        target = out / f"{image_path.stem}.png"
        _write_png(target, result.image)
        done.append({"image": str(image_path), "mask": str(mask_path), "out": str(target), "prompt": result.prompt})
    atomic_write_json(out / "erase_report.json", {"erased": done, "skipped": skipped})
    print(f"erased {len(done)} image(s), skipped {len(skipped)} (reasons in {out / 'erase_report.json'})")
    return 0 if done or not skipped else 1


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli import config_argparser, load_cli_config

    parser = config_argparser("erase", __doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="image file, or a directory of images")
    parser.add_argument("--mask", required=True, help="mask file (white = erase), or a directory of masks named like the images")
    parser.add_argument("--out", required=True, help="output directory (or a .png/.jpg file for a single image)")
    args = parser.parse_args(argv)
    cfg = load_cli_config(EraseConfig, args)
    image, mask, out = Path(args.image), Path(args.mask), Path(args.out)
    for p, what in ((image, "--image"), (mask, "--mask")):
        if not p.exists():
            print(f"magiceraser erase: {what} {p} does not exist", file=sys.stderr)
            return 2
    if image.is_dir() != mask.is_dir():
        print("magiceraser erase: --image and --mask must both be files or both be directories", file=sys.stderr)
        return 2
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)  # this command's process only, chosen by its config
    try:
        pipe = build_pipeline(cfg)
    except (OSError, ValueError) as exc:
        print(f"magiceraser erase: cannot load the models: {exc}", file=sys.stderr)
        return 2
    if image.is_dir():
        return run_batch(pipe, cfg, image, mask, out)
    return run_single(pipe, cfg, image, mask, out)


if __name__ == "__main__":
    raise SystemExit(main())
