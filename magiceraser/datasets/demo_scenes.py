"""``magiceraser demo-scenes OUT``: small scenes built from real ``skimage.data`` photos and textures.

Backgrounds are COCO "stuff" regions filled with real textures (``grass``, ``gravel``, ``brick``;
a sky gradient with the ``moon`` texture as faint clouds); objects are COCO "things" cut from real
photos (``chelsea`` -> cat, ``coffee`` -> cup, ``astronaut`` -> person, ``clock`` -> clock, the
``horse`` silhouette filled with a fur-like texture -> horse). Each scene comes with its exact
panoptic annotation in the COCO panoptic format, so the ground-truth segmentation backend (and
the evaluation's COCO-style pairs) can run on it offline::

    OUT/images/scene-00.png ...     the scenes (RGB)
    OUT/panoptic.json               COCO panoptic JSON
    OUT/panoptic/scene-00.png ...   segment-id PNGs (R + 256 G + 256^2 B)
    OUT/erase/image.png             one 1000x700 scene ...
    OUT/erase/mask.png              ... and the binary mask (0/255) of an object in it to erase
    OUT/removal/input/scene-00.png  the first scenes as a removal benchmark without ground truth
    OUT/removal/mask/scene-00.png   (the evaluation's ``folders`` layout): each with one object's mask

Everything is a deterministic function of the scene index.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from magiceraser import coco
from magiceraser.cli_args import PlainTextHelpFormatter
from magiceraser.panoptic import Segment

NUM_SCENES = 12
SIZES = ((240, 320), (300, 400), (288, 384), (320, 480))  # (H, W)
GROUNDS = ("grass-merged", "gravel", "pavement-merged", "sea")
THINGS = ("cat", "cup", "person", "clock", "horse")
REMOVAL_SCENES = 3  # scenes also written as a reference-free removal benchmark (removal/input, removal/mask)


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR)


def _tint(gray: np.ndarray, color: tuple[float, float, float], contrast: float = 0.6) -> np.ndarray:
    g = gray.astype(np.float32) / 255.0
    g = 0.5 + contrast * (g - g.mean())
    return np.clip(g[..., None] * np.asarray(color, np.float32)[None, None] * 2 * 255, 0, 255).astype(np.uint8)


@cache
def _texture(name: str) -> np.ndarray:
    from skimage import data

    if name == "grass-merged":
        return _tint(data.grass(), (0.35, 0.55, 0.2))
    if name == "gravel":
        return _tint(data.gravel(), (0.5, 0.46, 0.4), 0.9)
    if name == "pavement-merged":
        return _tint(data.gravel()[::-1], (0.42, 0.42, 0.44), 0.35)
    if name == "sea":
        return _tint(_resize(data.grass(), 128, 512), (0.15, 0.3, 0.5), 0.5)
    if name == "wall-brick":
        return _tint(data.brick(), (0.6, 0.3, 0.22), 0.8)
    raise KeyError(name)


def _sky(h: int, w: int) -> np.ndarray:
    from skimage import data

    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    top, bottom = np.array([70, 120, 200], np.float32), np.array([175, 205, 235], np.float32)
    sky = top * (1 - t) + bottom * t
    clouds = _resize(data.moon(), h, w).astype(np.float32) / 255.0
    sky = sky + 40.0 * (clouds[..., None] - clouds.mean())
    return np.clip(np.broadcast_to(sky, (h, w, 3)), 0, 255).astype(np.uint8)


def _fill(canvas: np.ndarray, region: np.ndarray, texture: np.ndarray) -> None:
    h, w = canvas.shape[:2]
    canvas[region] = _resize(texture, h, w)[region]


def _ellipse(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 1.0


@cache
def _sprite(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB crop, bool mask) of a thing, cut from a real photo."""
    from skimage import data

    if name == "cat":
        img = data.chelsea()[20:280, 110:330]
    elif name == "cup":
        img = data.coffee()[20:360, 60:460]
    elif name == "person":
        img = data.astronaut()[20:400, 120:400]
    elif name == "clock":
        gray = data.clock()[30:280, 70:330]
        img = np.repeat(gray[..., None], 3, axis=2)
    elif name == "horse":
        mask = ~data.horse()  # the silhouette is False on a True background
        ys, xs = np.nonzero(mask)
        mask = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        fur = _tint(_resize(data.gravel(), *mask.shape), (0.45, 0.3, 0.18), 0.5)
        return fur, mask
    else:
        raise KeyError(name)
    return img, _ellipse(*img.shape[:2])


def _place(canvas: np.ndarray, seg: np.ndarray, sprite: tuple[np.ndarray, np.ndarray], h: int, x: int, y: int, sid: int) -> None:
    img, mask = sprite
    w = max(8, round(img.shape[1] * h / img.shape[0]))
    img_r = _resize(img, h, w)
    mask_r = _resize(mask.astype(np.uint8) * 255, h, w) >= 128
    canvas[y : y + h, x : x + w][mask_r] = img_r[mask_r]
    seg[y : y + h, x : x + w][mask_r] = sid


