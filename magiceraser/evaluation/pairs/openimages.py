"""OLRD pairs from OpenImages V6/V7 instance segmentations, composed with the data engine's ``compose``.

Inputs: ``*-annotations-object-segmentation.csv`` + the mask PNGs (and optionally the
class-descriptions CSV). OpenImages labels objects only, not background stuff, so the panoptic
input of ``compose`` is built from the annotations (:func:`openimages_panoptic`): every annotated
instance is a thing segment (COCO label when the class name is a COCO thing, else a stand-in thing
label) and every pixel no instance covers is one background segment. The shifted object therefore
lands on a region free of other annotated objects. With ``segmenter`` set, background stuff labels
come from that panoptic segmenter instead (annotated instances still override it). The pair's
metadata names the OpenImages class of the moved object: ``object_class`` (its name from
``class_descriptions`` when given, else the label id such as ``/m/04h7h``), ``object_label_id``,
and ``compose_class``, the COCO label compose placed it as.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from magiceraser.evaluation.pairs import EvalPair, PairOrSkip, PairSkip
from magiceraser.evaluation.pairs.composed import compose_pair, seeded_order
from magiceraser.imageio import ImageDecodeError, decode_image
from magiceraser.keys import file_name_key


def openimages_panoptic(
    instance_masks: list[tuple[np.ndarray, str]], shape: tuple[int, int], base=None
):
    """PanopticResult for ``compose`` from OpenImages instance masks (see the module docstring).

    ``instance_masks``: (bool HxW, OpenImages class name) per instance. Returns the result and the
    segment id -> class name map, in instance order (instance ``i`` has the ``i``-th id; an
    instance hidden by later ones keeps its entry). ``base``: an optional segmenter result
    supplying background stuff.
    """
    from magiceraser import coco
    from magiceraser.panoptic import PanopticResult, Segment

    name_to_label = {c.name.lower(): i for i, c in enumerate(coco.COCO_PANOPTIC)}
    fallback_thing = min(coco.THING_LABELS)
    background_label = _openimages_background_label()
    seg = np.zeros(shape, np.int32)
    segments: list[Segment] = []
    names: dict[int, str] = {}
    next_id = 1
    if base is not None:
        seg = base.segment_map.astype(np.int32).copy()
        segments = [s for s in base.segments if not s.isthing]
        keep = {s.id for s in segments}
        seg[~np.isin(seg, list(keep))] = 0
        next_id = int(seg.max(initial=0)) + 1
    for mask, cls in instance_masks:
        label = name_to_label.get(cls.lower())
        if label is None or label not in coco.THING_LABELS:
            label = fallback_thing
        seg[mask] = next_id
        names[next_id] = cls
        next_id += 1
        segments.append(Segment(id=next_id - 1, label=label, area=int(mask.sum())))
    if base is None:
        free = seg == 0
        if free.any():
            seg[free] = next_id
            segments.append(Segment(id=next_id, label=background_label, area=int(free.sum())))
    # areas after overlaps are resolved
    counts = np.bincount(seg.ravel(), minlength=next_id + 1)
    segments = [Segment(s.id, s.label, int(counts[s.id]) if s.id < len(counts) else 0, s.score) for s in segments]
    segments = [s for s in segments if s.area > 0]
    return PanopticResult(seg, segments), names


def _openimages_object_meta(pan, classes: dict[int, str], label_ids: list[str]) -> dict[int, dict[str, Any]]:
    """Segment id -> the metadata of its OpenImages object (``classes`` lists the ids in instance order)."""
    from magiceraser import coco

    compose_class = {s.id: coco.COCO_PANOPTIC[s.label].name for s in pan.segments}
    return {sid: {"object_class": name, "object_label_id": label_id, "compose_class": compose_class.get(sid, "")}
            for (sid, name), label_id in zip(classes.items(), label_ids, strict=True)}


def _openimages_background_label() -> int:
    # The un-annotated region stands for "background stuff" as a whole; any label in
    # BACKGROUND_LABELS makes compose treat it as a placement region. Prefer a generic one.
    from magiceraser import coco

    for name in ("wall-other-merged", "grass-merged", "pavement-merged"):
        for i, c in enumerate(coco.COCO_PANOPTIC):
            if c.name == name and i in coco.BACKGROUND_LABELS:
                return i
    return min(coco.BACKGROUND_LABELS)


def read_openimages_masks_csv(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """Rows of an OpenImages ``*-annotations-object-segmentation.csv``, grouped by ImageID."""
    by_image: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        needed = {"MaskPath", "ImageID", "LabelName"}
        if not needed <= set(reader.fieldnames or []):
            raise ValueError(f"{path} is not an OpenImages segmentation CSV: needs columns {sorted(needed)}, has {reader.fieldnames}")
        for row in reader:
            by_image[row["ImageID"]].append(row)
    return by_image


def read_class_descriptions(path: str | Path | None) -> dict[str, str]:
    """OpenImages ``class-descriptions*.csv`` (``/m/0xyz,Name`` lines) -> {label id: name}."""
    if not path:
        return {}
    out = {}
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if len(row) >= 2 and row[0].startswith("/m/"):
                out[row[0]] = row[1]
    return out


def iter_openimages(
    images_dir: str | Path, masks_csv: str | Path, masks_dir: str | Path, num_pairs: int, seed: int,
    min_long_side: int = 0, class_descriptions: str | Path | None = None, segmenter=None, compose_cfg=None,
) -> Iterator[PairOrSkip]:
    """Up to ``num_pairs`` OLRD pairs from OpenImages segmentations, images in a seeded order."""
    from PIL import Image

    from magiceraser.datasets.compose import ComposeConfig

    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    rows = read_openimages_masks_csv(masks_csv)
    names = read_class_descriptions(class_descriptions)
    cfg = compose_cfg or ComposeConfig()
    produced = 0
    for image_id in seeded_order(list(rows), seed):
        if num_pairs and produced >= num_pairs:
            return
        key = file_name_key(image_id)
        img_path = next((images_dir / f"{image_id}{e}" for e in (".jpg", ".png") if (images_dir / f"{image_id}{e}").is_file()), None)
        if img_path is None:
            continue  # the CSV covers the whole split; only downloaded images are candidates
        try:
            image = decode_image(img_path)
        except ImageDecodeError as exc:
            yield PairSkip(key, exc.reason, str(exc))
            continue
        if min_long_side and max(image.shape[:2]) <= min_long_side:
            continue
        h, w = image.shape[:2]
        instances = []
        label_ids = []
        missing = []
        for row in rows[image_id]:
            mp = masks_dir / row["MaskPath"]
            if not mp.is_file():
                missing.append(row["MaskPath"])
                continue
            # Mask PNGs are stored at their own resolution: bring them to the image's (nearest).
            m = Image.open(mp).convert("L")
            if m.size != (w, h):
                m = m.resize((w, h), Image.NEAREST)
            instances.append((np.asarray(m) >= 128, names.get(row["LabelName"], row["LabelName"])))
            label_ids.append(row["LabelName"])
        if not instances:
            yield PairSkip(key, "missing_file", f"no mask PNG found for {image_id} (e.g. {missing[:1]}) under {masks_dir}")
            continue
        base = segmenter.segment([image])[0] if segmenter is not None else None
        pan, classes = openimages_panoptic(instances, (h, w), base)
        yield (item := compose_pair(key, image, pan, seed, cfg, {"source": img_path.name},
                                     _openimages_object_meta(pan, classes, label_ids)))
        produced += isinstance(item, EvalPair)

