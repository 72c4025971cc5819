"""Readers of today's object-removal benchmarks in their distributed layouts: RORem's test set,
OmniEraser's RemovalBench, and plain input/ mask/ [target/] folders (magiceraser.evaluation.pairs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from magiceraser.evaluation.pairs import EvalPair, PairSkip
from magiceraser.evaluation.pairs.folders import iter_folders, natural_key
from magiceraser.evaluation.pairs.removalbench import iter_removalbench
from magiceraser.evaluation.pairs.rorem import iter_rorem

H, W = 32, 48


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(arr).save(path, format="JPEG", quality=95, subsampling=0)
    else:
        Image.fromarray(arr).save(path, format="PNG")


def _photo(seed, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(seed, h=H, w=W):
    """A gradient image: JPEG keeps it within a few levels (noise it would not)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 + seed, y * 6 + seed, (x + y) * 2 + 3 * seed], -1).clip(0, 255).astype(np.uint8)


def _mask(h=H, w=W, box=(8, 20, 10, 30)):
    m = np.zeros((h, w), bool)
    m[box[0]:box[1], box[2]:box[3]] = True
    return m


def _m8(mask):
    return mask.astype(np.uint8) * 255


def _pairs(items):
    return [i for i in items if isinstance(i, EvalPair)]


def _skips(items):
    return [(i.key, i.reason) for i in items if isinstance(i, PairSkip)]


def _by_key(items):
    return {i.key: i for i in items}


# --------------------------------------------------------------------------- RORem


def test_rorem_test_set_has_inputs_and_masks_only_in_one_folder_per_resolution(tmp_path):
    """The archive's top folder, one set per resolution (source/ mask/, no GT/): keys carry the set's
    path, sets come 512 before 1024, every target is None."""
    top = tmp_path / "testset_RORem"
    photos = {}
    for res, seed in (("1024", 10), ("512", 20)):
        for name in ("10", "2"):
            photos[res, name] = _photo(seed + int(name))
            _save(top / res / "source" / f"{name}.png", photos[res, name])
            _save(top / res / "mask" / f"{name}.png", _m8(_mask()))
    _save(top / "512" / "source" / "c.PNG", _photo(1))  # upper-case suffix, mixed-case mask suffix
    _save(top / "512" / "mask" / "c.Png", _m8(_mask()))
    items = list(iter_rorem(tmp_path))
    assert [i.key for i in items] == ["testset_RORem_512_2", "testset_RORem_512_10", "testset_RORem_512_c",
                                      "testset_RORem_1024_2", "testset_RORem_1024_10"]
    assert all(isinstance(i, EvalPair) and i.target is None for i in items)
    p = _by_key(items)["testset_RORem_1024_10"]
    np.testing.assert_array_equal(p.image, photos["1024", "10"])
    np.testing.assert_array_equal(p.mask, _mask())
    assert p.meta == {"source": str(top / "1024" / "source" / "10.png"), "subset": "testset_RORem/1024"}
    # pointed at one set directly, the keys are the bare names
    assert [i.key for i in iter_rorem(top / "512")] == ["2", "10", "c"]


def test_rorem_meta_json_with_ground_truth_class_and_failures(tmp_path):
    """meta.json as the RORem README documents it; GT and text.label.name where present."""
    rng_photos = {n: _photo(i) for i, n in enumerate(["a", "b", "c", "d", "e"])}
    for n, arr in rng_photos.items():
        _save(tmp_path / "source" / f"{n}.png", arr)
    _save(tmp_path / "mask" / "a.png", _m8(_mask()))
    _save(tmp_path / "mask" / "b.png", _m8(_mask()))
    _save(tmp_path / "mask" / "d.png", _m8(_mask(h=H + 8)))  # another size
    _save(tmp_path / "mask" / "e.png", _m8(_mask()))
    _save(tmp_path / "GT" / "a.png", rng_photos["a"][::-1].copy())
    meta = [
        {"source": "source/e.png", "mask": "mask/e.png"},  # no GT entry
        {"source": "source/a.png", "mask": "mask/a.png", "GT": "GT/a.png", "text": {"label": {"name": "dog"}}},
        {"source": "source/b.png", "mask": "mask/b.png", "GT": "GT/b.png"},  # GT named, file missing
        {"source": "source/c.png", "mask": "mask/c.png"},  # mask missing
        {"source": "source/d.png", "mask": "mask/d.png"},
        {"mask": "mask/x.png"},  # no source
    ]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    items = list(iter_rorem(tmp_path))
    assert [i.key for i in items] == ["a", "b", "c", "d", "e", "meta_json_entry_5"]
    assert _skips(items) == [("c", "missing_file"), ("d", "size_mismatch"), ("meta_json_entry_5", "bad_metadata")]
    got = _by_key(items)
    np.testing.assert_array_equal(got["a"].image, rng_photos["a"])
    np.testing.assert_array_equal(got["a"].target, rng_photos["a"][::-1])
    assert got["a"].meta == {"source": str(tmp_path / "source" / "a.png"), "object_class": "dog"}
    assert got["b"].target is None and got["b"].meta["target_missing"] is True
    assert got["e"].target is None and "target_missing" not in got["e"].meta and "object_class" not in got["e"].meta
    assert "mask/c.png" in got["c"].detail


