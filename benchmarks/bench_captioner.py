"""Captions/s of the data engine's transformers captioner with a LLaVA-1.5-7B-shaped model (random weights).

llava-hf/llava-1.5-7b-hf's architecture (CLIP ViT-L/14-336 + Llama-2-7B), fp16, built on the
device and handed to ``TransformersCaptioner`` in memory (14 GB written and read back would cost
more than the measurement); everything else (processor, prompt, batching, generate, decoding) is
the captioner's own. The vLLM backend is not measured here. No goal: the figure sizes the caption
stage. :func:`measure_captioner` is what gpu_acceptance.py's ``llava`` section runs.

    python benchmarks/bench_captioner.py                  # on a CUDA GPU: 7B shape, batch 1 and 32
    python benchmarks/bench_captioner.py --tiny           # CPU smoke run of the same code (tiny model)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import built_on, default_device, is_cuda, peak_text, print_row, reset_peak, sync


def llava_config(full: bool, tokenizer):
    """llava-hf/llava-1.5-7b-hf's architecture (CLIP ViT-L/14-336 + Llama-2-7B) or the tiny test model's."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from magiceraser.tiny_models.llava import TINY_TEXT, TINY_VISION

    if full:
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
        text_kw: dict[str, Any] = dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                                       rms_norm_eps=1e-5)
    else:
        vision, text_kw = CLIPVisionConfig(**TINY_VISION), dict(TINY_TEXT, vocab_size=len(tokenizer))
    text = LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **text_kw)
    patches = (vision.image_size // vision.patch_size) ** 2
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                       image_seq_length=patches, vision_feature_select_strategy="default", vision_feature_layer=-2)


def write_llava_processor(out: Path, image_size: int, patch_size: int, tokenizer) -> None:
    """LLaVA-1.5's processor (CLIP image processor, tokenizer with <image>, chat template) on disk."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from magiceraser.tiny_models.llava import CHAT_TEMPLATE

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=CHAT_TEMPLATE).save_pretrained(out)


def measure_captioner(device: str, full: bool, max_new_tokens: int, runs: list[tuple[int, int]], report) -> None:
    """Build the model and the captioner, then caption ``count`` random 512×384 images at each
    ``(batch_size, count)`` of ``runs`` (after a one-image warm-up). ``report(what, value)`` gets
    one line per figure, as it is measured."""
    from unittest import mock

    import numpy as np
    import torch
    from transformers import LlavaForConditionalGeneration

    from magiceraser.models.captioner import TransformersCaptioner
    from magiceraser.tiny_models.llava import CHAT_TEMPLATE, _train_tokenizer

    dtype = torch.float16 if is_cuda(device) else torch.float32
    t0 = time.perf_counter()
    tokenizer = _train_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = llava_config(full, tokenizer)
    with built_on(device, dtype):
        model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    reset_peak(device)
    with tempfile.TemporaryDirectory(prefix="bench-captioner-") as tmp:
        write_llava_processor(Path(tmp), config.vision_config.image_size, config.vision_config.patch_size, tokenizer)
        with mock.patch.object(LlavaForConditionalGeneration, "from_pretrained", lambda *a, **kw: model):
            captioner = TransformersCaptioner(tmp, device=device, max_new_tokens=max_new_tokens)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    report("build LLaVA-1.5" + ("-7B shape, random weights" if full else " (tiny)"),
           f"{time.perf_counter() - t0:.1f} s, {params:.2f} B parameters, {dtype}".replace("torch.", ""))
    rng = np.random.default_rng(0)
    question = "Describe the grass and gravel in the image."
    for batch_size, count in runs:
        captioner.batch_size = batch_size
        images = [rng.integers(0, 255, (384, 512, 3), dtype=np.uint8) for _ in range(count)]
        captioner.caption(images[:1], [question])  # warm-up
        sync(device)
        t1 = time.perf_counter()
        captions = captioner.caption(images, [question] * count)
        sync(device)
        rate = count / (time.perf_counter() - t1)
        report(f"transformers backend, batch {batch_size}, {max_new_tokens} new tokens max",
               f"{rate:.2f} captions/s ({len(captions)} captions), peak {peak_text(device)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny test model on CPU (checks the script runs)")
    args = parser.parse_args()
    device = default_device(args.tiny)
    full = device == "cuda"
    runs = [(1, 3), (32, 32)] if full else [(1, 1), (2, 2)]
    measure_captioner(device, full, 77 if full else 3, runs, print_row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
