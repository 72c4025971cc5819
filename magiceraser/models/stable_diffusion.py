"""Stable Diffusion 1.5 Inpainting, loaded for training and for erasing (docs/method.md parts 2-3).

* :func:`load_base_components`: tokenizer, text encoder, VAE, UNet and the DDPM noise scheduler,
  for the trainer (it checks that the UNet is an inpainting one: 9 input channels).
* :func:`load_inpaint_pipeline`: the stock ``StableDiffusionInpaintPipeline`` with a trained
  output's LoRA and v* loaded by diffusers' own ``load_lora_weights`` / ``load_textual_inversion``
  (so anything a user can load into diffusers works), DDIM by default, on ``device``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_base_components(base_model: str, revision: str | None = None) -> dict[str, Any]:
    """Tokenizer, text encoder, VAE, UNet and DDPM noise scheduler of an SD-inpainting model."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = dict(revision=revision)
    unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet", **kw)
    if unet.config.in_channels != 9:
        raise ValueError(
            f"{base_model} has a UNet with {unet.config.in_channels} input channels; the trainer needs an "
            "inpainting UNet (9 = noisy latent 4 + mask 1 + masked-image latent 4), e.g. stable-diffusion-v1-5/stable-diffusion-inpainting"
        )
    return dict(
        tokenizer=CLIPTokenizer.from_pretrained(base_model, subfolder="tokenizer", **kw),
        text_encoder=CLIPTextModel.from_pretrained(base_model, subfolder="text_encoder", attn_implementation="sdpa", **kw),
        vae=AutoencoderKL.from_pretrained(base_model, subfolder="vae", **kw),
        unet=unet,
        # The paper trains with DDPM noise; the base model's scheduler config carries its betas.
        noise_scheduler=DDPMScheduler.from_pretrained(base_model, subfolder="scheduler", **kw),
    )


def load_lora(sd: Any, path: str | Path) -> None:
    """``sd.load_lora_weights(path)``, without its warning for a LoRA that holds no text-encoder weights.

    MagicEraser's LoRA adapts the UNet only. diffusers' ``load_lora_weights`` then still tries the
    text encoder and logs "No LoRA keys associated to CLIPTextModel ... open an issue"; loading the
    same state dict into the UNet alone (what ``load_lora_weights`` does first) is the same result.
    A LoRA that does hold text-encoder weights (another trainer's) goes through ``load_lora_weights``.
    """
    state_dict, network_alphas, metadata = sd.lora_state_dict(str(path), return_lora_metadata=True)
    if any(key.startswith(f"{sd.text_encoder_name}.") for key in state_dict):
        sd.load_lora_weights(str(path))
        return
    if not all("lora" in key for key in state_dict):
        raise ValueError(f"{path}: not a LoRA checkpoint (every parameter name must contain 'lora')")
    sd.load_lora_into_unet(state_dict, network_alphas=network_alphas, unet=sd.unet, metadata=metadata, _pipeline=sd)


def load_inpaint_pipeline(
    base_model: str | Path, trained_dir: str | Path | None = None, device: str = "cpu", dtype: Any = None, scheduler: str = "ddim"
) -> tuple[Any, str | None]:
    """(pipeline, placeholder token or None): the base model plus, if given, a trained output.

    ``dtype`` defaults to float16 on CUDA and float32 elsewhere. ``scheduler``: "ddim" (one UNet
    evaluation per step, built from the model's scheduler config) or "model" (the checkpoint's own).
    """
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    from magiceraser.artifacts import read_trained_output

    if dtype is None:
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    trained = read_trained_output(trained_dir) if trained_dir else None
    sd = StableDiffusionInpaintPipeline.from_pretrained(
        str(base_model), dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    token = None
    if trained is not None:
        load_lora(sd, trained.path)
        sd.load_textual_inversion(str(trained.embeds_path), token=trained.token)
        token = trained.token
    if scheduler == "ddim":
        from diffusers import DDIMScheduler

        # One UNet evaluation per step, so exactly ⌊T·s⌋ steps run from z_T' (docs/method.md, Eq. 3);
        # the model's own PNDM repeats its first step, which would make it ⌊T·s⌋ + 1 evaluations.
        sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    elif scheduler != "model":
        raise ValueError(f"scheduler must be 'ddim' or 'model', got {scheduler!r}")
    sd.to(device)
    sd.set_progress_bar_config(disable=True)
    return sd, token
