"""The learned placeholder token R*: one trainable vector v* beside a frozen embedding table.

Instead of training the whole CLIP token-embedding table and masking the gradient of every row
but one (the usual textual-inversion script), the table stays frozen and untouched, and
:class:`PlaceholderEmbedding` substitutes v* wherever the placeholder id occurs. Consequences:

* only v* (one row, ``dim`` floats) has a gradient: nothing of the 49408 x 768 table is all-reduced,
  stored in the optimizer, or decayed;
* the text encoder's weights keep their shape and bits (the table is not even resized);
* a batch without the placeholder still gives v* a (zero) gradient through ``torch.where``, so
  every process always reduces the same set of tensors.
"""

from __future__ import annotations

import torch
from torch import nn


class PlaceholderEmbedding(nn.Module):
    """``nn.Embedding`` lookup in a frozen table, with one extra id mapped to a trainable vector."""

    def __init__(self, base: nn.Embedding, token_id: int, init: torch.Tensor):
        super().__init__()
        self.base = base
        self.token_id = int(token_id)
        # v* is kept in fp32 whatever the dtype of the frozen table (mixed-precision training).
        self.vector = nn.Parameter(init.detach().reshape(-1).to(torch.float32).clone())

    @property
    def weight(self) -> torch.Tensor:  # transformers reads .weight for dtype/device
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hit = input_ids == self.token_id
        # Ids beyond the frozen table would index out of range: look up row 0 there, then replace.
        out = self.base(input_ids.masked_fill(hit, 0))
        return torch.where(hit.unsqueeze(-1), self.vector.to(out.dtype), out)


def add_placeholder(tokenizer, text_encoder, token: str, init_word: str) -> PlaceholderEmbedding:
    """Add ``token`` to the tokenizer and install a PlaceholderEmbedding initialised from ``init_word``.

    Raises ValueError when the token already exists or the init word is not a single token.
    """
    if token.replace("-", "").replace("_", "").isalnum():
        raise ValueError(
            f"model.token {token!r} is an ordinary word that captions can contain; use a bracketed token such as <magiceraser-bg>"
        )
    init_ids = tokenizer.encode(init_word, add_special_tokens=False)
    if len(init_ids) != 1:
        raise ValueError(
            f"model.init_word {init_word!r} is {len(init_ids)} tokens for this tokenizer; choose a word that is one token"
        )
    if tokenizer.add_tokens(token) != 1:
        raise ValueError(f"model.token {token!r} is already in the tokenizer; choose a new placeholder token")
    token_id = tokenizer.convert_tokens_to_ids(token)
    embeddings = text_encoder.get_input_embeddings()
    if isinstance(embeddings, PlaceholderEmbedding):
        raise ValueError("the text encoder already has a placeholder embedding installed")
    module = PlaceholderEmbedding(embeddings, token_id, embeddings.weight[init_ids[0]])
    text_encoder.set_input_embeddings(module)
    return module
