"""A small CLIP tokenizer (vocab.json + merges.txt in CLIP's exact format), learned in code.

The real CLIP vocabulary cannot be downloaded here; this builds one with the same structure
(256 byte symbols, the same symbols with the ``</w>`` end-of-word suffix, learned BPE merges, the
``<|startoftext|>``/``<|endoftext|>`` specials last) from a word list covering prompts, captions and
the COCO class names, so ``CLIPTokenizer.from_pretrained`` loads it and words tokenize to few ids.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from magiceraser.coco import COCO_PANOPTIC, tag_text

_CORPUS = """
a an the of in on at with and or to from by for is are was were there this that it its photo picture image
describe background scene view shows showing surrounded covered green blue grey gray white black brown red
yellow dark light bright large small tall wide long open clear cloudy sunny day night sky grass gravel road
path field tree trees forest mountain hill rock stone sand beach sea water river lake snow wall floor ceiling
building house roof window door street sidewalk pavement dirt ground fence bridge stairs rug carpet brick wood
tile texture pattern surface area behind front left right top bottom middle center some many few several
"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode mapping."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _word_counts() -> Counter[str]:
    words: Counter[str] = Counter()
    text = _CORPUS + " ".join(c.name + " " + tag_text(c.name) for c in COCO_PANOPTIC)
    for w in re.findall(r"[a-z]+", text.lower()):
        words[w] += 1
    return words


def learn_merges(num_merges: int = 600) -> tuple[list[str], list[tuple[str, str]]]:
    """Learn BPE merges over the corpus; deterministic (ties broken by the pair's text)."""
    byte_map = _bytes_to_unicode()
    base = [byte_map[b] for b in range(256)]
    vocab_tokens = base + [s + "</w>" for s in base]
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in _word_counts().items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        vocab_tokens.append(best[0] + best[1])
        new_words = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words[tuple(out)] = count
        words = new_words
    return vocab_tokens, merges


def write_clip_tokenizer(out_dir: str | Path, num_merges: int = 600) -> int:
    """Write vocab.json, merges.txt and the tokenizer configs; return the vocabulary size."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens, merges = learn_merges(num_merges)
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        )
    )
    return len(vocab)
