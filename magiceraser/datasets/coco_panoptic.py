"""Ground-truth panoptic annotations in the COCO panoptic format (JSON + PNG), read and written.

The format (cocodataset.org, "panoptic segmentation"):

* ``panoptic.json``: ``{"images": [{"id", "file_name", "width", "height"}], "annotations":
  [{"image_id", "file_name": "<stem>.png", "segments_info": [{"id", "category_id", "area", "bbox",
  "iscrowd"}]}], "categories": [{"id", "name", "isthing", "supercategory"}]}``.
* ``panoptic/<stem>.png``: RGB image whose pixel (R, G, B) encodes the segment id
  ``R + 256·G + 256²·B``; 0 = unlabelled.

Category ids are COCO's (1..200 with gaps); they are mapped to the contiguous label space of
:mod:`magiceraser.coco` by name when the JSON lists categories, else by COCO id.

Images are matched to annotations by the path the JSON's ``images[].file_name`` names (COCO's
own bare names, or paths such as ``airfield/00000001.jpg`` relative to the input folder): an
image whose path ends in a named path gets that entry (the longest one if several); an image
whose path ends in none falls back to its base name, but only where exactly one entry has that
base name. Anything else is ambiguous and refused with the colliding names (matching by base name
alone gave ``beach/00000001.jpg`` the segments of ``airfield/00000001.jpg``). :func:`match_inputs`
checks a whole listing before a job starts, including two inputs claiming one entry.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from magiceraser import coco
from magiceraser.panoptic import PanopticResult, Segment


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids from a COCO panoptic PNG's RGB array (HxWx3 uint8) as int32."""
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb2id`: HxW ids -> HxWx3 uint8."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, (ids // 65536) % 256], axis=-1).astype(np.uint8)


_COMPACT_ABOVE = 1 << 16  # segment ids above this are renumbered 1..n on load


class AnnotationError(LookupError):
    """No usable annotation for an image; ``reason`` is a stable skip code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _rel_path(name: str) -> str:
    """A JSON or input path as comparable POSIX text: ``./a/b.jpg``, ``/a/b.jpg`` and ``a\\b.jpg`` are ``a/b.jpg``."""
    return posixpath.normpath(name.replace("\\", "/")).lstrip("/")


def _path_parts(source: str) -> list[str]:
    """The components of an input's path or URL (``s3://bucket/a/b.jpg`` -> ``[bucket, a, b.jpg]``)."""
    return [p for p in _rel_path(source.split("://", 1)[-1]).split("/") if p]


def _listed(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


class CocoPanopticAnnotations:
    """Look up ground-truth :class:`PanopticResult` by image path (a segmentation backend)."""

    def __init__(self, json_path: str | os.PathLike, png_dir: str | os.PathLike | None = None):
        import fsspec

        self.json_path = str(json_path)
        with fsspec.open(self.json_path, "rb") as fh:
            data = json.load(fh)
        if not isinstance(data, dict) or "annotations" not in data:
            raise ValueError(f"{self.json_path} is not a COCO panoptic JSON (no 'annotations' list)")
        if png_dir:
            self.png_dir = str(png_dir)
        else:  # COCO convention: panoptic_val2017.json next to the folder panoptic_val2017/
            self.png_dir = self.json_path[: -len(".json")] if self.json_path.endswith(".json") else self.json_path
        self.model_id = f"coco_panoptic:{Path(self.json_path).name}"
        cats = {c["id"]: c for c in data.get("categories", [])}
        self._label_of: dict[int, int] = {}
        for cid, cat in cats.items():
            if cat.get("name") in coco.BY_NAME:
                self._label_of[cid] = coco.BY_NAME[cat["name"]].label
        if not cats:
            self._label_of = {c.coco_id: c.label for c in coco.COCO_PANOPTIC}
        self._by_path, self._by_base = self._index(data)

    def _index(self, data: dict) -> tuple[dict[str, dict], dict[str, list[str]]]:
        """Entries by the path the JSON names, and those paths by base name; a path named twice is refused."""
        images = {im["id"]: im for im in data.get("images", [])}
        by_path: dict[str, dict] = {}
        by_base: dict[str, list[str]] = {}
        for ann in data["annotations"]:
            im = images.get(ann["image_id"], {})
            path = _rel_path(im.get("file_name") or ann["file_name"])
            if path in by_path:
                raise ValueError(f"{self.json_path} annotates {path} twice (image ids "
                                 f"{by_path[path]['ann']['image_id']} and {ann['image_id']}): keep one entry per image")
            by_path[path] = {"ann": ann, "width": im.get("width"), "height": im.get("height")}
            by_base.setdefault(posixpath.basename(path), []).append(path)
        return by_path, by_base

    def __len__(self) -> int:
        return len(self._by_path)

    def file_names(self) -> list[str]:
        """The image paths the JSON names (normalised), sorted."""
        return sorted(self._by_path)

    def match(self, source: str) -> str:
        """The JSON path of the image at ``source`` (see the module docstring); AnnotationError if none or ambiguous."""
        parts = _path_parts(source)
        for k in range(len(parts), 0, -1):  # the longest named path the source ends in
            suffix = "/".join(parts[-k:])
            if suffix in self._by_path:
                return suffix
        base = parts[-1] if parts else ""
        candidates = self._by_base.get(base, [])
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise AnnotationError("no_annotation", f"{base or source} has no entry in {self.json_path}")
        raise AnnotationError(
            "ambiguous_annotation",
            f"{source} matches {len(candidates)} entries of {self.json_path} by base name ({_listed(sorted(candidates))}) "
            "and none by path: name the images in file_name by their path relative to the input folder",
        )

    def lookup(self, file_name: str) -> PanopticResult:
        """The annotation of the image at path ``file_name`` (matched by :meth:`match`)."""
        import fsspec
        from PIL import Image

        ann = self._by_path[self.match(file_name)]["ann"]
        png_path = f"{self.png_dir.rstrip('/')}/{ann['file_name']}"
        try:
            with fsspec.open(png_path, "rb") as fh:
                rgb = np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB"))
        except (OSError, ValueError) as exc:
            raise AnnotationError("bad_annotation", f"cannot read panoptic PNG {png_path}: {exc}") from exc
        ids = rgb2id(rgb)
        segments = []
        keep = np.zeros(int(ids.max(initial=0)) + 1, dtype=bool)
        for info in ann["segments_info"]:
            label = self._label_of.get(info["category_id"])
            sid = int(info["id"])
            if label is None or sid <= 0 or sid >= keep.size:
                continue  # unknown category or a segment absent from the PNG
            keep[sid] = True
            segments.append(Segment(id=sid, label=label, area=int(info.get("area", 0)), score=1.0))
        segment_map = np.where(keep[ids], ids, 0).astype(np.int32)
        if segments and max(s.id for s in segments) > _COMPACT_ABOVE:
            # COCO ids run up to 256^3: renumber 1..n so per-id lookup tables stay small downstream.
            known = np.asarray(sorted(s.id for s in segments), np.int64)
            pos = np.searchsorted(known, segment_map)
            pos = np.minimum(pos, known.size - 1)
            segment_map = np.where(known[pos] == segment_map, pos + 1, 0).astype(np.int32)
            new_id = {int(old): i + 1 for i, old in enumerate(known)}
            segments = [Segment(new_id[s.id], s.label, s.area, s.score) for s in segments]
        return PanopticResult(segment_map, segments)


def match_inputs(ann: CocoPanopticAnnotations, sources: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """``({source: JSON path}, sources without an entry)`` for a whole listing, before any image is read.

    Raises :class:`AnnotationError` (reason ``ambiguous_annotation``, one line naming the colliding
    names) when an input matches several entries or two inputs match one entry: either way some
    image would get another image's segments.
    """
    matched: dict[str, str] = {}
    claimed: dict[str, list[str]] = {}
    missing: list[str] = []
    ambiguous: list[str] = []
    for source in sources:
        try:
            path = ann.match(source)
        except AnnotationError as exc:
            if exc.reason == "no_annotation":
                missing.append(source)
            else:
                ambiguous.append(str(exc))
            continue
        matched[source] = path
        claimed.setdefault(path, []).append(source)
    shared = [f"{path} is claimed by {len(srcs)} inputs ({_listed(srcs)})" for path, srcs in claimed.items() if len(srcs) > 1]
    problems = ambiguous + shared
    if problems:
        raise AnnotationError("ambiguous_annotation", f"{len(problems)} ambiguous match(es) between the inputs and "
                              f"{ann.json_path}: {'; '.join(problems[:3])}" + ("; ..." if len(problems) > 3 else ""))
    return matched, missing


def write_coco_panoptic(
    out_dir: str | os.PathLike, entries: list[tuple[str, np.ndarray, list[Segment]]], json_name: str = "panoptic.json"
) -> Path:
    """Write ``(image_file_name, segment_map, segments)`` entries as ``json_name`` + PNG folder.

    The PNG folder is named like the JSON's stem (``panoptic.json`` -> ``panoptic/``), the COCO
    convention that :class:`CocoPanopticAnnotations` follows by default. Each PNG keeps its image's
    relative path (``airfield/00000001.jpg`` -> ``panoptic/airfield/00000001.png``), so images of
    one name in different folders never share a PNG; a file name given twice is refused.
    """
    from magiceraser.atomic import atomic_write_bytes, atomic_write_json
    from magiceraser.imageio import encode_image

    out = Path(out_dir)
    png_dir = out / Path(json_name).stem
    png_dir.mkdir(parents=True, exist_ok=True)
    counts = Counter(_rel_path(name) for name, _, _ in entries)
    repeated = sorted(n for n, c in counts.items() if c > 1)
    if repeated:
        raise ValueError(f"write_coco_panoptic: file names given twice: {_listed(repeated)}")
    images, annotations = [], []
    for image_id, (file_name, segment_map, segments) in enumerate(entries, start=1):
        h, w = segment_map.shape
        png_name = str(PurePosixPath(_rel_path(file_name)).with_suffix(".png"))
        (png_dir / png_name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(png_dir / png_name, encode_image(id2rgb(segment_map), "png"))
        infos = []
        for s in segments:
            ys, xs = np.nonzero(segment_map == s.id)
            if len(ys) == 0:
                continue
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            cat = coco.COCO_PANOPTIC[s.label]
            infos.append({"id": int(s.id), "category_id": cat.coco_id, "area": int(len(ys)), "bbox": bbox, "iscrowd": 0})
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        annotations.append({"image_id": image_id, "file_name": png_name, "segments_info": infos})
    categories = [
        {"id": c.coco_id, "name": c.name, "isthing": int(c.isthing), "supercategory": "thing" if c.isthing else "stuff"}
        for c in coco.COCO_PANOPTIC
    ]
    path = out / json_name
    atomic_write_json(path, {"images": images, "annotations": annotations, "categories": categories}, indent=None)
    return path
