"""Export the trained v* and LoRA in the formats stock diffusers loads (``magiceraser.artifacts``).

    pipe.load_lora_weights(out_dir)                                        # pytorch_lora_weights.safetensors
    pipe.load_textual_inversion(out_dir / "learned_embeds.safetensors", token=meta["token"])

The LoRA file carries the adapter config (rank, alpha, target modules) as diffusers'
``lora_adapter_metadata``, so stock loaders apply the trained scale alpha / rank.

The export is one unit: both weight files and the new marker are written under temporary names
first (so a full disk stops the export before anything of the previous one is touched), the old
``magiceraser.json`` (the completion marker) is removed before either weight file replaces its
predecessor, and the new marker, holding the sha256 of both files, is renamed into place last. So
a marker always vouches for the weight files beside it (``read_trained_output`` checks the
digests), and a killed export leaves no marker: :func:`sweep_incomplete_export` removes what it left.

The bytes depend only on the weights and the settings: the LoRA metadata is written with sorted
keys and sorted module lists (PEFT keeps ``target_modules`` as a set, whose order changes from
one Python process to the next) and every safetensors header with sorted keys (the writer's
metadata map has a per-process order too), so two identical runs write identical files and a
digest of the export identifies a model.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME, META_NAME
from magiceraser.atomic import TMP_PREFIX, remove_stale_temporaries, write_synced
from magiceraser.fingerprint import file_sha256


def unet_lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights in diffusers' key format."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    return {k: v.detach().float().cpu().contiguous() for k, v in convert_state_dict_to_diffusers(state).items()}


def _canonical(value: Any) -> Any:
    """JSON-able ``value`` with every set as a sorted list (PEFT configs hold sets)."""
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def lora_metadata(unet) -> dict[str, Any]:
    """The adapter config diffusers stores beside the LoRA weights, in a canonical order."""
    return _canonical(unet.peft_config["default"].to_dict())


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header in sorted key order.

    The safetensors writer keeps the metadata in a hash map whose order changes from one process
    to the next; the tensor bytes and their offsets do not change, so the header is re-encoded
    with sorted keys (padded with spaces to 8 bytes, as the writer pads it) in front of the same data.
    """
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def export_trained(out_dir: str | Path, unet, vector: torch.Tensor, token: str, base_model: str, extra: dict[str, Any]) -> Path:
    """Write the LoRA weights, v* and ``magiceraser.json`` into ``out_dir``."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, _pack_dict_with_prefix
    from safetensors.torch import save as safetensors_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = lora_metadata(unet)
    packed = _pack_dict_with_prefix(metadata, StableDiffusionInpaintPipeline.unet_name)

    def save_function(weights: dict[str, torch.Tensor], filename: str) -> None:
        # What diffusers' own save function writes (format + the adapter metadata under the
        # UNet's prefix), serialised in memory and written with a plain write: a full disk is an
        # OSError naming the file. The stock-loader test checks the scale alpha / rank survives.
        write_synced(Path(filename), canonical_safetensors(safetensors_bytes(weights, metadata={
            "format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)})))

    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=out) as tmp:
        StableDiffusionInpaintPipeline.save_lora_weights(
            tmp, unet_lora_layers=unet_lora_state_dict(unet), save_function=save_function, safe_serialization=True
        )
        embeds = safetensors_bytes({token: vector.detach().float().cpu().reshape(1, -1).contiguous()})
        write_synced(Path(tmp) / EMBEDS_NAME, canonical_safetensors(embeds))
        digests = {name: file_sha256(Path(tmp) / name) for name in (LORA_WEIGHTS_NAME, EMBEDS_NAME)}
        meta = {"token": token, "base_model": base_model, "lora": {"rank": metadata.get("r"), "alpha": metadata.get("lora_alpha")}}
        meta.update(extra)
        meta["files"] = digests
        write_synced(Path(tmp) / META_NAME, (json.dumps(meta, indent=2) + "\n").encode())
        # Every byte is written; from here until the new marker is renamed into place the folder
        # holds no complete export (renames need no space).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / META_NAME)
        for name in (LORA_WEIGHTS_NAME, EMBEDS_NAME, META_NAME):
            os.replace(Path(tmp) / name, out / name)
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
