"""The tiny SD-inpainting model loads through the same stock path as the real checkpoint."""

from __future__ import annotations

import json

import numpy as np


def test_tiny_sd_loads_with_stock_pipeline(tiny_sd):
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    index = json.loads((tiny_sd / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(tiny_sd))
    assert pipe.unet.config.in_channels == 9
    assert pipe.vae_scale_factor == 8
    assert pipe.scheduler.config.num_train_timesteps == 1000
    ids = pipe.tokenizer("A photo of grass").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id
    assert len(ids) < 10  # learned merges: words are few tokens, not characters
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16))
    out = pipe("a photo", image=image, mask_image=mask, num_inference_steps=2, height=64, width=64,
               output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