def make_scene(index: int) -> tuple[np.ndarray, np.ndarray, list[Segment]]:
    """Scene ``index``: (HxWx3 uint8 image, HxW int32 segment map, segments)."""
    rng = np.random.default_rng(1000 + index)
    H, W = SIZES[index % len(SIZES)]
    canvas = np.zeros((H, W, 3), np.uint8)
    seg = np.zeros((H, W), np.int32)
    segments: list[Segment] = []
    yy, xx = np.mgrid[0:H, 0:W]
    horizon = int(H * rng.uniform(0.3, 0.45))
    top_name = "wall-brick" if index % 4 == 3 else "sky-other-merged"
    top = yy < horizon + (6 * np.sin(xx / W * 2 * np.pi * rng.uniform(0.5, 2))).astype(int)
    if top_name == "sky-other-merged":
        canvas[top] = _sky(H, W)[top]
    else:
        _fill(canvas, top, _texture(top_name))
    grounds = list(rng.choice(GROUNDS, size=2, replace=False))
    split = int(W * rng.uniform(0.35, 0.65))
    left = (~top) & (xx < split + (yy - horizon) * rng.uniform(-0.5, 0.5))
    right = (~top) & ~left
    sid = 1
    for name, region in ((top_name, top), (grounds[0], left), (grounds[1], right)):
        if region.any():
            if name != "sky-other-merged":
                _fill(canvas, region, _texture(name))
            seg[region] = sid
            segments.append(Segment(id=sid, label=coco.BY_NAME[name].label))
            sid += 1
    for name in rng.choice(THINGS, size=int(rng.integers(1, 3)), replace=False):
        h = int(H * rng.uniform(0.2, 0.32))
        img, _ = _sprite(str(name))
        w = max(8, round(img.shape[1] * h / img.shape[0]))
        x = int(rng.integers(4, W - w - 4))
        y = int(rng.integers(max(4, horizon - h // 2), H - h - 4))
        _place(canvas, seg, _sprite(str(name)), h, x, y, sid)
        segments.append(Segment(id=sid, label=coco.BY_NAME[str(name)].label))
        sid += 1
    present = set(np.unique(seg).tolist())
    segments = [Segment(s.id, s.label, int((seg == s.id).sum())) for s in segments if s.id in present]
    return canvas, seg, segments


def make_erase_scene() -> tuple[np.ndarray, np.ndarray]:
    """A non-square 1000x700 scene and the bool mask of the object to erase (a horse on grass)."""
    H, W = 700, 1000
    yy, xx = np.mgrid[0:H, 0:W]
    canvas = np.zeros((H, W, 3), np.uint8)
    top = yy < 260 + (10 * np.sin(xx / W * 3 * np.pi)).astype(int)
    canvas[top] = _sky(H, W)[top]
    path = (~top) & (np.abs(xx - 700 - (yy - 260) * 0.4) < 60 + (yy - 260) * 0.15)
    grass = (~top) & ~path
    _fill(canvas, grass, _texture("grass-merged"))
    _fill(canvas, path, _texture("gravel"))
    seg = np.zeros((H, W), np.int32)
    _place(canvas, seg, _sprite("horse"), 260, 180, 300, 1)
    return canvas, seg == 1


def write_demo_scenes(out_dir: str | Path, num_scenes: int = NUM_SCENES) -> Path:
    """Write scenes, their COCO panoptic annotation and the erase example under ``out_dir``."""
    from magiceraser.atomic import atomic_write_bytes
    from magiceraser.datasets.coco_panoptic import write_coco_panoptic
    from magiceraser.imageio import encode_image

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(num_scenes):
        image, seg, segments = make_scene(i)
        name = f"scene-{i:02d}.png"
        atomic_write_bytes(out / "images" / name, encode_image(image, "png"))
        entries.append((name, seg, segments))
        if i < REMOVAL_SCENES:  # the last (front-most) object placed is the one to remove
            thing = [s for s in segments if coco.COCO_PANOPTIC[s.label].isthing][-1]
            atomic_write_bytes(out / "removal" / "input" / name, encode_image(image, "png"))
            atomic_write_bytes(out / "removal" / "mask" / name, encode_image((seg == thing.id).astype(np.uint8) * 255, "png"))
    write_coco_panoptic(out, entries)
    image, mask = make_erase_scene()
    atomic_write_bytes(out / "erase" / "image.png", encode_image(image, "png"))
    atomic_write_bytes(out / "erase" / "mask.png", encode_image(mask.astype(np.uint8) * 255, "png"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="magiceraser demo-scenes", description=__doc__.split("\n\n")[0],
                                     formatter_class=PlainTextHelpFormatter)
    parser.add_argument("out_dir", help="directory to write the scenes into")
    parser.add_argument("--num-scenes", type=int, default=NUM_SCENES, help="how many scenes")
    args = parser.parse_args(argv)
    if args.num_scenes < 1:
        parser.error("--num-scenes must be >= 1")
    out = write_demo_scenes(args.out_dir, args.num_scenes)
    print(f"{args.num_scenes} scenes with COCO panoptic annotations: {out}/images, {out}/panoptic.json, {out}/panoptic/")
    print(f"erase example: {out}/erase/image.png + {out}/erase/mask.png")
    print(f"removal benchmark without ground truth: {out}/removal/input, {out}/removal/mask")
    return 0
