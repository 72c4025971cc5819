"""One eraser replica without Ray: ``EraserWorker`` builds the eraser the way the CLI does and erases a batch.

Each request is checked against the service's config with the eraser's own settings rules, a bad
one fails alone with the field it got wrong, and a request erased in a batch gets exactly what a
single call with the same settings gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from magiceraser.panoptic import dilate
from magiceraser.pipelines.erase.settings import EraseSettings, settings_of
from magiceraser.serve.config import ServeConfig
from magiceraser.serve.requests import ApiError, EraseParams, parse_erase_params
from magiceraser.serve.worker import EraseJob, EraseResult, EraserWorker

from .helpers import photo


@pytest.fixture(scope="module")
def worker(tiny_sd) -> EraserWorker:
    cfg = ServeConfig(base_model=str(tiny_sd), model_size=64, num_inference_steps=4, strength=0.5, device="cpu",
                      num_threads=1, seed=3)
    return EraserWorker(cfg)


def _mask() -> np.ndarray:
    m = np.zeros((64, 64), bool)
    m[20:40, 20:40] = True
    return m


def test_a_batch_gives_each_request_what_a_single_call_gives_and_a_bad_one_fails_alone(worker):
    image, mask = photo(64, 64), _mask()
    jobs = [
        EraseJob(image, mask),  # the config's settings
        EraseJob(image, mask, EraseParams(steps=1)),  # 1 × strength 0.5 of the config: no denoising step
        EraseJob(image, mask, EraseParams(seed=9, refocus=False)),
        EraseJob(image, None, EraseParams(classes=("person",))),  # this replica has no segmenter
    ]
    out = worker.erase_batch(jobs)
    assert isinstance(out[0], EraseResult) and isinstance(out[2], EraseResult)
    assert isinstance(out[1], ApiError) and (out[1].status, out[1].field) == (422, "strength")
    assert isinstance(out[3], ApiError) and out[3].status == 501
    assert out[0].batch_size == out[2].batch_size == 2
    base = settings_of(worker.cfg)
    alone = worker.pipe(image, mask, settings=base).image
    np.testing.assert_allclose(out[0].image.astype(int), alone.astype(int), atol=2)  # batched kernels may round apart
    assert np.array_equal(worker.pipe(image, mask, settings=base.replace(seed=9, refocus=False)).image,
                          worker.pipe(image, mask, settings=base, seed=9, refocus=False).image)
    kept = ~dilate(mask, base.mask_dilation)  # the config's settings reached the eraser: outside the dilated mask, the input
    assert np.array_equal(out[0].image[kept], image[kept]) and not np.array_equal(out[0].image, image)


def test_request_fields_are_checked_by_the_eraser_settings_over_the_config():
    base = EraseSettings(strength=1.0)
    assert parse_erase_params(steps="1", base=base).settings(base).num_inference_steps == 1  # 1 × 1.0: one step
    with pytest.raises(ApiError) as refused:
        parse_erase_params(steps="1", base=EraseSettings(strength=0.5))
    assert (refused.value.status, refused.value.field) == (422, "strength")
    with pytest.raises(ApiError) as refused:
        parse_erase_params(seed="-4")
    assert refused.value.field == "seed" and "seed must be in 0..2^63-1" in refused.value.message
    with pytest.raises(ApiError) as refused:
        parse_erase_params(steps="0")
    assert refused.value.field == "steps"
