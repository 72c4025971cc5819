"""On-disk layout of a trained MagicEraser output directory (written by the trainer, read by the eraser).

Both weight files are in the formats stock diffusers loads:
    pipe.load_lora_weights(out_dir)                          # LORA_WEIGHTS_NAME
    pipe.load_textual_inversion(out_dir / EMBEDS_NAME, token=meta["token"])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magiceraser.fingerprint import file_sha256

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
EMBEDS_NAME = "learned_embeds.safetensors"
META_NAME = "magiceraser.json"
MODEL_CARD_NAME = "README.md"  # the export's model card, where one is written beside the three files above
CARD_GRID_NAME = "validation.png"  # the validation grid the model card shows, where the run validated


@dataclass(frozen=True)
class TrainedOutput:
    path: Path
    token: str
    base_model: str
    meta: dict[str, Any]

    @property
    def lora_path(self) -> Path:
        return self.path / LORA_WEIGHTS_NAME

    @property
    def embeds_path(self) -> Path:
        return self.path / EMBEDS_NAME


def read_trained_output(path: str | Path) -> TrainedOutput:
    """Read and check a trained output directory; raise FileNotFoundError naming what is missing.

    ``magiceraser.json`` records the sha256 of both weight files (exports since the digests were
    added): a weight file that does not match is a mixed or damaged export and is refused.
    """
    path = Path(path)
    missing = [n for n in (META_NAME, EMBEDS_NAME, LORA_WEIGHTS_NAME) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a trained MagicEraser output: missing {', '.join(missing)} "
            "(train one with `magiceraser train`, or leave the trained directory unset to use the base model)"
        )
    meta = json.loads((path / META_NAME).read_text())
    for key in ("token", "base_model"):
        if key not in meta:
            raise ValueError(f"{path / META_NAME} lacks the key {key!r}")
    for name, expected in (meta.get("files") or {}).items():
        if file_sha256(path / name) != expected:
            raise ValueError(
                f"{path / name} is not the file {path / META_NAME} was written with (its sha256 differs): "
                "the export is damaged or mixed with another run's; export it again"
            )
    return TrainedOutput(path=path, token=meta["token"], base_model=meta["base_model"], meta=meta)
