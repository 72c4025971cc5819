"""Evaluation pair readers (magiceraser.evaluation.pairs): RealHM (both layouts), OLRD shards, COCO panoptic and OpenImages via compose."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from magiceraser.evaluation.pairs import EvalPair, PairSkip
from magiceraser.evaluation.pairs.coco_panoptic import iter_coco_panoptic
from magiceraser.evaluation.pairs.composed import seeded_order
from magiceraser.evaluation.pairs.olrd_shards import iter_olrd_shards, shard_paths
from magiceraser.evaluation.pairs.openimages import iter_openimages, openimages_panoptic
from magiceraser.evaluation.pairs.realhm import iter_realhm

from .olrd_shards import encode, write_shard


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _scene(rng, h=40, w=56):
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:25, 12:30] = True
    return img, mask


def test_realhm_folders_layout(tmp_path):
    rng = np.random.default_rng(0)
    scenes = {}
    for name in ("b", "a"):
        comp, mask = scenes[name] = _scene(rng)
        _png(tmp_path / "composite" / f"{name}.png", comp)
        _png(tmp_path / "mask" / f"{name}.png", mask.astype(np.uint8) * 255)
        _png(tmp_path / "gt" / f"{name}.jpg" if name == "a" else tmp_path / "gt" / f"{name}.png", comp[::-1].copy())
    _png(tmp_path / "composite" / "c.png", comp)  # no mask, no gt
    items = list(iter_realhm(tmp_path))
    pairs = [i for i in items if isinstance(i, EvalPair)]
    skips = [i for i in items if isinstance(i, PairSkip)]
    assert [p.key for p in pairs] == ["a", "b"]
    assert [(s.key, s.reason) for s in skips] == [("c", "missing_file")]
    comp, mask = scenes["b"]
    np.testing.assert_array_equal(pairs[1].image, comp)
    np.testing.assert_array_equal(pairs[1].target, comp[::-1])
    np.testing.assert_array_equal(pairs[1].mask, mask)


def test_realhm_folders_of_tiffs_are_read_like_any_image(tmp_path):
    """The evaluation listed its own suffixes without .tif/.tiff, so a folder of TIFFs was silently empty.
    Every reader now takes the one list (magiceraser.imageio.IMAGE_SUFFIXES)."""
    from magiceraser.imageio import IMAGE_SUFFIXES

    comp, mask = _scene(np.random.default_rng(1))
    for folder, arr, suffix in (("composite", comp, ".tif"), ("mask", mask.astype(np.uint8) * 255, ".tiff"),
                                ("gt", comp[::-1].copy(), ".tif")):
        _png(tmp_path / folder / f"x{suffix}", arr)
    [pair] = list(iter_realhm(tmp_path))
    assert isinstance(pair, EvalPair) and pair.key == "x"
    np.testing.assert_array_equal(pair.target, comp[::-1])
    assert {".tif", ".tiff", ".png", ".jpg", ".webp"} <= set(IMAGE_SUFFIXES)


def test_realhm_as_distributed_builds_the_composite(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "vendor_testing_1" / "set"
    fore, mask = _scene(rng)
    bg = rng.integers(0, 256, fore.shape, dtype=np.uint8)
    _png(folder / "x1.png", fore)
    _png(folder / "x1_fore.png", bg)
    _png(folder / "x1_mask.png", mask.astype(np.uint8) * 255)
    _png(folder / "x1_gt.png", fore)
    _png(tmp_path / "vendor_testing_2" / "y_mask.png", mask.astype(np.uint8) * 255)  # lonely mask
    items = list(iter_realhm(tmp_path, "auto"))
    pair = next(i for i in items if isinstance(i, EvalPair))
    expected = bg.copy()
    expected[mask] = fore[mask]
    np.testing.assert_array_equal(pair.image, expected)
    np.testing.assert_array_equal(pair.target, bg)
    assert pair.key == "vendor_testing_1_set_x1"
    assert [(s.key, s.reason) for s in items if isinstance(s, PairSkip)] == [("vendor_testing_2_y", "missing_file")]
    with pytest.raises(FileNotFoundError, match="RealHM"):
        list(iter_realhm(tmp_path / "nope"))


def test_olrd_shards(tmp_path):
    rng = np.random.default_rng(2)
    a, ma = _scene(rng)
    b, mb = _scene(rng)
    write_shard(tmp_path / "olrd-000000.tar", [("s0", a, ma, b, {"object_class": "cat", "tags": ["grass"]}),
                                              ("s1", b, None, a, {})])
    write_shard(tmp_path / "olrd-000001.tar", [("s2", b, mb, a, {})])
    items = list(iter_olrd_shards(str(tmp_path / "olrd-*.tar")))
    assert [type(i).__name__ for i in items] == ["EvalPair", "PairSkip", "EvalPair"]
    p0 = items[0]
    np.testing.assert_array_equal(p0.image, a)
    np.testing.assert_array_equal(p0.target, b)
    np.testing.assert_array_equal(p0.mask, ma)
    assert p0.meta["object_class"] == "cat" and p0.meta["tags"] == ["grass"]
    assert items[1].reason == "missing_file"
    assert len(list(iter_olrd_shards(str(tmp_path)))) == 3  # a directory works too
    with pytest.raises(FileNotFoundError, match="no OLRD shards"):
        shard_paths(str(tmp_path / "none-*.tar"))


def _tar(path, members):
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_olrd_shards_skip_reasons_of_damaged_shards_and_samples(tmp_path):
    """What the evaluation skips, and why, is its own contract (not the trainer's decode_olrd):
    a damaged shard is one bad_shard record with none of its pairs, a sample without json is a pair."""
    rng = np.random.default_rng(3)
    a, ma = _scene(rng)
    b, _ = _scene(rng)
    write_shard(tmp_path / "olrd-000000.tar", [("s0", a, ma, b, {}), ("s1", a, ma, b, {})])
    whole = (tmp_path / "olrd-000000.tar").read_bytes()
    (tmp_path / "olrd-000001.tar").write_bytes(whole[: len(whole) // 2 + 100])  # cut inside a member
    (tmp_path / "olrd-000002.tar").write_bytes(b"not a tar" * 100)
    m = encode(ma.astype(np.uint8) * 255, "PNG")
    img, other, small = encode(a, "PNG"), encode(b, "PNG"), encode(a[:20], "PNG")
    _tar(tmp_path / "olrd-000003.tar", [
        ("n0.blended.jpg", img), ("n0.mask.png", m), ("n0.original.jpg", other),  # no json: fine
        ("n1.blended.jpg", img), ("n1.mask.png", m), ("n1.original.jpg", other), ("n1.json", b"{bad"),
        ("n2.blended.jpg", img), ("n2.mask.png", encode(np.zeros_like(a[..., 0]), "PNG")), ("n2.original.jpg", other),
        ("n3.blended.jpg", small), ("n3.mask.png", m), ("n3.original.jpg", other),
        ("n4.blended.jpg", b"garbage"), ("n4.mask.png", m), ("n4.original.jpg", other),
        ("d/n5.blended.png", img), ("d/n5.mask.png", m), ("d/n5.original.png", other),
    ])
    items = list(iter_olrd_shards(str(tmp_path / "olrd-*.tar")))
    got = [(i.key, "pair" if isinstance(i, EvalPair) else i.reason) for i in items]
    assert got == [("s0", "pair"), ("s1", "pair"), ("olrd-000001_tar", "bad_shard"), ("olrd-000002_tar", "bad_shard"),
                   ("n0", "pair"), ("n1", "bad_json"), ("n2", "empty_mask"), ("n3", "too_small"),
                   ("n4", "not_an_image"), ("d_n5", "pair")]
    assert items[2].detail.startswith(str(tmp_path / "olrd-000001.tar") + ": ")
    assert items[-1].meta == {"source": "olrd-000003.tar:d/n5"} and items[4].meta == {"source": "olrd-000003.tar:n0"}


def test_seeded_order_is_a_stable_permutation():
    items = [f"k{i}" for i in range(20)]
    assert seeded_order(items, 3) == seeded_order(list(reversed(items)), 3)
    assert sorted(seeded_order(items, 3)) == sorted(items)
    assert seeded_order(items, 3) != seeded_order(items, 4)


def test_openimages_panoptic_marks_free_region_as_background():
    from magiceraser import coco

    a = np.zeros((30, 40), bool)
    a[2:10, 2:10] = True
    b = np.zeros((30, 40), bool)
    b[20:28, 25:35] = True
    pan, names = openimages_panoptic([(a, "Cat"), (b, "Lighthouse")], (30, 40))
    labels = {s.id: s.label for s in pan.segments}
    assert coco.COCO_PANOPTIC[labels[pan.segment_map[5, 5]]].name == "cat"
    assert labels[pan.segment_map[25, 30]] in coco.THING_LABELS  # stand-in thing label
    assert names[pan.segment_map[25, 30]] == "Lighthouse"
    free = ~(a | b)
    assert all(labels[i] in coco.BACKGROUND_LABELS for i in np.unique(pan.segment_map[free]))
    assert sum(s.area for s in pan.segments) == 30 * 40


def _scene_with_object(rng, h=120, w=160):
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (90, 160, 70)
    img += rng.integers(0, 20, img.shape, dtype=np.uint8)
    obj = np.zeros((h, w), bool)
    obj[30:55, 20:45] = True
    img[obj] = (200, 30, 30)
    return img, obj


def test_openimages_pairs_via_compose(tmp_path):
    pytest.importorskip("magiceraser.datasets.compose")
    rng = np.random.default_rng(5)
    rows = []
    for i in range(3):
        img, obj = _scene_with_object(rng)
        image_id = f"{i:016x}"
        _png(tmp_path / "images" / f"{image_id}.png", img)
        # OpenImages stores masks at their own resolution: here half size
        small = np.asarray(Image.fromarray(obj.astype(np.uint8) * 255).resize((80, 60), Image.NEAREST))
        mask_name = f"{image_id}_m0cat_{i}.png"
        _png(tmp_path / "masks" / mask_name, small)
        rows.append({"MaskPath": mask_name, "ImageID": image_id, "LabelName": "/m/01yrx", "BoxID": "x",
                     "BoxXMin": "0", "BoxXMax": "1", "BoxYMin": "0", "BoxYMax": "1", "PredictedIoU": "1", "Clicks": ""})
    rows.append({**rows[0], "ImageID": "ffffffffffffffff"})  # image not downloaded: not a candidate
    with open(tmp_path / "seg.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "classes.csv").write_text("/m/01yrx,Cat\n")
    items = list(iter_openimages(tmp_path / "images", tmp_path / "seg.csv", tmp_path / "masks", 2, 0,
                                   class_descriptions=tmp_path / "classes.csv"))
    pairs = [i for i in items if isinstance(i, EvalPair)]
    assert len(pairs) == 2
    again = [i for i in iter_openimages(tmp_path / "images", tmp_path / "seg.csv", tmp_path / "masks", 2, 0,
                                          class_descriptions=tmp_path / "classes.csv") if isinstance(i, EvalPair)]
    for p, q in zip(pairs, again):  # seeded: identical pairs on a rerun
        np.testing.assert_array_equal(p.image, q.image)
        np.testing.assert_array_equal(p.mask, q.mask)
    for p in pairs:
        # input = target except under the pasted copy; the copy is the red object, away from the original
        assert (p.image[~p.mask] == p.target[~p.mask]).all()
        assert (p.image[p.mask][:, 0] > 150).mean() > 0.9
        assert (p.meta["object_class"], p.meta["object_label_id"], p.meta["compose_class"]) == ("Cat", "/m/01yrx", "cat")


def _openimages_split(tmp_path, label_id: str, n: int = 2):
    """``n`` downloaded images with one annotated object each, of OpenImages class ``label_id``."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(n):
        img, obj = _scene_with_object(rng)
        image_id = f"{i:016x}"
        _png(tmp_path / "images" / f"{image_id}.png", img)
        _png(tmp_path / "masks" / f"{image_id}_{i}.png", obj.astype(np.uint8) * 255)
        rows.append({"MaskPath": f"{image_id}_{i}.png", "ImageID": image_id, "LabelName": label_id})
    with open(tmp_path / "seg.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / "images", tmp_path / "seg.csv", tmp_path / "masks"


def test_openimages_pairs_carry_the_openimages_class_not_a_stand_in(tmp_path):
    """A lighthouse is no COCO class: its pairs said "person" (the stand-in label) and the class was lost."""
    pytest.importorskip("magiceraser.datasets.compose")
    split = _openimages_split(tmp_path, "/m/04h7h")
    (tmp_path / "classes.csv").write_text("/m/04h7h,Lighthouse\n/m/01yrx,Cat\n")
    named = [i for i in iter_openimages(*split, 2, 0, class_descriptions=tmp_path / "classes.csv") if isinstance(i, EvalPair)]
    assert len(named) == 2 and {p.meta["object_class"] for p in named} == {"Lighthouse"}
    assert {p.meta["object_label_id"] for p in named} == {"/m/04h7h"}
    bare = [i for i in iter_openimages(*split, 2, 0) if isinstance(i, EvalPair)]
    assert len(bare) == 2 and {p.meta["object_class"] for p in bare} == {"/m/04h7h"}  # no class map: the label id


def test_coco_panoptic_pairs_from_demo_scenes(tmp_path):
    pytest.importorskip("magiceraser.datasets.compose")
    demo = pytest.importorskip("magiceraser.datasets.demo_scenes")
    root = demo.write_demo_scenes(tmp_path / "scenes", num_scenes=3)
    items = list(iter_coco_panoptic(root / "images", root / "panoptic.json", root / "panoptic", 2, seed=0))
    pairs = [i for i in items if isinstance(i, EvalPair)]
    assert 1 <= len(pairs) <= 2
    for p in pairs:
        assert p.mask.any() and (p.image[~p.mask] == p.target[~p.mask]).all()
        assert not (p.image[p.mask] == p.target[p.mask]).all()
        assert p.key.startswith("scene-")


def test_coco_panoptic_pairs_in_a_places365_style_tree(tmp_path):
    """``airfield/00000001.jpg`` and ``beach/00000001.jpg``: two pairs, two keys, each with its own objects."""
    pytest.importorskip("magiceraser.datasets.compose")
    from magiceraser import coco
    from magiceraser.datasets.coco_panoptic import write_coco_panoptic
    from magiceraser.panoptic import Segment

    rng = np.random.default_rng(11)
    entries = []
    for folder, thing in (("airfield", "cat"), ("beach", "dog")):
        img, obj = _scene_with_object(rng)
        _png(tmp_path / "images" / folder / "00000001.png", img)
        seg = np.where(obj, 1, 2).astype(np.int32)
        entries.append((f"{folder}/00000001.png", seg, [Segment(1, coco.BY_NAME[thing].label),
                                                       Segment(2, coco.BY_NAME["grass-merged"].label)]))
    path = write_coco_panoptic(tmp_path / "ann", entries)
    items = list(iter_coco_panoptic(tmp_path / "images", path, tmp_path / "ann" / "panoptic", 0, seed=0))
    assert all(isinstance(i, EvalPair) for i in items), items
    assert {i.key: i.meta["object_class"] for i in items} == {"airfield_00000001": "cat", "beach_00000001": "dog"}
