"""MagicEraserPipeline.erase_many: several calls in one pass give the one-call results (the service batches this way)."""

from __future__ import annotations

import numpy as np
import pytest

from magiceraser.panoptic import dilate


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _mask(h: int, w: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    m = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_batched_calls_equal_single_calls(trained_pipe, fixed_segmenter):
    """Different masks, seeds, prompts and sizes in one batch: each result is its own call's result.

    The masks differ, so this also checks that each batch element gets its own refocus labels
    (a shared label set would change the second image).
    """
    items = [
        dict(image=_scene(96, 128, 1), mask=_mask(96, 128, [(30, 20, 70, 60)]), seed=1),
        dict(image=_scene(96, 128, 2), mask=_mask(96, 128, [(80, 50, 120, 90)]), seed=7, prompt="a wall"),
        dict(image=_scene(200, 150, 3), mask=_mask(200, 150, [(10, 10, 40, 50), (100, 150, 140, 190)]), seed=2),
    ]
    common = dict(num_inference_steps=4, mask_dilation=3, feather=2)
    trained_pipe.segmenter = fixed_segmenter
    try:
        single = [trained_pipe(**item, **common) for item in items]
        calls_before = fixed_segmenter.calls
        many = trained_pipe.erase_many([{**item, **common} for item in items], max_batch=8)
        assert fixed_segmenter.calls - calls_before <= 2  # one segmenter batch per crop size, not one per crop
    finally:
        trained_pipe.segmenter = None
    for item, one, batched in zip(items, single, many):
        assert batched.image.shape == item["image"].shape
        assert [r.prompt for r in batched.regions] == [r.prompt for r in one.regions]
        outside = ~dilate(item["mask"], 3)
        assert np.array_equal(batched.image[outside], item["image"][outside])
        # Batched kernels may round differently from batch-of-one kernels; on CPU they agree exactly.
        assert np.abs(batched.image.astype(int) - one.image.astype(int)).max() <= 2


def test_batches_split_by_diffusion_settings_and_max_batch(tiny_pipe, monkeypatch):
    """Crops with other steps or guidance never share a UNet batch; max_batch bounds a batch."""
    from magiceraser.pipelines.erase.pipeline import MagicEraserPipeline

    sizes: list[tuple[int, int, float]] = []
    real = MagicEraserPipeline._denoise_batch

    def spy(self, crops, key):
        sizes.append((len(crops), key.steps, key.guidance_scale))
        return real(self, crops, key)

    monkeypatch.setattr(MagicEraserPipeline, "_denoise_batch", spy)
    img, mask = _scene(64, 64, 4), _mask(64, 64, [(20, 20, 40, 40)])
    items = [dict(image=img, mask=mask, num_inference_steps=2, seed=s) for s in range(3)]
    items.append(dict(image=img, mask=mask, num_inference_steps=3))
    items.append(dict(image=img, mask=mask, num_inference_steps=2, guidance_scale=1.0))
    out = tiny_pipe.erase_many(items, max_batch=2)
    assert len(out) == 5
    assert sorted(sizes) == sorted([(2, 2, 7.5), (1, 2, 7.5), (1, 3, 7.5), (1, 2, 1.0)])
    with pytest.raises(ValueError, match="max_batch"):
        tiny_pipe.erase_many(items[:1], max_batch=0)
    with pytest.raises(ValueError, match="empty"):
        tiny_pipe.erase_many([dict(image=img, mask=np.zeros((64, 64), bool))])
