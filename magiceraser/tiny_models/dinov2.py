"""A random-weight DINOv2 in the on-disk format of facebook/dinov2-giant (the CFD metric's backbone).

``write_tiny_dinov2(dir)`` saves ``config.json`` + ``model.safetensors`` of a ``Dinov2Model`` and the
checkpoint's image processor (``preprocessor_config.json``: ``BitImageProcessor``, resize the short
side to 256 bicubic, center crop 224, ImageNet mean/std), so ``AutoModel.from_pretrained(dir)`` and
``AutoImageProcessor.from_pretrained(dir)`` load it exactly as they load the real checkpoint.

The architecture keeps the giant's kind of block (SwiGLU feed-forward, layer scale 1.0, patch 14)
and its position-embedding grid (image size 518, 37x37 positions), so a 224x224 input runs the same
position-embedding interpolation to a 16x16 patch grid as the real model. Only the width and depth
are tiny. Outputs are meaningless.
"""

from __future__ import annotations

from pathlib import Path

# Real checkpoint: hidden 1536, 40 layers, 24 heads, SwiGLU FFN, image size 518, patch 14.
TINY_DINOV2 = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_ratio=4,
    use_swiglu_ffn=True,
    layerscale_value=1.0,
    layer_norm_eps=1e-6,
    image_size=518,
    patch_size=14,
    qkv_bias=True,
)
# facebook/dinov2-giant's preprocessor_config.json.
DINOV2_PROCESSOR = dict(
    size={"shortest_edge": 256},
    crop_size={"height": 224, "width": 224},
    resample=3,  # bicubic
    image_mean=[0.485, 0.456, 0.406],
    image_std=[0.229, 0.224, 0.225],
    do_resize=True,
    do_center_crop=True,
    do_rescale=True,
    do_normalize=True,
    do_convert_rgb=True,
)


def write_tiny_dinov2(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny model + image processor to ``out_dir``; ``from_pretrained(out_dir)`` loads both."""
    import torch
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**TINY_DINOV2)).eval()
    model.save_pretrained(out)
    # Saved as "image_processor_type": "BitImageProcessor", the class name the real file carries.
    BitImageProcessorPil(**DINOV2_PROCESSOR).save_pretrained(out)
    return out
