"""Export the trained v* and LoRA in the formats stock diffusers loads (``magiceraser.artifacts``).

    pipe.load_lora_weights(out_dir)                                        # pytorch_lora_weights.safetensors
    pipe.load_textual_inversion(out_dir / "learned_embeds.safetensors", token=meta["token"])

The LoRA file carries the adapter config (rank, alpha, target modules) as diffusers'
``lora_adapter_metadata``, so stock loaders apply the trained scale alpha / rank.

The export is one unit: both weight files are written under temporary names, the old
``magiceraser.json`` (the completion marker) is removed before either replaces its predecessor,
and the new marker, holding the sha256 of both files, is written last. So a marker always
vouches for the weight files beside it (``read_trained_output`` checks the digests), and a
killed export leaves no marker: :func:`sweep_incomplete_export` removes what it left.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME
from magiceraser.atomic import TMP_PREFIX, atomic_write_json, make_shareable, remove_stale_temporaries
from magiceraser.fingerprint import file_sha256


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
        save_file({token: vector.detach().float().cpu().reshape(1, -1).contiguous()}, str(Path(tmp) / EMBEDS_NAME))
        digests = {}
        for name in (LORA_WEIGHTS_NAME, EMBEDS_NAME):
            make_shareable(Path(tmp) / name)
            digests[name] = file_sha256(Path(tmp) / name)
        # From here until the new marker is written the folder holds no complete export.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / META_NAME)
        for name in (LORA_WEIGHTS_NAME, EMBEDS_NAME):
            os.replace(Path(tmp) / name, out / name)
    meta = {"token": token, "base_model": base_model, "lora": {"rank": metadata.get("r"), "alpha": metadata.get("lora_alpha")}}
    meta.update(extra)
    meta["files"] = digests
    atomic_write_json(out / META_NAME, meta)
    return out


def sweep_incomplete_export(out_dir: str | Path) -> list[Path]:
    """Remove what a killed export left in ``out_dir``: temporaries, and weight files without a marker."""
    out = Path(out_dir)
    removed = remove_stale_temporaries(out)
    if not (out / META_NAME).exists():
        for name in (LORA_WEIGHTS_NAME, EMBEDS_NAME):
            if (out / name).exists():
                (out / name).unlink()
                removed.append(out / name)
    return removed
