"""The page in a real headless browser: Debian's chromium driven by Selenium through chromium-driver.

Upload a photo, draw a mask stroke, click an object to select its segment, Erase: the result image
appears at the input's size. The API docs (/docs, Swagger UI) render. The browser is offline: every
request to another host than the service's fails (a dead proxy for all but loopback, no DNS), and
its network log shows that none was made, so a script or style from a CDN would fail the tests. A
screenshot is written to ``$MAGICERASER_TEST_ARTIFACTS`` (default ``build/test-artifacts/``).
Skipped, saying why, where chromium, chromedriver or selenium is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from .helpers import free_port, photo, png_bytes, serve_overrides, start_app

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="no headless browser: install Debian's chromium and chromium-driver (.ci/run does)"),
    pytest.mark.skipif(not HAVE_SELENIUM, reason="selenium is not installed (pip install -e '.[dev]')"),
]


@pytest.fixture(scope="module")
def app(tiny_sd, thing_segmenter):
    running = start_app(serve_overrides(tiny_sd, thing_segmenter, free_port(), []))
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # A port bound and never listened on refuses connections: the browser's proxy for every host but
    # loopback (chromium never proxies loopback), so nothing reaches the internet or another machine.
    with socket.socket() as dead_proxy:
        dead_proxy.bind(("127.0.0.1", 0))
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000",
                    f"--proxy-server=http://127.0.0.1:{dead_proxy.getsockname()[1]}",
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the network log (_requested_urls)
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
        driver.set_page_load_timeout(60)
        yield driver
        driver.quit()


def _requested_urls(driver) -> list[str]:
    """URLs the pages requested since the last call (chromium's network log, drained)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _elsewhere(urls: list[str], service_url: str) -> list[str]:
    """The URLs not on the service's host and port (data: and blob: URLs are the page's own)."""
    own = urllib.parse.urlsplit(service_url).netloc
    return [u for u in urls if urllib.parse.urlsplit(u).scheme not in ("data", "blob")
            and urllib.parse.urlsplit(u).netloc != own]


def _artifacts() -> Path:
    out = Path(os.environ.get("MAGICERASER_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _offset(el, x: float, y: float, size: tuple[int, int]) -> tuple[int, int]:
    """Selenium offsets (from the element's centre, CSS px) of image pixel (x, y)."""
    w, h = size
    rect = el.rect
    return round((x + 0.5) * rect["width"] / w - rect["width"] / 2), round((y + 0.5) * rect["height"] / h - rect["height"] / 2)


def _inner_pixel(segment_mask: np.ndarray) -> tuple[int, int]:
    """A pixel deep inside a segment (largest distance to its border), so a click lands on it."""
    import cv2

    dist = cv2.distanceTransform(segment_mask.astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def _mask_alpha(driver, x: int, y: int) -> int:
    return driver.execute_script(
        "return document.getElementById('mask-canvas').getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data[3];",
        x, y,
    )


def test_upload_brush_click_erase_and_see_the_result(app, browser, thing_segmenter, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from magiceraser.models.segmenter import Mask2FormerSegmenter

    h, w = 120, 160
    img = photo(h, w, seed=9)
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(img))
    seg = Mask2FormerSegmenter(str(thing_segmenter), threshold=0.0, mask_threshold=0.0, overlap_mask_area_threshold=0.0)
    pan = seg.segment([img])[0]
    person = max((s for s in pan.segments if s.isthing), key=lambda s: int(pan.mask_of(s.id).sum()))
    px, py = _inner_pixel(pan.mask_of(person.id))

    wait = WebDriverWait(browser, 120)
    browser.get(app.url)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "ready"))
    upload = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false;", upload)
    upload.send_keys(str(path))
    wait.until(lambda d: d.execute_script("return document.body.dataset.segmentsReady === '1'"))
    stage = browser.find_element(By.ID, "hover-canvas")

    # A brush stroke across the top-left of the photo.
    sx, sy = _offset(stage, 20, 20, (w, h))
    ex, ey = _offset(stage, 60, 25, (w, h))
    ActionChains(browser).move_to_element_with_offset(stage, sx, sy).click_and_hold().move_by_offset(ex - sx, ey - sy).release().perform()
    assert _mask_alpha(browser, 40, 22) > 0, "the stroke painted no mask"

    # Select the largest object by clicking inside it: its pixels join the mask.
    browser.find_element(By.ID, "tool-select").click()
    cx, cy = _offset(stage, px, py, (w, h))
    ActionChains(browser).move_to_element_with_offset(stage, cx, cy).perform()
    wait.until(lambda d: d.execute_script("return document.getElementById('hover-canvas').title.startsWith('person')"))
    ActionChains(browser).click().perform()
    ys, xs = np.nonzero(pan.mask_of(person.id))
    far = int(np.argmax((xs - px) ** 2 + (ys - py) ** 2))  # a pixel of the segment far from the click
    assert _mask_alpha(browser, px, py) > 0 and _mask_alpha(browser, int(xs[far]), int(ys[far])) > 0

    browser.find_element(By.ID, "erase").click()
    wait.until(lambda d: d.execute_script(
        "const r = document.getElementById('result'); return !document.getElementById('result-section').hidden && r.complete && r.naturalWidth > 0;"))
    size = browser.execute_script("const r = document.getElementById('result'); return [r.naturalWidth, r.naturalHeight];")
    assert size == [w, h]
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    assert browser.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
    shot = _artifacts() / "serve_page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0
    urls = _requested_urls(browser)
    assert any(u.endswith("/api/erase") for u in urls) and not _elsewhere(urls, app.url), urls


def test_errors_are_shown_in_the_page(app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "tool-brush").click()
    browser.find_element(By.ID, "clear-mask").click()
    browser.find_element(By.ID, "erase").click()  # an empty mask: the API refuses it, the page says why
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").get_attribute("hidden") is None)
    text = browser.find_element(By.ID, "error").text
    assert "422" in text and "mask" in text and "empty" in text


def test_api_docs_render_offline(app, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    _requested_urls(browser)  # drop what the other tests requested
    browser.get(app.url + "docs")
    paths_js = "return Array.from(document.querySelectorAll('.opblock-summary-path'), e => e.dataset.path);"
    WebDriverWait(browser, 60).until(lambda d: "/api/erase" in d.execute_script(paths_js))
    assert {"/api/erase", "/api/segment", "/healthz"} <= set(browser.execute_script(paths_js))
    assert browser.title == "MagicEraser - Swagger UI"
    browser.save_screenshot(str(_artifacts() / "serve_docs.png"))
    urls = _requested_urls(browser)
    paths = {urllib.parse.urlsplit(u).path for u in urls}
    assert {"/docs", "/static/swagger-ui-bundle.js", "/static/swagger-ui.css", "/openapi.json"} <= paths, urls
    assert not _elsewhere(urls, app.url), urls
