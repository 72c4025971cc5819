"""Evaluation pairs: (input with the object, erase mask, ground truth without it), from four sources.

Every source yields :class:`EvalPair` at the source's own resolution (the run letterboxes them) and
reports items it cannot use as :class:`PairSkip` records (key + reason) instead of stopping.

* ``realhm``: RealHM (Jiang et al., SSH, ICCV 2021) in one of two layouts (``layout``):
    - ``folders``: ``ROOT/composite/<id>.<ext>``, ``ROOT/mask/<id>.<ext>``, ``ROOT/gt/<id>.<ext>``
      (same stem in the three folders; any of .jpg/.jpeg/.png). Use this for re-packed copies.
    - ``ssh``: the archive as distributed (``RealHM/vendor_testing_{1,2,3}/.../``). Per example ``X``:
      ``X.jpg`` (photo the object comes from), ``X_mask.jpg`` (object mask), ``X_fore.jpg`` (the
      background photo the object is placed onto; the SSH reference code names it ``bg_path``),
      ``X_gt.jpg`` (harmonised composite), ``X_small.jpg`` (thumbnail). Following the SSH reference
      code, the composite is ``X·m + X_fore·(1 − m)``; the erasing ground truth is the background
      photo ``X_fore.jpg`` (the paper: "recover I from Ĩ and m").
    - ``auto``: ``folders`` when ``ROOT/composite`` exists, else ``ssh``.
* ``olrd_shards``: any OLRD WebDataset shard set: input ``blended.*``, mask ``mask.png``,
  target ``original.*`` per sample.
* ``coco_panoptic``: OLRD pairs built from COCO panoptic ground truth with the data engine's
  ``compose`` (the same shift-and-blend as training data), ``num_pairs`` images in a seeded order.
* ``openimages``: OLRD pairs from OpenImages V6/V7 instance segmentations
  (``*-annotations-object-segmentation.csv`` + the mask PNGs). OpenImages labels objects only, not
  background stuff, so the panoptic input of ``compose`` is built from the annotations: every
  annotated instance is a thing segment (COCO label when the class name is a COCO thing, else a
  stand-in thing label) and every pixel no instance covers is one background segment. The pair's
  metadata names the OpenImages class of the moved object: ``object_class`` (its name from
  ``class_descriptions`` when given, else the label id such as ``/m/04h7h``), ``object_label_id``,
  and ``compose_class``, the COCO label compose placed it as. The shifted object therefore lands on a region free
  of other annotated objects. With ``segmenter`` set, background stuff labels come from that
  panoptic segmenter instead (annotated instances still override it).
"""

from __future__ import annotations

import csv
import json
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from magiceraser.imageio import ImageDecodeError, decode_image, decode_mask

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class EvalPair:
    key: str  # unique within the dataset; safe as a file name
    image: np.ndarray  # HxWx3 uint8 input containing the object
    mask: np.ndarray  # bool HxW, True = erase
    target: np.ndarray  # HxWx3 uint8 ground truth without the object
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PairSkip:
    key: str
    reason: str
    detail: str = ""


PairOrSkip = EvalPair | PairSkip


def safe_key(text: str) -> str:
    """A file-name-safe key (letters, digits, '-', '_')."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_") or "item"


def check_pair(key: str, image: np.ndarray, mask: np.ndarray, target: np.ndarray, meta: dict | None = None) -> PairOrSkip:
    """An EvalPair, or a skip record when shapes disagree or the mask is empty."""
    if image.shape != target.shape:
        return PairSkip(key, "size_mismatch", f"input {image.shape[:2]} vs ground truth {target.shape[:2]}")
    if mask.shape != image.shape[:2]:
        return PairSkip(key, "size_mismatch", f"mask {mask.shape} vs image {image.shape[:2]}")
    if not mask.any():
        return PairSkip(key, "empty_mask", "the mask selects no pixel")
    return EvalPair(key, image, mask, target, dict(meta or {}))


# ---------------------------------------------------------------- RealHM


def _find_with_stem(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS:
        for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def iter_realhm(root: str | Path, layout: str = "auto") -> Iterator[PairOrSkip]:
    """RealHM examples in sorted order (see the module docstring for the layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"RealHM root {root} does not exist: point dataset.path at the extracted RealHM folder")
    if layout == "auto":
        layout = "folders" if (root / "composite").is_dir() else "ssh"
    if layout == "folders":
        yield from _iter_realhm_folders(root)
    elif layout == "ssh":
        yield from _iter_realhm_ssh(root)
    else:
        raise ValueError(f"unknown RealHM layout {layout!r}: use 'folders', 'ssh' or 'auto'")


