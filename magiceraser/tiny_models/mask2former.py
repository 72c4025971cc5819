"""A random-weight Mask2Former in the on-disk format of facebook/mask2former-swin-large-coco-panoptic.

``write_tiny_mask2former(dir)`` saves ``config.json`` + ``model.safetensors`` of a
``Mask2FormerForUniversalSegmentation`` with a tiny Swin backbone, and the image processor
(``preprocessor_config.json``). The label map is the COCO panoptic one (133 classes in the model's
contiguous order, :func:`magiceraser.coco.id2label`), so the segmentation backend's label handling
(thing/stuff split, stuff fusion) runs exactly as on the real checkpoint. Outputs are meaningless.
"""

from __future__ import annotations

from pathlib import Path

from magiceraser import coco

# Real checkpoint: Swin-L (embed 192, depths 2-2-18-2), hidden 256, 200 queries, 9 decoder layers.
TINY_SWIN = dict(
    image_size=128,
    embed_dim=8,
    depths=[1, 1, 1, 1],
    num_heads=[1, 1, 2, 2],
    window_size=4,
    out_features=["stage1", "stage2", "stage3", "stage4"],
    drop_path_rate=0.0,
)
TINY_MASK2FORMER = dict(
    feature_size=32,
    mask_feature_size=32,
    hidden_dim=32,
    encoder_feedforward_dim=64,
    encoder_layers=1,
    decoder_layers=2,
    num_attention_heads=2,
    dim_feedforward=64,
    num_queries=12,
    common_stride=4,
)
# Images are resized so the short side is 128 px (the real processor uses 384): small and fast on CPU.
TINY_PROCESSOR = dict(size={"shortest_edge": 128, "longest_edge": 256}, size_divisor=32, ignore_index=255)


def write_tiny_mask2former(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny model + image processor to ``out_dir``; ``from_pretrained(out_dir)`` loads both."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = coco.id2label()
    config = Mask2FormerConfig(
        backbone_config=SwinConfig(**TINY_SWIN),
        id2label=labels,
        label2id={name: i for i, name in labels.items()},
        **TINY_MASK2FORMER,
    )
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    model.save_pretrained(out)
    Mask2FormerImageProcessorPil(**TINY_PROCESSOR).save_pretrained(out)
    return out
