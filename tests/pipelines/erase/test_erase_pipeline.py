"""MagicEraserPipeline end to end on the tiny model: geometry, start step, trained output, inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magiceraser.panoptic import dilate
from magiceraser.pipelines.erase import geometry
from magiceraser.pipelines.erase.content_init import LamaInpainter, TeleaInpainter, make_content_initializer
from magiceraser.pipelines.erase.pipeline import choose_prompt, prepare_inputs
from magiceraser.prompts import DEFAULT_TOKEN


def scene(h, w, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def test_1000x700_two_regions_size_and_pixels_outside_dilated_mask(tiny_pipe):
    img = scene(700, 1000)
    mask = np.zeros((700, 1000), bool)
    mask[100:180, 120:260] = True
    mask[520:600, 780:900] = True  # far away: a second crop
    out = tiny_pipe(img, mask, num_inference_steps=3, mask_dilation=6, feather=3)
    assert out.image.shape == img.shape and out.image.dtype == np.uint8
    erase = dilate(mask, 6)
    np.testing.assert_array_equal(out.erase_mask, erase)
    outside = ~erase
    assert np.array_equal(out.image[outside], img[outside])  # bit-identical
    assert len(out.regions) == 2
    for half in (slice(0, 350), slice(350, 700)):  # both regions were regenerated
        m = mask[half]
        assert (out.image[half][m] != img[half][m]).any(axis=-1).mean() > 0.5


def test_square_512_input_runs_directly(tiny_sd):
    from magiceraser.pipelines import MagicEraserPipeline

    pipe = MagicEraserPipeline.from_pretrained(tiny_sd, model_size=64, content_init="none")
    img = scene(512, 512, 1)
    mask = np.zeros((512, 512), bool)
    mask[200:300, 150:260] = True
    out = pipe(img, mask, num_inference_steps=2, strength=1.0, mask_dilation=0, feather=0, guidance_scale=1.0)
    assert out.image.shape == (512, 512, 3)
    assert np.array_equal(out.image[~mask], img[~mask])


def test_start_latents_follow_method(tiny_pipe):
    """z_T' = sqrt(ᾱ_T') E(x̃₀) + sqrt(1 − ᾱ_T') ε, and ⌊T·s⌋ steps run."""
    pipe = tiny_pipe
    img = scene(64, 64, 2)
    mask = np.zeros((64, 64), bool)
    mask[16:40, 20:44] = True
    seen = []
    hook = pipe.sd.unet.register_forward_pre_hook(lambda m, args: seen.append((float(args[1]), args[0][:1, :4].clone())))
    try:
        pipe(img, mask, num_inference_steps=10, strength=0.5, seed=3, mask_dilation=0, crop_margin=2.0)
    finally:
        hook.remove()
    sched = pipe.sd.scheduler
    sched.set_timesteps(10)
    assert len(sched.timesteps) == 10  # one UNet evaluation per step (DDIM)
    assert [t for t, _ in seen] == [float(t) for t in sched.timesteps[5:]]  # the last ⌊10 · 0.5⌋
    # Independent recomputation: Telea fill of the (whole-image) crop, VAE mean, the same CPU noise.
    filled = TeleaInpainter()(img, mask)
    x = torch.from_numpy(filled).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        z0 = pipe.sd.vae.encode(x).latent_dist.mean * pipe.sd.vae.config.scaling_factor
    eps = torch.randn(z0.shape, generator=torch.Generator("cpu").manual_seed(3))
    abar = sched.alphas_cumprod[int(seen[0][0])]
    expected = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
    torch.testing.assert_close(seen[0][1], expected, atol=1e-5, rtol=1e-5)


def test_trained_output_is_used(tiny_pipe, trained_pipe, trained_dir):
    from safetensors.torch import load_file

    img = scene(64, 64, 4)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    kw = dict(num_inference_steps=4, seed=0, prompt="A photo of grass", refocus=True)
    base = tiny_pipe(img, mask, **kw).image
    trained = trained_pipe(img, mask, **kw).image
    assert np.abs(base.astype(int) - trained.astype(int)).max() > 0  # the LoRA changes the result
    # v* was registered with its saved embedding, and the learned prompt uses it.
    tok = trained_pipe.sd.tokenizer
    token_id = tok.convert_tokens_to_ids(DEFAULT_TOKEN)
    saved = load_file(str(trained_dir / "learned_embeds.safetensors"))[DEFAULT_TOKEN][0]
    torch.testing.assert_close(trained_pipe.sd.text_encoder.get_input_embeddings().weight[token_id].detach(), saved)
    out = trained_pipe(img, mask, num_inference_steps=2, tag="grass-merged")
    assert out.prompt == f"A photo of {DEFAULT_TOKEN} grass" and out.tag == "grass-merged"


def test_tag_from_segmentation_and_overrides(trained_pipe, fixed_segmenter):
    img = scene(96, 128, 5)
    mask = np.zeros((96, 128), bool)
    mask[30:60, 40:80] = True
    trained_pipe.segmenter = fixed_segmenter
    try:
        out = trained_pipe(img, mask, num_inference_steps=2)
        assert fixed_segmenter.calls == 1
        assert out.tag == "grass-merged" and out.prompt == f"A photo of {DEFAULT_TOKEN} grass"
        assert trained_pipe(img, mask, num_inference_steps=2, tag="sand").prompt == f"A photo of {DEFAULT_TOKEN} sand"
        assert trained_pipe(img, mask, num_inference_steps=2, prompt="a beach").prompt == "a beach"
    finally:
        trained_pipe.segmenter = None
    assert choose_prompt(None, "grass-merged", None) == "grass"  # base model: no token
    assert choose_prompt(None, None, None) == ""


def test_lama_path_runs_scripted_module_from_disk(tiny_lama, tiny_sd):
    lama = LamaInpainter(tiny_lama)
    img = scene(37, 45, 6)  # not a multiple of 8: symmetric padding is needed
    mask = np.zeros((37, 45), bool)
    mask[10:25, 12:30] = True
    out = lama(img, mask)
    assert out.shape == img.shape and np.array_equal(out[~mask], img[~mask])
    # Independent run of the TorchScript file on a hand-padded input.
    model = torch.jit.load(str(tiny_lama))
    pad_img = np.pad(img.astype(np.float32) / 255, ((0, 3), (0, 3), (0, 0)), mode="symmetric")
    pad_msk = np.pad(mask.astype(np.float32), ((0, 3), (0, 3)), mode="symmetric")
    with torch.no_grad():
        ref = model(torch.from_numpy(pad_img).permute(2, 0, 1)[None], torch.from_numpy(pad_msk)[None, None])
    ref = np.clip(np.rint(ref[0].permute(1, 2, 0).numpy()[:37, :45] * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[mask], ref[mask])
    from magiceraser.pipelines import MagicEraserPipeline

    pipe = MagicEraserPipeline.from_pretrained(tiny_sd, content_init="lama", lama_path=tiny_lama, model_size=64)
    assert isinstance(pipe.content_init, LamaInpainter)
    res = pipe(scene(64, 80, 7), np.pad(np.ones((20, 20), bool), ((20, 24), (30, 30))), num_inference_steps=2)
    assert res.image.shape == (64, 80, 3)


def test_content_initializers():
    img = scene(40, 40, 8)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    for kind in ("telea", "none"):
        out = make_content_initializer(kind)(img, mask)
        assert np.array_equal(out[~mask], img[~mask])
    assert (make_content_initializer("none")(img, mask)[mask] == 127).all()
    with pytest.raises(ValueError, match="lama_path"):
        make_content_initializer("lama")
    with pytest.raises(FileNotFoundError, match="big-lama"):
        LamaInpainter("/nonexistent/big-lama.pt")
    with pytest.raises(ValueError, match="unknown content"):
        make_content_initializer("magic")


def test_bad_inputs_give_clear_errors():
    img = scene(40, 50)
    with pytest.raises(ValueError, match="same size"):
        prepare_inputs(img, np.ones((40, 49), bool))
    with pytest.raises(ValueError, match="empty"):
        prepare_inputs(img, np.zeros((40, 50), bool))
    with pytest.raises(ValueError, match="empty"):  # a 0/1 uint8 mask is below the 128 threshold
        prepare_inputs(img, np.ones((40, 50), np.uint8))
    _, m = prepare_inputs(img, np.full((40, 50), 127, np.uint8) + np.eye(40, 50, dtype=np.uint8))
    assert m.sum() == 40  # grey 128 and above is erased, 127 is kept
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        prepare_inputs(img.astype(np.float32), np.ones((40, 50), bool))


def test_pipeline_rejects_bad_settings(tiny_pipe):
    img, mask = scene(64, 64), np.pad(np.ones((8, 8), bool), 28)
    from magiceraser.pipelines.erase.settings import SettingError

    with pytest.raises(SettingError, match="strength") as bad:
        tiny_pipe(img, mask, strength=0.0)
    assert bad.value.field == "strength"
    with pytest.raises(SettingError, match="at least one denoising step") as bad:
        tiny_pipe(img, mask, num_inference_steps=1, strength=0.5)
    assert bad.value.field == "strength"
    for name, value in (("feather", -1), ("mask_dilation", -2), ("max_regions", -1), ("seed", -1)):
        with pytest.raises(SettingError) as bad:
            tiny_pipe(img, mask, **{name: value})
        assert bad.value.field == name and name in str(bad.value)
    with pytest.raises(TypeError, match="not an erase setting: stregth"):
        tiny_pipe(img, mask, stregth=0.5)
    assert tiny_pipe.plan(img, mask, max_regions=None).regions.crops  # the old spelling of "no cap" still works


def test_geometry_regions_crops_and_paste():
    mask = np.zeros((100, 300), bool)
    mask[40:50, 10:20] = True
    mask[40:50, 24:34] = True  # close (crops overlap): merged with the first
    mask[40:50, 250:260] = True  # far: its own crop
    regions = geometry.region_boxes(mask, margin=0.5)
    assert len(regions) == 2
    assert sum(int(m.sum()) for _, m in regions) == int(mask.sum())
    for box, part in regions:
        ys, xs = np.nonzero(part)
        assert box.x0 <= xs.min() and xs.max() < box.x1 and box.y0 <= ys.min() and ys.max() < box.y1
        assert 0 <= box.x0 and box.x1 <= 300 and 0 <= box.y0 and box.y1 <= 100
    wide = geometry.crop_box(geometry.Box(0, 10, 300, 20), (100, 300), 0.5)
    assert (wide.width, wide.height) == (300, 100)
    assert geometry.model_shape(100, 300, 512) == (192, 512)
    erase = np.zeros((20, 20), bool)
    erase[5:15, 5:15] = True
    core = np.zeros_like(erase)
    core[8:12, 8:12] = True
    alpha = geometry.feather_alpha(erase, core, 3)
    assert (alpha[~erase] == 0).all() and (alpha[core] == 1).all() and 0 < alpha[5, 10] < 1
    base = np.full((30, 30, 3), 10, np.uint8)
    out = geometry.paste(base, np.full((20, 20, 3), 200, np.uint8), geometry.Box(5, 5, 25, 25), alpha)
    assert out[15, 15, 0] == 200 and (out[:5] == 10).all() and out[6, 6, 0] == 10 and 10 < out[10, 10, 0] < 200


def test_geometry_drops_specks_and_caps_crops():
    mask = np.zeros((120, 300), bool)
    mask[10:30, 10:30] = True  # 400 px: kept
    mask[100, 200] = mask[5, 290] = True  # specks
    mask[60:63, 150:153] = True  # 9 px speck
    kept, dropped = geometry.drop_small_regions(mask, 16)
    assert (dropped.count, dropped.pixels) == (3, 11)
    assert kept.sum() == 400 and not (kept & ~mask).any()
    assert geometry.drop_small_regions(mask, 0)[1].count == 0
    blobs = np.zeros((120, 300), bool)
    for x in range(5, 295, 29):  # 10 far-apart blobs: 10 crops without a cap
        blobs[50:55, x : x + 5] = True
    assert len(geometry.plan_regions(blobs, margin=0.0).crops) == 10
    plan = geometry.plan_regions(blobs, margin=0.0, max_regions=3)
    assert len(plan.crops) <= 3 and plan.components == 10 and plan.merged_for_cap >= 7
    parts = [p for _, p in plan.crops]
    assert (sum(p.astype(int) for p in parts) == blobs.astype(int)).all()  # every pixel in exactly one crop
    for box, part in plan.crops:
        ys, xs = np.nonzero(part)
        assert box.x0 <= xs.min() and xs.max() < box.x1 and box.y0 <= ys.min() and ys.max() < box.y1
