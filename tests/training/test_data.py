"""Data stream of the trainer: shard assignment, crops, stock inpainting inputs, prompts, resume."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from magiceraser.olrd_samples import expand_urls
from magiceraser.prompts import DEFAULT_TOKEN, learned_prompt
from magiceraser.training.data import StreamSpec, assign_shards, make_loader
from magiceraser.training.examples import ExampleSpec, InpaintingInputs
from magiceraser.training.sampling import choose_prompt, crop_box_containing, in_subset, random_mask


def test_assign_shards_splits_disjointly_and_covers_when_enough_shards():
    urls = [f"s{i}" for i in range(13)]
    for world, workers in [(1, 1), (2, 2), (3, 4), (2, 3)]:
        parts = [assign_shards(urls, r, world, w, workers) for r in range(world) for w in range(workers)]
        flat = [u for p in parts for u in p]
        assert sorted(flat) == sorted(urls) and len(flat) == len(set(flat))
        assert all(parts)
    # fewer shards than streams: every stream reads all shards (resampled, so no rank runs dry)
    assert assign_shards(urls[:3], 1, 2, 1, 2) == urls[:3]


def test_crop_box_contains_whole_mask_and_stays_inside_image():
    rng = np.random.default_rng(0)
    for _ in range(500):
        h, w = (int(v) for v in rng.integers(16, 200, 2))
        x0, y0 = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
        x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
        scale = float(rng.uniform(0.1, 1.0))
        cx0, cy0, cx1, cy1 = crop_box_containing((x0, y0, x1, y1), h, w, scale, rng)
        assert 0 <= cx0 <= x0 and x1 <= cx1 <= w and 0 <= cy0 <= y0 and y1 <= cy1 <= h
        if max(x1 - x0, y1 - y0) <= min(h, w):
            assert cx1 - cx0 == cy1 - cy0 >= int(np.ceil(scale * min(h, w)))


def test_inputs_follow_stock_inpainting_pipeline_convention(tiny_sd):
    """Independent computation: PIL crop + Lanczos resize, [-1, 1], binarised mask, image*(mask<0.5),
    nearest downsampling; the mask also equals what the stock pipeline's prepare_mask_latents makes."""
    from diffusers import StableDiffusionInpaintPipeline

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    cond = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    mask = np.zeros((70, 90), bool)
    mask[20:45, 30:61] = True
    box, size = (10, 5, 75, 70), 64
    out = InpaintingInputs(8)(img, cond, mask, box, size)

    def resized(a):
        return np.asarray(Image.fromarray(a).crop(box).resize((size, size), Image.LANCZOS)).astype(np.float32) / 255.0

    target = torch.from_numpy(resized(img) * 2 - 1).permute(2, 0, 1)
    m = torch.from_numpy((resized(mask.astype(np.uint8) * 255) >= 0.5).astype(np.float32))[None]
    masked = torch.from_numpy(resized(cond) * 2 - 1).permute(2, 0, 1) * (m < 0.5)
    torch.testing.assert_close(out["pixel_values"], target, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["masked_pixel_values"], masked, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["mask_latent"], m[:, ::8, ::8])

    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(tiny_sd), safety_checker=None, requires_safety_checker=False)
    mask_cond = pipe.mask_processor.preprocess(Image.fromarray(mask.astype(np.uint8) * 255), height=size, width=size, crops_coords=box)
    pipe_mask, _ = pipe.prepare_mask_latents(mask_cond, out["masked_pixel_values"][None], 1, size, size, torch.float32, "cpu", None, False)
    torch.testing.assert_close(out["mask_latent"][None], pipe_mask)


def test_prompt_mixing_share_and_format():
    rng = np.random.default_rng(0)
    picks = [choose_prompt(["grass", "sky-other-merged"], "a lawn", DEFAULT_TOKEN, 0.5, rng) for _ in range(4000)]
    share = np.mean([learned for _, learned in picks])
    assert abs(share - 0.5) < 0.03
    assert {p for p, learned in picks if learned} == {learned_prompt(DEFAULT_TOKEN, "grass")}
    assert {p for p, learned in picks if not learned} == {"a lawn"}
    # no caption: always the learned prompt
    assert choose_prompt(["sand"], "  ", DEFAULT_TOKEN, 0.0, rng) == (f"A photo of {DEFAULT_TOKEN} sand", True)
    random_tags = {choose_prompt(["grass", "sand"], "", DEFAULT_TOKEN, 1, rng, "random")[0] for _ in range(50)}
    assert len(random_tags) == 2


def test_random_masks_are_nonempty_and_partial():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = random_mask(64, rng, 4)
        assert m.shape == (64, 64) and m.any() and not m.all()


