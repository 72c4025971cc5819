"""The API over HTTP: a real Ray Serve app on 127.0.0.1 (one per module) with the demo-sized models.

The app runs with a small capacity (batches of 2, 2 requests per replica, 2 queued) so that a
burst of 16 requests overflows its queue.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from magiceraser.imageio import decode_image
from magiceraser.panoptic import dilate

from .helpers import free_port, photo, png_bytes, serve_overrides, start_app

pytestmark = pytest.mark.timeout(600)

CAPACITY = ["serve.max_batch_size=2", "serve.max_ongoing_requests=2", "serve.max_queued_requests=2",
            "serve.retry_after_s=3", "serve.max_pixels=200000"]


@pytest.fixture(scope="module")
def app(tiny_sd, thing_segmenter):
    running = start_app(serve_overrides(tiny_sd, thing_segmenter, free_port(), CAPACITY))
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(app):
    with httpx.Client(base_url=app.url, timeout=120, limits=httpx.Limits(max_connections=32)) as c:
        yield c


@pytest.fixture(scope="module")
def segmenter(thing_segmenter):
    """The service's segmenter, in this process."""
    from magiceraser.models.segmenter import Mask2FormerSegmenter

    return Mask2FormerSegmenter(str(thing_segmenter), threshold=0.0, mask_threshold=0.0, overlap_mask_area_threshold=0.0)


def _files(image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, tuple[str, bytes]]:
    files = {"image": ("photo.png", png_bytes(image))}
    if mask is not None:
        files["mask"] = ("mask.png", png_bytes(mask.astype(np.uint8) * 255))
    return files


