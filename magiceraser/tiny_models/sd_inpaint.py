"""Stable Diffusion 1.5 Inpainting components with random weights, tiny or full size.

``write_tiny_sd_inpaint(dir)`` saves a complete diffusers pipeline directory (``model_index.json``,
``unet/`` with the 9-channel UNet, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) that
``StableDiffusionInpaintPipeline.from_pretrained(dir)`` loads exactly like
``stable-diffusion-v1-5/stable-diffusion-inpainting``. The VAE keeps SD's 8x downsampling, so
image/latent geometry is the real one at any resolution.

``build_sd_inpaint(full=True)`` builds the real SD 1.5 inpainting architectures (860M-parameter
UNet) with random weights in memory, for GPU benchmarks with real timings.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from magiceraser.tiny_models.clip_tokenizer import write_clip_tokenizer

# The scheduler configuration of stable-diffusion-v1-5/stable-diffusion-inpainting.
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    trained_betas=None,
)

SD15_UNET = dict(
    sample_size=64,
    in_channels=9,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
    norm_num_groups=32,
)
TINY_UNET = dict(
    sample_size=8,
    in_channels=9,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    attention_head_dim=(2, 4),
    cross_attention_dim=32,
    norm_num_groups=16,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
TINY_VAE = dict(SD15_VAE, block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64)


def _text_encoder_config(vocab_size: int, full: bool):
    from transformers import CLIPTextConfig

    common = dict(vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    if full:
        return CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu", **common)
    return CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, projection_dim=32, hidden_act="quick_gelu", **common)


def build_sd_inpaint(full: bool = False, seed: int = 0, tokenizer_dir: str | Path | None = None) -> dict[str, Any]:
    """Components of an SD 1.5 inpainting pipeline with random weights (tiny unless ``full``)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tmp = None
    if tokenizer_dir is None:
        tmp = tempfile.TemporaryDirectory()
        tokenizer_dir = tmp.name
        write_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    if tmp is not None:
        tmp.cleanup()
    # The full-size text encoder keeps CLIP's real vocabulary size so embedding shapes match.
    vocab_size = 49408 if full else len(tokenizer)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(SD15_UNET if full else TINY_UNET))
    vae = AutoencoderKL(**(SD15_VAE if full else TINY_VAE))
    text_encoder = CLIPTextModel(_text_encoder_config(vocab_size, full))
    scheduler = PNDMScheduler(**SD15_SCHEDULER)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def write_tiny_sd_inpaint(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random SD-inpainting pipeline in the diffusers on-disk format."""
    from diffusers import StableDiffusionInpaintPipeline

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tok_dir:
        write_clip_tokenizer(tok_dir)
        parts = build_sd_inpaint(full=False, seed=seed, tokenizer_dir=tok_dir)
    pipe = StableDiffusionInpaintPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out