def test_subset_is_deterministic_and_of_the_right_size():
    keys = [f"k{i}" for i in range(5000)]
    chosen = [k for k in keys if in_subset(k, 3, 0.1)]
    assert 400 < len(chosen) < 600
    assert chosen == [k for k in keys if in_subset(k, 3, 0.1)]


def _spec(urls, tokenizer, **kw):
    base = dict(urls=urls, example=ExampleSpec(resolution=64), batch_size=2, tokenizer=tokenizer, token=DEFAULT_TOKEN, shuffle_buffer=3)
    base.update(kw)
    return StreamSpec(**base)


@pytest.fixture(scope="module")
def tokenizer(tiny_sd):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_sd), subfolder="tokenizer")
    tok.add_tokens(DEFAULT_TOKEN)
    return tok


def test_stream_batches_skip_corrupt_samples_and_log(olrd_shards, tokenizer, caplog):
    urls = expand_urls([str(olrd_shards / "olrd-*.tar")])
    assert len(urls) == 2
    with caplog.at_level(logging.WARNING, logger="magiceraser.training.data"):
        batches = list(itertools.islice(make_loader(_spec(urls, tokenizer), 0), 30))
    keys = [k for b in batches for k in b["keys"]]
    assert "s000i0001" not in keys and len(set(keys)) == 7  # resampled: every good sample comes, the corrupt one never
    assert any("s000i0001" in r.message and "truncated" in r.message for r in caplog.records)
    b = batches[0]
    assert b["pixel_values"].shape == (2, 3, 64, 64) and b["mask_latent"].shape == (2, 1, 8, 8)
    assert b["input_ids"].shape == (2, tokenizer.model_max_length)
    token_id = tokenizer.convert_tokens_to_ids(DEFAULT_TOKEN)
    for ids, learned in zip(torch.cat([x["input_ids"] for x in batches]), torch.cat([x["learned"] for x in batches])):
        assert bool((ids == token_id).any()) == bool(learned)


def test_random_mask_mode_masks_the_original(olrd_shards, tokenizer):
    spec = _spec(expand_urls([str(olrd_shards / "olrd-000001.tar")]), tokenizer, example=ExampleSpec(resolution=64, mode="random_mask"))
    b = next(iter(make_loader(spec, 0)))
    full_mask = torch.nn.functional.interpolate(b["mask_latent"], scale_factor=8)
    keep = b["masked_pixel_values"] != 0
    # outside the mask the input is the original image itself (no pasted object in this mode)
    outside = (full_mask < 0.5).expand_as(keep) & keep
    assert outside.any()
    assert torch.allclose(b["masked_pixel_values"][outside], b["pixel_values"][outside])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_stream_continues_exactly(olrd_shards, tokenizer, num_workers):
    urls = expand_urls([str(olrd_shards / "olrd-*.tar")])
    full = list(itertools.islice(make_loader(_spec(urls, tokenizer), num_workers), 7))
    consumed = 3
    positions = {}
    for b in full[:consumed]:
        positions[b["worker"]] = b["position"]
    spec = _spec(urls, tokenizer, start_positions=positions, worker_offset=consumed % max(1, num_workers))
    rest = list(itertools.islice(make_loader(spec, num_workers), len(full) - consumed))
    assert [b["keys"] for b in rest] == [b["keys"] for b in full[consumed:]]
    assert [b["prompts"] for b in rest] == [b["prompts"] for b in full[consumed:]]
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(rest, full[consumed:]))


def test_resume_deep_in_the_stream_reads_one_window_not_everything_seen(olrd_shards, tokenizer, monkeypatch):
    import magiceraser.training.data as data_mod

    urls = expand_urls([str(olrd_shards / "olrd-*.tar")])
    full = list(itertools.islice(make_loader(_spec(urls, tokenizer), 0), 40))  # 80 samples, ~20 windows of one shard
    opened = []
    real = data_mod.read_tar_samples

    def counting(shard_urls, *a, **kw):
        shard_urls = list(shard_urls)
        opened.extend(shard_urls)
        return real(shard_urls, *a, **kw)

    monkeypatch.setattr(data_mod, "read_tar_samples", counting)
    resumed = list(itertools.islice(make_loader(_spec(urls, tokenizer, start_positions={0: full[34]["position"]}), 0), 5))
    assert [b["keys"] for b in resumed] == [b["keys"] for b in full[35:]]
    assert [b["prompts"] for b in resumed] == [b["prompts"] for b in full[35:]]
    # 5 batches of 2 need at most 4 windows of >= 3 samples (one shard each): far from the ~19 read before it
    assert len(opened) <= 5, len(opened)
    assert full[34]["position"][0] > 15  # the resume point really is deep in the stream (~19 windows)