def _box_mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def test_erase_returns_the_input_size_and_keeps_pixels_outside_the_mask(app, client):
    img = photo(97, 150, seed=1)
    mask = _box_mask(97, 150, (40, 30, 90, 70))
    r = client.post("/api/erase", files=_files(img, mask), data={"steps": "3", "seed": "5"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = decode_image(r.content)
    assert out.shape == img.shape
    outside = ~dilate(mask, app.cfg.mask_dilation)
    assert np.array_equal(out[outside], img[outside])
    assert (out[mask] != img[mask]).any()
    regions = json.loads(r.headers["x-erase-regions"])
    assert len(regions) == 1 and float(r.headers["x-erase-seconds"]) > 0
    assert "x-erase-prompt" in r.headers and "x-erase-tag" in r.headers


def test_classes_build_the_mask_from_the_segments(app, client, segmenter):
    from magiceraser.class_masks import class_mask

    img = photo(96, 128, seed=2)
    pan = segmenter.segment([img])[0]
    expected = class_mask(pan, ("person",), app.cfg.serve.class_mask_dilation)
    assert expected.segments, "the test segmenter should find persons"
    r = client.post("/api/erase", files=_files(img), data={"classes": "person"}, params={"format": "json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["id"] for s in body["erased_segments"]] == [s.id for s in expected.segments]
    assert {s["class"] for s in body["erased_segments"]} == {"person"}
    out = decode_image(__import__("base64").b64decode(body["image_png_base64"]))
    assert out.shape == img.shape and (body["width"], body["height"]) == (128, 96)
    outside = ~dilate(expected.mask, app.cfg.mask_dilation)
    assert outside.any() and np.array_equal(out[outside], img[outside])
    assert (out[expected.mask] != img[expected.mask]).any()


def test_segment_returns_what_the_segmenter_returns_in_process(client, segmenter):
    from magiceraser.serve.segments import segments_payload

    img = photo(90, 120, seed=3)
    r = client.post("/api/segment", files=_files(img))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (120, 90)
    assert body["segments"] == segments_payload(segmenter.segment([img])[0])
    assert any(s["is_thing"] for s in body["segments"])
    png = client.post("/api/segment", files=_files(img), params={"masks": "png"}).json()["segments"]
    assert [s["id"] for s in png] == [s["id"] for s in body["segments"]] and "mask_png" in png[0]


def _bad_requests() -> list[tuple[str, dict, dict, int, str | None]]:
    img = photo(64, 80)
    mask = _box_mask(64, 80, (20, 20, 50, 50))
    big = photo(500, 500)  # 250 000 px > serve.max_pixels=200000
    return [
        ("not an image", {"image": ("x.png", b"hello"), "mask": ("m.png", png_bytes(mask.astype(np.uint8) * 255))}, {}, 422, "image"),
        ("mask not an image", {"image": ("x.png", png_bytes(img)), "mask": ("m.png", b"\x89PNG\r\n")}, {}, 422, "mask"),
        ("sizes differ", _files(img, mask[:, :70]), {}, 422, "mask"),
        ("empty mask", _files(img, np.zeros_like(mask)), {}, 422, "mask"),
        ("over max_pixels", _files(big, np.ones((500, 500), bool)), {}, 413, "image"),
        ("unknown class", _files(img), {"classes": "unicorn"}, 422, "classes"),
        ("stuff class", _files(img), {"classes": "sky"}, 422, "classes"),
        ("class not in the image", _files(img), {"classes": "zebra"}, 422, "classes"),
        ("mask and classes", _files(img, mask), {"classes": "person"}, 400, "classes"),
        ("no mask", _files(img), {}, 400, "mask"),
        ("no image", {"mask": ("m.png", png_bytes(mask.astype(np.uint8) * 255))}, {}, 400, "image"),
        ("image as text", {"mask": ("m.png", png_bytes(mask.astype(np.uint8) * 255))}, {"image": "abc"}, 422, "image"),
        ("bad steps", _files(img, mask), {"steps": "many"}, 422, "steps"),
        ("bad strength", _files(img, mask), {"strength": "2"}, 422, "strength"),
        ("no denoising step", _files(img, mask), {"steps": "1", "strength": "0.5"}, 422, "strength"),
        ("zero steps", _files(img, mask), {"steps": "0"}, 422, "steps"),
        ("negative seed", _files(img, mask), {"seed": "-1"}, 422, "seed"),
    ]


def test_bad_input_gets_a_4xx_naming_the_field_and_the_service_keeps_answering(client):
    for what, files, data, status, field in _bad_requests():
        r = client.post("/api/erase", files=files, data=data)
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        body = r.json()
        assert body["field"] == field and body["status"] == status and body["error"], f"{what}: {body}"
        assert client.get("/healthz").json()["status"] == "ok"
    r = client.post("/api/segment", files={"image": ("x.png", b"nope")})
    assert r.status_code == 422 and r.json()["field"] == "image"
    r = client.post("/api/erase", files=_files(photo(64, 80), _box_mask(64, 80, (10, 10, 30, 30))), params={"format": "xml"})
    assert r.status_code == 422 and r.json()["field"] == "format"
    missing = client.get("/api/nothing")
    assert missing.status_code == 404 and missing.json()["status"] == 404
    ok = client.post("/api/erase", files=_files(photo(64, 80), _box_mask(64, 80, (10, 10, 30, 30))))
    assert ok.status_code == 200


def test_page_health_and_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "MagicEraser" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    health = client.get("/healthz").json()
    assert health["segmenter"] is True and "person" in health["classes"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "SwaggerUIBundle" in docs.text
    # Its scripts, style and icon come from the service (offline, in clusters without internet), not a CDN.
    assert "http://" not in docs.text and "https://" not in docs.text and "cdn." not in docs.text
    for asset in ("/static/swagger-ui-bundle.js", "/static/swagger-ui.css", "/static/swagger-ui-favicon-32x32.png"):
        assert asset in docs.text and client.get(asset).status_code == 200
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would load its script from a CDN: off
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/erase", "/api/segment", "/healthz"} <= set(paths)


def test_a_burst_beyond_the_queue_gets_503_and_every_request_an_answer(client):
    img = photo(64, 64, seed=4)
    files = _files(img, _box_mask(64, 64, (16, 16, 48, 48)))
    n = 16

    def one(_: int) -> httpx.Response:
        return client.post("/api/erase", files=files)

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    codes = sorted(r.status_code for r in answers)
    assert len(answers) == n and set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 2, codes
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "3" and r.json()["status"] == 503
        else:
            assert decode_image(r.content).shape == img.shape
    assert client.post("/api/erase", files=files).status_code == 200  # capacity is back

