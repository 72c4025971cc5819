"""The service's request checks and class masks as pure functions: no Ray, no HTTP, no model."""

from __future__ import annotations

import numpy as np
import pytest

from magiceraser import coco
from magiceraser.class_masks import class_mask
from magiceraser.config import ConfigError, load_config
from magiceraser.panoptic import PanopticResult, Segment
from magiceraser.serve.config import ServeConfig
from magiceraser.serve.requests import (
    ApiError,
    EraseParams,
    check_mask,
    decode_upload,
    decode_upload_mask,
    parse_classes,
    parse_erase_params,
)
from magiceraser.serve.segments import rle_decode, rle_encode, segments_payload

from .helpers import photo, png_bytes


def _raises(status: int, field: str, fn, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as exc:
        fn(*args, **kwargs)
    assert (exc.value.status, exc.value.field) == (status, field), exc.value.to_json()
    return exc.value


def test_params_parse_typed_values_and_defaults():
    assert parse_erase_params() == EraseParams()
    p = parse_erase_params(steps=" 20 ", strength="0.5", seed="7", refocus="false", tag="sand", prompt="a beach", classes="Person, car,person")
    assert p == EraseParams(steps=20, strength=0.5, seed=7, refocus=False, tag="sand", prompt="a beach", classes=("person", "car"))
    assert parse_erase_params(steps="", tag="  ").steps is None and parse_erase_params(tag="  ").tag is None


@pytest.mark.parametrize("kwargs, field", [
    (dict(steps="x"), "steps"), (dict(steps="0"), "steps"), (dict(steps="1000"), "steps"), (dict(steps="2.5"), "steps"),
    (dict(strength="0"), "strength"), (dict(strength="1.5"), "strength"), (dict(strength="nan"), "strength"),
    (dict(steps="1", strength="0.5"), "strength"), (dict(seed="-1"), "seed"), (dict(seed="abc"), "seed"),
    (dict(refocus="maybe"), "refocus"), (dict(prompt="x" * 501), "prompt"), (dict(tag="x" * 101), "tag"),
    (dict(classes="unicorn"), "classes"), (dict(classes="sky"), "classes"), (dict(classes=" , "), "classes"),
])
def test_bad_params_name_their_field(kwargs, field):
    err = _raises(422, field, parse_erase_params, max_steps=200, **kwargs)
    assert err.to_json() == {"error": err.message, "field": field, "status": 422}


def test_classes_refuse_stuff_and_unknown_names_with_a_hint():
    assert "background" in _raises(422, "classes", parse_classes, "grass-merged").message
    assert "person" in _raises(422, "classes", parse_classes, "persn").message  # the known names are listed
    assert parse_classes(None) == () and parse_classes("TV") == ("tv",)


def test_uploads_decoded_or_refused_by_status():
    img = photo(40, 50)
    assert decode_upload(png_bytes(img), max_pixels=10_000, max_bytes=10**6).shape == (40, 50, 3)
    _raises(400, "image", decode_upload, None, 10_000, 10**6)
    _raises(422, "image", decode_upload, b"not an image", 10_000, 10**6)
    _raises(422, "image", decode_upload, b"", 10_000, 10**6)
    _raises(413, "image", decode_upload, png_bytes(img), 1_000, 10**6)  # 2000 px > max_pixels
    _raises(413, "image", decode_upload, png_bytes(img), 10_000, 100)  # more bytes than allowed
    _raises(422, "mask", decode_upload_mask, b"\x89PNG broken", 10**6, 128)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 5:15] = 255
    assert decode_upload_mask(png_bytes(mask), 10**6, 128).sum() == 100


def test_check_mask_sizes_emptiness_and_specks():
    img = photo(40, 50)
    m = np.zeros((40, 50), bool)
    assert "same size" in _raises(422, "mask", check_mask, img, np.ones((40, 49), bool)).message
    assert "empty" in _raises(422, "mask", check_mask, img, m).message
    m[3, 3] = True
    assert "min_region_area" in _raises(422, "mask", check_mask, img, m, 16).message
    m[10:20, 10:20] = True
    check_mask(img, m, 16)


def test_api_error_survives_pickling_with_its_fields():
    import pickle

    err = pickle.loads(pickle.dumps(ApiError(422, "mask", "empty")))
    assert (err.status, err.field, err.message) == (422, "mask", "empty")


def _pan() -> PanopticResult:
    seg = np.ones((30, 40), np.int32)  # grass
    seg[5:10, 5:12] = 2  # person
    seg[20:28, 30:38] = 3  # car
    seg[0:3, 35:40] = 4  # another person
    person, car, grass = (coco.BY_NAME[n].label for n in ("person", "car", "grass-merged"))
    return PanopticResult(seg, [Segment(1, grass, 1086), Segment(2, person, 35), Segment(3, car, 64), Segment(4, person, 15)])


def test_class_mask_is_the_dilated_union_of_thing_segments():
    pan = _pan()
    cm = class_mask(pan, ("person",), dilation=0)
    assert [s.id for s in cm.segments] == [2, 4] and cm.missing == ()
    assert np.array_equal(cm.mask, np.isin(pan.segment_map, [2, 4]))
    grown = class_mask(pan, ("person", "car", "dog"), dilation=2)
    assert [s.id for s in grown.segments] == [2, 3, 4] and grown.missing == ("dog",)
    assert grown.mask[3:12, 3:14].all() and grown.mask.sum() > np.isin(pan.segment_map, [2, 3, 4]).sum()
    assert not class_mask(pan, ("grass-merged",), 2).mask.any()  # stuff never matches
    assert not class_mask(pan, ("dog",), 2).mask.any()


def test_rle_round_trip_and_payload():
    rng = np.random.default_rng(0)
    for mask in (rng.random((7, 9)) > 0.5, np.ones((3, 4), bool), np.zeros((3, 4), bool)):
        rle = rle_encode(mask)
        assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
        assert np.array_equal(rle_decode(rle), mask)
    assert rle_encode(np.array([[True, False]]))["counts"] == [0, 1, 1]  # starts with a (zero-length) run of 0s
    payload = segments_payload(_pan())
    assert [(p["id"], p["class"], p["is_thing"], p["area"]) for p in payload] == [
        (1, "grass-merged", False, 1086), (2, "person", True, 35), (3, "car", True, 64), (4, "person", True, 15)]
    assert payload[1]["bbox"] == [5, 5, 12, 10]
    assert np.array_equal(rle_decode(payload[2]["rle"]), _pan().segment_map == 3)
    assert "mask_png" in segments_payload(_pan(), "png")[0]


def test_serve_config_reads_the_eraser_config_and_checks_serve_keys(tmp_path):
    cfg = load_config(ServeConfig, "configs/erase/demo.yaml", ["serve.port=9000", "serve.max_batch_size=4"])
    assert cfg.model_size == 64 and cfg.serve.port == 9000 and cfg.serve.max_batch_size == 4
    with pytest.raises(ConfigError, match="serve.max_ongoing_requests"):
        load_config(ServeConfig, None, ["serve.max_batch_size=16", "serve.max_ongoing_requests=8"])
    with pytest.raises(ConfigError, match="serve.port"):
        load_config(ServeConfig, None, ["serve.port=0"])
    with pytest.raises(ConfigError, match="serve.nope"):
        load_config(ServeConfig, None, ["serve.nope=1"])
