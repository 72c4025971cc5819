"""Prompt conventions shared by the data engine, the trainer and the eraser (docs/method.md)."""

from __future__ import annotations

from collections.abc import Sequence

from magiceraser.coco import tag_text

# The placeholder token R*. Lower case (the CLIP tokenizer lower-cases its input before matching
# added tokens), bracketed so it can never occur in a caption, and a single added token that
# stock diffusers' ``load_textual_inversion`` registers unchanged.
DEFAULT_TOKEN = "<magiceraser-bg>"
LEARNED_TEMPLATE = "A photo of {token} {tag}"


def learned_prompt(token: str, tag: str | None) -> str:
    """'A photo of R* {tag}' with the tag in plain words; without a tag, 'A photo of R*'."""
    if not tag:
        return LEARNED_TEMPLATE.format(token=token, tag="").rstrip()
    return LEARNED_TEMPLATE.format(token=token, tag=tag_text(tag))


def join_words(words: Sequence[str]) -> str:
    words = list(words)
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def caption_question(tags: Sequence[str], max_tags: int = 3) -> str:
    """The question put to the VLM: 'Describe the grass and gravel in the image.'"""
    words = [tag_text(t) for t in tags[:max_tags]]
    if not words:
        return "Describe the background of the image."
    return f"Describe the {join_words(words)} in the image."