def test_rorem_meta_json_lines_as_the_readme_prints_them(tmp_path):
    """One object per line; the paths may point into a resolution folder below meta.json, whose
    source/ mask/ folders are then not read a second time as a set of their own."""
    photo = _smooth(3)
    _save(tmp_path / "512" / "source" / "x.jpg", photo)
    _save(tmp_path / "512" / "mask" / "x.png", _m8(_mask()))
    _save(tmp_path / "512" / "GT" / "x.png", photo)
    _save(tmp_path / "512" / "source" / "y.png", _photo(4))
    _save(tmp_path / "512" / "mask" / "y.png", _m8(_mask()))
    (tmp_path / "meta.json").write_text('{"source":"512/source/x.jpg","mask":"512/mask/x.png","GT":"512/GT/x.png"}\n\n'
                                        '{"source":"512/source/y.png","mask":"512/mask/y.png"}\n')
    items = list(iter_rorem(tmp_path))
    assert [i.key for i in items] == ["x", "y"]
    assert items[0].target is not None and items[1].target is None
    assert np.abs(items[0].image.astype(int) - photo.astype(int)).mean() < 3  # JPEG, read back closely


def test_rorem_folder_set_failures(tmp_path):
    """GT/ present: a missing GT keeps the pair (flagged); other size, missing mask, unreadable, empty mask skip."""
    for n in ("ok", "nogt", "big", "nomask", "broken", "empty", "biggt"):
        _save(tmp_path / "source" / f"{n}.png", _photo(len(n)))
        if n != "nomask":
            _save(tmp_path / "mask" / f"{n}.png", _m8(_mask(h=H + 4) if n == "big" else np.zeros((H, W), bool) if n == "empty" else _mask()))
        if n != "nogt":
            _save(tmp_path / "GT" / f"{n}.png", _photo(99, w=W + 4) if n == "biggt" else _photo(99))
    (tmp_path / "source" / "broken.png").write_bytes(b"not a png at all")
    items = list(iter_rorem(tmp_path))
    assert [i.key for i in items] == ["big", "biggt", "broken", "empty", "nogt", "nomask", "ok"]
    assert _skips(items) == [("big", "size_mismatch"), ("biggt", "size_mismatch"), ("broken", "not_an_image"),
                             ("empty", "empty_mask"), ("nomask", "missing_file")]
    got = _by_key(items)
    assert got["nogt"].target is None and got["nogt"].meta["target_missing"] is True
    np.testing.assert_array_equal(got["ok"].target, _photo(99))
    assert "target_missing" not in got["ok"].meta


def test_rorem_wrong_root_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="RORem root .* does not exist.*source/"):
        list(iter_rorem(tmp_path / "nope"))
    _save(tmp_path / "images" / "a.png", _photo(0))  # a RemovalBench-like folder is no RORem set
    with pytest.raises(FileNotFoundError, match=r"no RORem test set .*source/<name>\.png.*meta\.json"):
        list(iter_rorem(tmp_path))
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json is neither JSON nor JSON lines"):
        list(iter_rorem(tmp_path))


# --------------------------------------------------------------------------- RemovalBench


def _removalbench(root, names, *, photo=_photo):
    arrays = {}
    for i, n in enumerate(names):
        arrays[n] = (photo(i), _mask(box=(4 + i, 20, 6, 30)), photo(100 + i))
        _save(root / "images" / f"{n}.png", arrays[n][0])
        _save(root / "masks" / f"{n}.png", _m8(arrays[n][1]))
        _save(root / "gt" / f"{n}.png", arrays[n][2])
    return arrays


def test_removalbench_as_distributed(tmp_path):
    arrays = _removalbench(tmp_path, ["10", "2", "1"])
    _save(tmp_path / "results_omnieraser_base" / "1.png", _photo(7))  # the authors' outputs: ignored
    items = list(iter_removalbench(tmp_path))
    assert [i.key for i in items] == ["1", "2", "10"]
    for pair in items:
        image, mask, gt = arrays[pair.key]
        np.testing.assert_array_equal(pair.image, image)
        np.testing.assert_array_equal(pair.mask, mask)
        np.testing.assert_array_equal(pair.target, gt)
        assert pair.meta == {"source": str(tmp_path / "images" / f"{pair.key}.png")}


