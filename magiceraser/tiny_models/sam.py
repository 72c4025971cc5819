"""A random-weight Segment Anything in the on-disk format of facebook/sam-vit-huge.

``write_tiny_sam(dir)`` saves ``config.json`` + ``model.safetensors`` of a ``SamModel`` (tiny ViT
image encoder, prompt encoder and mask decoder) and the image processor as
``preprocessor_config.json`` (``SamImageProcessor``, ``processor_class: SamProcessor``), the files
the real checkpoint ships. ``SamModel.from_pretrained(dir)`` and ``SamProcessor.from_pretrained(dir)``
(or the SAM image processor's own ``from_pretrained``) load it exactly like the real checkpoint, so
ReMOVE's real code path runs offline. The encoder takes 256x256 inputs (the real one 1024x1024)
and returns a 16x16 grid of 32-channel features (the real one 64x64x256). Outputs are meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path

# Real checkpoint: ViT-H (hidden 1280, 32 layers, 16 heads, window 14, global attention in layers
# 7/15/23/31), 1024 px input, patch 16 -> 64x64 grid of 256 channels.
IMAGE_SIZE = 256
PATCH_SIZE = 16
CHANNELS = 32  # the encoder's output channels = the prompt encoder's and mask decoder's width
TINY_VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_dim=64,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    window_size=4,
    global_attn_indexes=[1],
    output_channels=CHANNELS,
    num_pos_feats=CHANNELS // 2,
)
TINY_PROMPT_ENCODER = dict(hidden_size=CHANNELS, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, mask_input_channels=4)
TINY_MASK_DECODER = dict(
    hidden_size=CHANNELS, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32,
)
# The processor resizes the longest side to the encoder's input size and pads to a square of it,
# as the real one does with 1024; low-resolution masks are a quarter of that, as in the real one.
TINY_PROCESSOR = dict(
    size={"longest_edge": IMAGE_SIZE},
    pad_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    mask_size={"longest_edge": IMAGE_SIZE // 4},
    mask_pad_size={"height": IMAGE_SIZE // 4, "width": IMAGE_SIZE // 4},
)


def write_tiny_sam(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny model + image processor to ``out_dir``; ``from_pretrained(out_dir)`` loads both."""
    import torch
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = SamConfig(
        vision_config=SamVisionConfig(**TINY_VISION),
        prompt_encoder_config=SamPromptEncoderConfig(**TINY_PROMPT_ENCODER),
        mask_decoder_config=SamMaskDecoderConfig(**TINY_MASK_DECODER),
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    # SAM's vision initializer_range is 1e-10: the random encoder's activations would be ~1e-10 and
    # its features mostly layer-norm epsilon. Fan-in scaled weights give well-conditioned features
    # that vary with the image, as a trained encoder's do.
    with torch.no_grad():
        for param in model.vision_encoder.parameters():
            if param.dim() > 1:
                torch.nn.init.normal_(param, std=param[0].numel() ** -0.5)
    model.save_pretrained(out)
    SamImageProcessorPil(**TINY_PROCESSOR).save_pretrained(out)
    # The real checkpoint's preprocessor_config.json names its processor class (current
    # transformers no longer writes it); AutoProcessor uses it to build a SamProcessor.
    path = out / "preprocessor_config.json"
    data = json.loads(path.read_text())
    data["processor_class"] = "SamProcessor"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out
