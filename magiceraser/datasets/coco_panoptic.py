"""Ground-truth panoptic annotations in the COCO panoptic format (JSON + PNG), read and written.

The format (cocodataset.org, "panoptic segmentation"):

* ``panoptic.json``: ``{"images": [{"id", "file_name", "width", "height"}], "annotations":
  [{"image_id", "file_name": "<stem>.png", "segments_info": [{"id", "category_id", "area", "bbox",
  "iscrowd"}]}], "categories": [{"id", "name", "isthing", "supercategory"}]}``.
* ``panoptic/<stem>.png``: RGB image whose pixel (R, G, B) encodes the segment id
  ``R + 256·G + 256²·B``; 0 = unlabelled.

Category ids are COCO's (1..200 with gaps); they are mapped to the contiguous label space of
:mod:`magiceraser.coco` by name when the JSON lists categories, else by COCO id.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

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


class CocoPanopticAnnotations:
    """Look up ground-truth :class:`PanopticResult` by image file name (a segmentation backend)."""

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
        images = {im["id"]: im for im in data.get("images", [])}
        self._by_name: dict[str, dict] = {}
        for ann in data["annotations"]:
            im = images.get(ann["image_id"], {})
            name = Path(im.get("file_name") or ann["file_name"]).name
            self._by_name[name] = {"ann": ann, "width": im.get("width"), "height": im.get("height")}

    def __len__(self) -> int:
        return len(self._by_name)

    def file_names(self) -> list[str]:
        return sorted(self._by_name)

    def lookup(self, file_name: str) -> PanopticResult:
        """The annotation of the image called ``file_name`` (its base name is matched)."""
        import fsspec
        from PIL import Image

        entry = self._by_name.get(Path(file_name).name)
        if entry is None:
            raise AnnotationError("no_annotation", f"{Path(file_name).name} has no entry in {self.json_path}")
        ann = entry["ann"]
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


def write_coco_panoptic(
    out_dir: str | os.PathLike, entries: list[tuple[str, np.ndarray, list[Segment]]], json_name: str = "panoptic.json"
) -> Path:
    """Write ``(image_file_name, segment_map, segments)`` entries as ``json_name`` + PNG folder.

    The PNG folder is named like the JSON's stem (``panoptic.json`` -> ``panoptic/``), the COCO
    convention that :class:`CocoPanopticAnnotations` follows by default.
    """
    from magiceraser.atomic import atomic_write_bytes, atomic_write_json
    from magiceraser.imageio import encode_image

    out = Path(out_dir)
    png_dir = out / Path(json_name).stem
    png_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (file_name, segment_map, segments) in enumerate(entries, start=1):
        h, w = segment_map.shape
        png_name = Path(file_name).stem + ".png"
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
