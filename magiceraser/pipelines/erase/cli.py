"""``magiceraser erase``: erase masked objects from one image or from directories of images and masks.

    magiceraser erase --image IMG --mask MASK --out OUT_DIR [--config FILE] [key=value ...]
    magiceraser erase --image IMG --mask MASK --out RESULT.{png,jpg,jpeg,webp,tif,tiff}
    magiceraser erase --image IMAGES_DIR --mask MASKS_DIR --out OUT_DIR     # matched by file stem
    magiceraser erase --image IMG_OR_DIR --classes person,car --out OUT     # masks from the segmenter

A single image writes ``result.png`` (plus ``input.png`` and ``mask.png`` unless save_inputs=false) and
``erase.json`` into OUT_DIR, or just the result when OUT names a file (its format follows the
extension). Directory mode writes ``{stem}.{output_format}`` per image (and, with save_inputs=true,
``inputs/{stem}.png`` and ``masks/{stem}.png``) and ``erase_report.json``:
every image ends erased, skipped with a reason (unreadable files, size mismatch, empty mask, no
matching mask, an exception while erasing) or not done (interrupted); a bad item never stops the
batch, the report is rewritten atomically as items finish, and a rerun reuses results whose
image, mask and settings are unchanged (see ``batch.py``). Masks are binarised at mask_threshold.
With ``--classes`` there are no mask files: each image's mask is every thing segment of those
classes found by the config's segmenter, grown by ``--class-dilation`` px (``classes.py``); the
report (or erase.json) records per image which segments were erased, and an image without any of
them is skipped with reason ``no_class_found``.

Everything that can be checked is checked before models load: paths exist and are readable, the
output is writable and is not (inside) an input, no two inputs share a stem, model folders exist.
A user error prints one line naming the flag, key or file and exits 2 (a single image in which
``--classes`` finds nothing too); exit 1 means some item of a batch failed or none was erased,
130 an interrupted batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from magiceraser.errors import UserError
from magiceraser.lock import OutputLock
from magiceraser.pipelines.erase import checks
from magiceraser.pipelines.erase.batch import BatchPlan, plan_batch
from magiceraser.pipelines.erase.batch_run import run_batch
from magiceraser.pipelines.erase.checks import EraseUserError, SingleTarget
from magiceraser.pipelines.erase.config import EraseConfig
from magiceraser.pipelines.erase.single import run_single
from magiceraser.write_errors import writing


def load_pipeline(cfg: EraseConfig):
    """The config's eraser (``build.eraser_from_config``), a load failure (bad folder, wrong files) turned into a user error."""
    from magiceraser.pipelines.erase.build import eraser_from_config

    try:
        return eraser_from_config(cfg)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        models = {"base_model": cfg.base_model, "segmenter": cfg.segmenter}
        if (offline := checks.hub_failure(exc, models)) is not None:
            raise offline from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EraseUserError(
            f"cannot load the models ({type(exc).__name__}: {first}); check base_model, trained_dir, segmenter and lama_path"
        ) from exc


def prepare(cfg: EraseConfig, image: Path, mask: Path | None, out: Path, classes: tuple[str, ...] = (),
            class_dilation: int = 0) -> SingleTarget | BatchPlan:
    """Every check that needs no model, in the order a user would fix them; EraseUserError on the first failure.

    ``mask`` None: the masks are built from ``classes`` (which then need the config's segmenter).
    """
    checks.check_input(image, "--image")
    if mask is None:
        if not cfg.segmenter:
            raise EraseUserError("--classes needs a segmenter: set segmenter= to a Mask2Former COCO panoptic checkpoint")
    else:
        checks.check_input(mask, "--mask")
        checks.check_inputs_pair(image, mask)
    if image.is_dir():
        checks.check_batch_out(out, image, mask if mask is not None else image)
        plan = plan_batch(image, mask, out, cfg.output_format, classes)
        if mask is None:
            plan.pairs = [dataclasses.replace(p, class_dilation=class_dilation) for p in plan.pairs]
        return plan
    target = checks.single_target(out)
    checks.check_single_outputs(target, image, mask if mask is not None else image, cfg.save_inputs is not False)
    return target


def parse_class_flags(mask: str | None, classes: str | None, class_dilation: int) -> tuple[str, ...]:
    """``--mask`` xor ``--classes``; the class names checked (EraseUserError naming the flag)."""
    from magiceraser.class_masks import parse_class_names

    if (mask is None) == (classes is None):
        raise EraseUserError("give either --mask (a mask file or folder) or --classes (e.g. --classes person,car), not both or neither")
    if class_dilation < 0:
        raise EraseUserError(f"--class-dilation must be >= 0, got {class_dilation}")
    if classes is None:
        return ()
    try:
        names = parse_class_names(classes)
    except ValueError as exc:
        raise EraseUserError(f"--classes: {exc}") from exc
    if not names:
        raise EraseUserError("--classes names no class; give e.g. --classes person,car")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    from magiceraser.cli_args import config_argparser, load_cli_config, user_error_exit

    parser = config_argparser("erase", __doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="image file, or a directory of images")
    parser.add_argument("--mask", default=None, help="mask file (white = erase), or a directory of masks named like the images")
    parser.add_argument("--classes", default=None, help="instead of --mask: erase every object of these COCO classes, e.g. person,car")
    parser.add_argument("--class-dilation", type=int, default=4, help="px the --classes mask is grown by (default 4)")
    parser.add_argument("--out", required=True, help="output directory, or a .png/.jpg/.webp/.tif file for a single image")
    args = parser.parse_args(argv)
    cfg = load_cli_config(EraseConfig, args)
    image, mask, out = Path(args.image), Path(args.mask) if args.mask is not None else None, Path(args.out)
    lock: OutputLock | None = None
    try:
        classes = parse_class_flags(args.mask, args.classes, args.class_dilation)
        job = prepare(cfg, image, mask, out, classes, args.class_dilation)
        checks.check_models(cfg)
        if not isinstance(job, SingleTarget):
            # One batch per output folder, refused before any model loads (LockHeld: one line, exit 2).
            with writing(out, "the batch's lock file"):
                out.mkdir(parents=True, exist_ok=True)
                lock = OutputLock(out)
                lock.acquire()
        if cfg.num_threads:
            import torch

            torch.set_num_threads(cfg.num_threads)  # this command's process only, chosen by its config
        pipe = load_pipeline(cfg)
        if isinstance(job, SingleTarget):
            return run_single(pipe, cfg, image, mask, job, classes, args.class_dilation)
        return run_batch(pipe, cfg, job, out)
    except UserError as exc:  # the dispatcher's own report (tests and scripts call this main directly)
        code = user_error_exit("erase", exc, args)
        if code is None:
            raise
        return code
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    raise SystemExit(main())