def _iter_realhm_folders(root: Path) -> Iterator[PairOrSkip]:
    comp_dir, mask_dir, gt_dir = root / "composite", root / "mask", root / "gt"
    for d in (comp_dir, mask_dir, gt_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"RealHM folder layout needs {d} (composite/, mask/, gt/ with matching file stems)")
    for comp in sorted(p for p in comp_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
        key = safe_key(comp.stem)
        mask_p, gt_p = _find_with_stem(mask_dir, comp.stem), _find_with_stem(gt_dir, comp.stem)
        if mask_p is None or gt_p is None:
            yield PairSkip(key, "missing_file", f"no {'mask' if mask_p is None else 'gt'} file for {comp.name}")
            continue
        try:
            yield check_pair(key, decode_image(comp), decode_mask(mask_p), decode_image(gt_p), {"source": str(comp)})
        except ImageDecodeError as exc:
            yield PairSkip(key, exc.reason, str(exc))


def _iter_realhm_ssh(root: Path) -> Iterator[PairOrSkip]:
    masks = sorted(p for p in root.rglob("*_mask.*") if p.suffix.lower() in IMAGE_EXTS)
    if not masks:
        raise FileNotFoundError(
            f"no RealHM examples under {root}: expected <name>_mask.jpg next to <name>.jpg and <name>_fore.jpg "
            "(RealHM as distributed), or composite/ mask/ gt/ folders"
        )
    for mask_p in masks:
        stem = mask_p.name[: -len("_mask" + mask_p.suffix)]
        folder = mask_p.parent
        key = safe_key(str((folder / stem).relative_to(root)))
        fore_p, bg_p = _find_with_stem(folder, stem), _find_with_stem(folder, stem + "_fore")
        if fore_p is None or bg_p is None:
            yield PairSkip(key, "missing_file", f"{stem}: needs {stem}.jpg and {stem}_fore.jpg next to the mask")
            continue
        try:
            fore, bg, mask = decode_image(fore_p), decode_image(bg_p), decode_mask(mask_p)
        except ImageDecodeError as exc:
            yield PairSkip(key, exc.reason, str(exc))
            continue
        if fore.shape != bg.shape or mask.shape != bg.shape[:2]:
            yield PairSkip(key, "size_mismatch", f"object photo {fore.shape[:2]}, background {bg.shape[:2]}, mask {mask.shape}")
            continue
        composite = np.where(mask[..., None], fore, bg)
        yield check_pair(key, composite, mask, bg, {"source": str(folder / stem)})


# ---------------------------------------------------------------- OLRD shards


def shard_paths(pattern: str | list[str]) -> list[Path]:
    """Shard files from a glob, a directory (all ``*.tar`` in it) or a list of them, sorted."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    out: list[Path] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_dir():
            out += sorted(p.glob("*.tar"))
        else:
            out += sorted(Path(x) for x in glob(pat))
    if not out:
        raise FileNotFoundError(f"no OLRD shards match {pattern!r}: give a directory, a glob like 'olrd/olrd-*.tar' or a list")
    return out


def _iter_tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    # WebDataset convention: key = member path up to the first dot of its base name; members of a
    # sample are contiguous in the tar.
    current: str | None = None
    files: dict[str, bytes] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            dirname, _, base = member.name.rpartition("/")
            if "." not in base:
                continue
            stem, ext = base.split(".", 1)
            key = f"{dirname}/{stem}" if dirname else stem
            if key != current:
                if current is not None:
                    yield current, files
                current, files = key, {}
            fh = tar.extractfile(member)
            files[ext] = fh.read() if fh is not None else b""
    if current is not None:
        yield current, files


def iter_olrd_shards(pattern: str | list[str]) -> Iterator[PairOrSkip]:
    """OLRD samples: input ``blended.*``, mask ``mask.png``, target ``original.*``."""
    for path in shard_paths(pattern):
        try:
            samples = list(_iter_tar_samples(path))
        except (tarfile.TarError, OSError) as exc:
            yield PairSkip(safe_key(path.name), "bad_shard", f"{path}: {exc}")
            continue
        for key, files in samples:
            k = safe_key(key)
            blended = next((files[e] for e in ("blended.jpg", "blended.png") if e in files), None)
            original = next((files[e] for e in ("original.jpg", "original.png") if e in files), None)
            if blended is None or original is None or "mask.png" not in files:
                yield PairSkip(k, "missing_file", f"{path.name}:{key} lacks blended/original/mask.png (has {sorted(files)})")
                continue
            try:
                meta = json.loads(files["json"]) if "json" in files else {}
                yield check_pair(k, decode_image(blended), decode_mask(files["mask.png"]), decode_image(original),
                                 {"source": f"{path.name}:{key}", **{m: meta[m] for m in ("object_class", "tags") if m in meta}})
            except ImageDecodeError as exc:
                yield PairSkip(k, exc.reason, str(exc))
            except json.JSONDecodeError as exc:
                yield PairSkip(k, "bad_json", str(exc))


# ---------------------------------------------------------------- OLRD pairs via compose


def moved_segment_id(pan, composed) -> int:
    """The id of the segment ``compose`` moved: its pixels are the pasted mask shifted back by the offset."""
    ys, xs = np.nonzero(composed.mask)
    dx, dy = composed.offset
    return int(pan.segment_map[ys[0] - dy, xs[0] - dx])


def _compose_pair(key: str, image: np.ndarray, pan, seed: int, compose_cfg, extra_meta: dict,
                  object_meta: dict[int, dict[str, Any]] | None = None) -> PairOrSkip:
    """Compose one OLRD pair; ``object_meta``: segment id -> metadata of that object (overrides the COCO class)."""
    from magiceraser.datasets.compose import ComposeSkip, compose, rng_for

    try:
        c = compose(image, pan, rng_for(key, seed), compose_cfg)
    except ComposeSkip as exc:
        return PairSkip(key, "compose_skip", getattr(exc, "reason", str(exc)))
    from magiceraser import coco

    meta = {"object_class": coco.COCO_PANOPTIC[c.object_label].name, "offset": list(c.offset), "tags": list(c.tags)}
    if object_meta is not None:
        meta.update(object_meta.get(moved_segment_id(pan, c), {}))
    meta.update(extra_meta)
    # The blended copy is the input, the untouched scene the ground truth (method.md, OLRD).
    return check_pair(key, np.asarray(c.blended, np.uint8), np.asarray(c.mask, bool), image, meta)


def seeded_order(items: list[str], seed: int) -> list[str]:
    """A seeded permutation of sorted ``items`` (the same list for the same seed on any machine)."""
    items = sorted(items)
    perm = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in perm]


def iter_coco_panoptic(
    images_dir: str | Path, panoptic_json: str | Path, panoptic_dir: str | Path, num_pairs: int, seed: int,
    min_long_side: int = 0, compose_cfg=None,
) -> Iterator[PairOrSkip]:
    """Up to ``num_pairs`` OLRD pairs from COCO panoptic ground truth, images in a seeded order."""
    from magiceraser.datasets.compose import ComposeConfig
    from magiceraser.datasets.segment import CocoPanopticAnnotations

    images_dir = Path(images_dir)
    ann = CocoPanopticAnnotations(panoptic_json, panoptic_dir)
    cfg = compose_cfg or ComposeConfig()
    produced = 0
    for file_name in seeded_order(ann.file_names(), seed):
        if num_pairs and produced >= num_pairs:
            return
        # The path without its extension: Places365-style trees repeat base names across folders.
        key = safe_key(str(PurePosixPath(file_name).with_suffix("")))
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
        item = _compose_pair(key, image, pan, seed, cfg, {"source": file_name})
        produced += isinstance(item, EvalPair)
        yield item


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
        key = safe_key(image_id)
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
        yield (item := _compose_pair(key, image, pan, seed, cfg, {"source": img_path.name},
                                     _openimages_object_meta(pan, classes, label_ids)))
        produced += isinstance(item, EvalPair)

