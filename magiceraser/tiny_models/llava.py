"""A random-weight LLaVA-1.5 in the on-disk format of llava-hf/llava-1.5-7b-hf.

``write_tiny_llava(dir)`` saves a ``LlavaForConditionalGeneration`` (tiny CLIP vision tower + tiny
Llama language model + the 2-layer GELU projector) and a ``LlavaProcessor`` (CLIP image processor,
a byte-level BPE tokenizer with the ``<image>`` token, and LLaVA-1.5's "USER: <image>\\n... ASSISTANT:"
chat template). ``LlavaForConditionalGeneration.from_pretrained(dir)`` and
``AutoProcessor.from_pretrained(dir)`` load it exactly like the real checkpoint and ``generate``
returns (random) text, so the captioning backend's real code path runs offline.
"""

from __future__ import annotations

from pathlib import Path

from magiceraser.coco import COCO_PANOPTIC, tag_text

# llava-hf/llava-1.5-7b-hf's chat template (the processor's ``apply_chat_template`` renders it).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_CORPUS_WORDS = """
user assistant describe the in image background photo picture scene there is a an of and with on at
sky grass gravel road field tree mountain rock sand sea water river snow wall floor building house fence
green blue grey white brown dark light bright cloudy sunny large small covered surrounded shows view
visible object
"""
# The answers of the evaluation's yes/no judge, frequent enough to become whole tokens (" Yes", " No") as
# in LLaVA's real vocabulary, so the judge's yes and no tokens differ on the tiny model too.
_ANSWERS = "Yes No yes no " * 8

TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    image_size=32, patch_size=8, projection_dim=32,
)
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, max_position_embeddings=256,
)


def _train_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer with Llama's specials and LLaVA's ``<image>`` token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    words = _CORPUS_WORDS.split() + [tag_text(c.name) for c in COCO_PANOPTIC]
    corpus = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)] * 4 + [_ANSWERS] * 8
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        padding_side="left",  # batched generation with a decoder-only LM pads on the left
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def write_tiny_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny model + processor to ``out_dir``; both load with ``from_pretrained(out_dir)``."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(**TINY_VISION)
    text = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TINY_TEXT,
    )
    patches = (vision.image_size // vision.patch_size) ** 2  # 'default' strategy drops CLS: one token per patch
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id, image_seq_length=patches,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": vision.image_size}, crop_size={"height": vision.image_size, "width": vision.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out