def test_removalbench_failures(tmp_path):
    _removalbench(tmp_path, ["1", "2", "3", "4", "5", "6"])
    (tmp_path / "gt" / "1.png").unlink()  # missing target
    _save(tmp_path / "masks" / "2.png", _m8(_mask(w=W + 8)))  # mask of another size
    _save(tmp_path / "gt" / "3.png", _photo(0, h=H + 8))  # ground truth of another size
    (tmp_path / "masks" / "4.png").unlink()  # missing mask
    (tmp_path / "images" / "5.png").write_bytes((tmp_path / "gt" / "5.png").read_bytes()[:60])  # cut short
    _save(tmp_path / "masks" / "6.png", np.zeros((H, W), np.uint8))  # empty mask
    items = list(iter_removalbench(tmp_path))
    skips = dict(_skips(items))
    assert list(skips) == ["2", "3", "4", "5", "6"]
    assert skips["2"] == skips["3"] == "size_mismatch"
    assert skips["4"] == "missing_file" and skips["6"] == "empty_mask"
    assert skips["5"] in ("truncated", "unreadable", "not_an_image")
    [kept] = _pairs(items)
    assert kept.key == "1" and kept.target is None and kept.meta["target_missing"] is True
    assert "ground truth" in _by_key(items)["3"].detail


def test_removalbench_wrong_root_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="RemovalBench root .* does not exist"):
        list(iter_removalbench(tmp_path / "nope"))
    _save(tmp_path / "images" / "1.png", _photo(0))
    _save(tmp_path / "masks" / "1.png", _m8(_mask()))
    with pytest.raises(FileNotFoundError, match=r"lacks gt/: expected ROOT/images/<name>\.png, ROOT/masks/<name>\.png, ROOT/gt/"):
        list(iter_removalbench(tmp_path))


# --------------------------------------------------------------------------- plain folders


def test_folders_without_target_folder_have_no_targets(tmp_path):
    a, b = _smooth(1), _photo(2)
    _save(tmp_path / "input" / "a.jpg", a)
    _save(tmp_path / "input" / "b.PNG", b)
    _save(tmp_path / "mask" / "a.png", _m8(_mask()))
    _save(tmp_path / "mask" / "b.Png", _m8(_mask(box=(1, 5, 1, 5))))
    items = list(iter_folders(tmp_path))
    assert [i.key for i in items] == ["a", "b"]
    assert all(isinstance(i, EvalPair) and i.target is None and "target_missing" not in i.meta for i in items)
    assert np.abs(items[0].image.astype(int) - a.astype(int)).mean() < 3  # JPEG
    np.testing.assert_array_equal(items[1].image, b)
    np.testing.assert_array_equal(items[1].mask, _mask(box=(1, 5, 1, 5)))
    assert items[1].meta == {"source": str(tmp_path / "input" / "b.PNG")}


def test_folders_with_targets_and_failures(tmp_path):
    names = ("ok", "notarget", "nomask", "bigmask", "bigtarget", "broken", "empty", "twice")
    for i, n in enumerate(names):
        _save(tmp_path / "input" / f"{n}.png", _photo(i))
        if n != "nomask":
            m = _mask(h=H + 2) if n == "bigmask" else np.zeros((H, W), bool) if n == "empty" else _mask()
            _save(tmp_path / "mask" / f"{n}.png", _m8(m))
        if n != "notarget":
            _save(tmp_path / "target" / f"{n}.png", _photo(50 + i, w=W - 2) if n == "bigtarget" else _photo(50 + i))
    (tmp_path / "input" / "broken.png").write_bytes(b"")
    _save(tmp_path / "input" / "twice.jpg", _photo(0))  # a second input named "twice"
    _save(tmp_path / "mask" / "ok.jpg", _m8(~_mask()))  # a second mask named "ok": .jpg comes first in IMAGE_SUFFIXES
    items = list(iter_folders(tmp_path))
    assert [i.key for i in items] == sorted(names)
    assert _skips(items) == [("bigmask", "size_mismatch"), ("bigtarget", "size_mismatch"), ("broken", "empty_file"),
                             ("empty", "empty_mask"), ("nomask", "missing_file"), ("twice", "duplicate_key")]
    got = _by_key(items)
    assert got["notarget"].target is None and got["notarget"].meta["target_missing"] is True
    np.testing.assert_array_equal(got["ok"].target, _photo(50))
    np.testing.assert_array_equal(got["ok"].mask, ~_mask())
    assert "target_missing" not in got["ok"].meta


def test_folders_wrong_root_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"need input/ and mask/ \(optionally target/\)"):
        list(iter_folders(tmp_path))
    (tmp_path / "input").mkdir()
    (tmp_path / "mask").mkdir()
    with pytest.raises(FileNotFoundError, match="no images in"):
        list(iter_folders(tmp_path))


def test_natural_order():
    names = ["img10", "img2", "img02", "b", "a1b", "a10", "²"]
    assert sorted(names, key=natural_key) == ["a1b", "a10", "b", "img02", "img2", "img10", "²"]
