"""OLRD pairs built from COCO panoptic ground truth with the data engine's ``compose``,
``num_pairs`` images in a seeded order (:func:`magiceraser.evaluation.pairs.composed.seeded_order`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from magiceraser.evaluation.pairs import EvalPair, PairOrSkip, PairSkip
from magiceraser.evaluation.pairs.composed import compose_pair, seeded_order
from magiceraser.imageio import ImageDecodeError, decode_image
from magiceraser.keys import file_name_key


def iter_coco_panoptic(
    images_dir: str | Path, panoptic_json: str | Path, panoptic_dir: str | Path, num_pairs: int, seed: int,
    min_long_side: int = 0, compose_cfg=None,
) -> Iterator[PairOrSkip]:
    """Up to ``num_pairs`` OLRD pairs from COCO panoptic ground truth, images in a seeded order."""
    from magiceraser.datasets.coco_panoptic import CocoPanopticAnnotations
    from magiceraser.datasets.compose import ComposeConfig

    images_dir = Path(images_dir)
    ann = CocoPanopticAnnotations(panoptic_json, panoptic_dir)
    cfg = compose_cfg or ComposeConfig()
    produced = 0
    for file_name in seeded_order(ann.file_names(), seed):
        if num_pairs and produced >= num_pairs:
            return
        # The path without its extension: Places365-style trees repeat base names across folders.
        key = file_name_key(str(PurePosixPath(file_name).with_suffix("")))
        try:
            image = decode_image(images_dir / file_name)
        except ImageDecodeError as exc:
            yield PairSkip(key, exc.reason, str(exc))
            continue
        if min_long_side and max(image.shape[:2]) <= min_long_side:
            continue  # the paper samples images "with side resolution higher than 512"
        try:
            pan = ann.lookup(file_name)
        except LookupError as exc:  # the data engine's AnnotationError carries a reason code
            yield PairSkip(key, getattr(exc, "reason", "no_annotation"), str(exc))
            continue
        if pan.shape != image.shape[:2]:
            yield PairSkip(key, "size_mismatch", f"annotation {pan.shape} vs image {image.shape[:2]}")
            continue
        item = compose_pair(key, image, pan, seed, cfg, {"source": file_name})
        produced += isinstance(item, EvalPair)
        yield item
