"""Models of the prompt tuner and its loss (docs/method.md part 2, Eq. 4).

``PromptTuner`` holds the frozen SD 1.5 Inpainting components with the two trainable parts
installed: v* (:mod:`placeholder`) and LoRA adapters on the UNet (peft through diffusers'
``add_adapter``). :func:`diffusion_loss` is the training objective for one micro-batch:

    z'_t = concat(z_t, m, z_masked),  loss = || ε − ε_θ,φ(z'_t, t, τ(y)) ||²

with DDPM noise from the base model's noise schedule. Noise, timesteps and the VAE posterior
samples are drawn for the *global* batch from one generator seeded identically on every process,
each process taking its slice: the result of a run then does not depend on how many processes
share the global batch (a 2-process run equals a 1-process run with the doubled batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from magiceraser.training.config import ModelConfig
from magiceraser.training.placeholder import PlaceholderEmbedding, add_placeholder

log = logging.getLogger(__name__)
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cast_frozen(module: nn.Module, dtype: torch.dtype) -> None:
    """``module.to(dtype)``, without diffusers' false alarm.

    diffusers' ``ModelMixin.to`` warns "There are modules in AutoencoderKL that should be kept in
    float32: []" whenever a dtype is given, also when the model keeps no module in float32 (it
    tests the list against None, not for emptiness). For such a model torch's own cast does the
    same; a model that does keep modules in float32 goes through diffusers' ``to``.
    """
    if getattr(module, "_keep_in_fp32_modules", None):
        module.to(dtype)
    else:
        nn.Module.to(module, dtype)


class PromptTuner(nn.Module):
    """Frozen SD-inpainting components + trainable v* and UNet LoRA."""

    def __init__(self, components: dict[str, Any], cfg: ModelConfig, weight_dtype: torch.dtype = torch.float32):
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0
        from peft import LoraConfig

        self.tokenizer = components["tokenizer"]
        self.noise_scheduler = components["noise_scheduler"]
        self.text_encoder = components["text_encoder"]
        self.vae = components["vae"]
        self.unet = components["unet"]
        for module in (self.text_encoder, self.vae, self.unet):
            module.requires_grad_(False)
            cast_frozen(module, weight_dtype)
        self.vae.eval()
        self.text_encoder.eval()  # CLIP has no dropout in use; eval keeps the frozen encoder deterministic
        self.unet.set_attn_processor(AttnProcessor2_0())  # torch SDPA attention
        self.placeholder: PlaceholderEmbedding = add_placeholder(self.tokenizer, self.text_encoder, cfg.token, cfg.init_word)
        lora = cfg.lora
        self.unet.add_adapter(
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                init_lora_weights="gaussian",
            )
        )
        for p in self.lora_parameters():
            p.data = p.data.float()  # trainable weights stay fp32 under mixed precision
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            # transformers checkpoints only modules in training mode. The frozen CLIP computes the
            # same in train() when none of its dropouts is active (SD 1.5's are all 0.0).
            te_config = self.text_encoder.config
            dropout_free = getattr(te_config, "attention_dropout", 0.0) == 0 and getattr(te_config, "dropout", 0.0) == 0 and not any(
                isinstance(m, nn.Dropout) and m.p > 0 for m in self.text_encoder.modules()
            )
            if dropout_free:
                self.text_encoder.train()
            else:
                log.warning("text encoder has active dropout: it stays in eval mode, so only the UNet is checkpointed")
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)

    # -- trainable parameters -------------------------------------------------------------------

    def lora_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.unet.named_parameters() if "lora_" in n]

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.lora_named_parameters()]

    def set_phase(self, phase: int) -> None:
        """Phase 1: only v* trains. Phase 2: v* and LoRA train."""
        self.placeholder.vector.requires_grad_(True)
        for p in self.lora_parameters():
            p.requires_grad_(phase >= 2)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """v* and LoRA weights (names as in the module tree), detached on CPU."""
        state = {"placeholder.vector": self.placeholder.vector.detach().cpu().clone()}
        state.update({f"unet.{n}": p.detach().cpu().clone() for n, p in self.lora_named_parameters()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = {"placeholder.vector": self.placeholder.vector}
        params.update({f"unet.{n}": p for n, p in self.lora_named_parameters()})
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"trainable state does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name].to(p.device, p.dtype))

    # -- forward --------------------------------------------------------------------------------

    @torch.no_grad()
    def latent_params(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE posterior parameters (mean ‖ logvar, 8 channels) of images in [-1, 1]."""
        return self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.parameters.float()


@dataclass
class StepNoise:
    """Random draws of one micro-step for this process's slice of the global batch."""

    noise: torch.Tensor
    timesteps: torch.Tensor
    image_eps: torch.Tensor
    masked_eps: torch.Tensor


def draw_step_noise(
    generator: torch.Generator, global_batch: int, rank: int, local_batch: int, latent_shape: tuple[int, ...], num_timesteps: int, device: torch.device
) -> StepNoise:
    """Draw noise for the whole global batch (same on every process) and take this process's slice."""
    sl = slice(rank * local_batch, (rank + 1) * local_batch)
    shape = (global_batch, *latent_shape)

    def randn() -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=generator.device)[sl].to(device)

    timesteps = torch.randint(0, num_timesteps, (global_batch,), generator=generator, device=generator.device)[sl].to(device)
    return StepNoise(noise=randn(), timesteps=timesteps, image_eps=randn(), masked_eps=randn())


def sample_latents(params: torch.Tensor, eps: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """diffusers ``DiagonalGaussianDistribution.sample`` with given noise, times the VAE scaling factor."""
    mean, logvar = torch.chunk(params, 2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    return (mean + std * eps) * scaling_factor


def diffusion_loss(model: PromptTuner, batch: dict[str, Any], draws: StepNoise, autocast: Any) -> torch.Tensor:
    """ε-prediction MSE of one micro-batch (pixel batches are VAE-encoded here, cached ones are not)."""
    if "image_latent_params" in batch:
        image_params, masked_params = batch["image_latent_params"], batch["masked_latent_params"]
    else:
        with autocast():
            image_params = model.latent_params(batch["pixel_values"])
            masked_params = model.latent_params(batch["masked_pixel_values"])
    latents = sample_latents(image_params.float(), draws.image_eps, model.scaling_factor)
    masked_latents = sample_latents(masked_params.float(), draws.masked_eps, model.scaling_factor)
    mask = batch["mask_latent"].float()
    scheduler = model.noise_scheduler
    noisy = scheduler.add_noise(latents, draws.noise, draws.timesteps)
    if scheduler.config.prediction_type == "epsilon":
        target = draws.noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, draws.noise, draws.timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r} in the base model's scheduler")
    with autocast():
        hidden = model.text_encoder(batch["input_ids"])[0]
        unet_in = torch.cat([noisy, mask, masked_latents], dim=1).to(model.unet.dtype)
        pred = model.unet(unet_in, draws.timesteps, hidden.to(model.unet.dtype)).sample
    return F.mse_loss(pred.float(), target.float(), reduction="mean")
