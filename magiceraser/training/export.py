"""Export the trained v* and LoRA in the formats stock diffusers loads (``magiceraser.artifacts``).

    pipe.load_lora_weights(out_dir)                                        # pytorch_lora_weights.safetensors
    pipe.load_textual_inversion(out_dir / "learned_embeds.safetensors", token=meta["token"])

The LoRA file carries the adapter config (rank, alpha, target modules) as diffusers'
``lora_adapter_metadata``, so stock loaders apply the trained scale alpha / rank. Files are
written atomically and ``magiceraser.json`` last: its presence marks a complete export.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME
from magiceraser.atomic import TMP_PREFIX, atomic_write_json


def unet_lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights in diffusers' key format."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    return {k: v.detach().float().cpu().contiguous() for k, v in convert_state_dict_to_diffusers(state).items()}


def export_trained(out_dir: str | Path, unet, vector: torch.Tensor, token: str, base_model: str, extra: dict[str, Any]) -> Path:
    """Write the LoRA weights, v* and ``magiceraser.json`` into ``out_dir``."""
    from diffusers import StableDiffusionInpaintPipeline
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = unet.peft_config["default"].to_dict()
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=out) as tmp:
        StableDiffusionInpaintPipeline.save_lora_weights(
            tmp, unet_lora_layers=unet_lora_state_dict(unet), unet_lora_adapter_metadata=metadata, safe_serialization=True
        )
        os.replace(Path(tmp) / LORA_WEIGHTS_NAME, out / LORA_WEIGHTS_NAME)
        save_file({token: vector.detach().float().cpu().reshape(1, -1).contiguous()}, str(Path(tmp) / EMBEDS_NAME))
        os.replace(Path(tmp) / EMBEDS_NAME, out / EMBEDS_NAME)
    meta = {"token": token, "base_model": base_model, "lora": {"rank": metadata.get("r"), "alpha": metadata.get("lora_alpha")}}
    meta.update(extra)
    atomic_write_json(out / META_NAME, meta)
    return out
