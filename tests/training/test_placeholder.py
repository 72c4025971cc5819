"""v* as a separate one-row parameter: only it gets a gradient, the frozen table stays untouched."""

from __future__ import annotations

import pytest
import torch

from magiceraser.prompts import DEFAULT_TOKEN, learned_prompt
from magiceraser.tiny_models.sd_inpaint import build_sd_inpaint
from magiceraser.training.placeholder import PlaceholderEmbedding, add_placeholder

pytestmark = pytest.mark.numeric


@pytest.fixture()
def parts():
    p = build_sd_inpaint(full=False, seed=0)
    p["text_encoder"].requires_grad_(False)
    return p


def test_only_v_star_gets_a_gradient_and_lookup_is_unchanged_elsewhere(parts):
    tok, te = parts["tokenizer"], parts["text_encoder"]
    table = te.get_input_embeddings().weight.detach().clone()
    module = add_placeholder(tok, te, DEFAULT_TOKEN, "background")
    assert isinstance(te.get_input_embeddings(), PlaceholderEmbedding)
    assert te.get_input_embeddings().weight.shape == table.shape  # table neither resized nor copied
    init_id = tok.encode("background", add_special_tokens=False)[0]
    assert torch.equal(module.vector, table[init_id])
    ids = tok([learned_prompt(DEFAULT_TOKEN, "grass"), "a lawn"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    hit = ids == module.token_id
    assert hit[0].sum() == 1 and not hit[1].any()
    emb = module(ids)
    torch.testing.assert_close(emb[~hit], table[ids[~hit]])
    torch.testing.assert_close(emb[hit][0], module.vector)
    te(ids)[0].pow(2).mean().backward()
    grads = {n: p.grad for n, p in te.named_parameters() if p.grad is not None}
    assert list(grads) == ["embeddings.token_embedding.vector"]
    assert grads["embeddings.token_embedding.vector"].abs().sum() > 0


def test_batch_without_the_token_gives_zero_gradient_not_none(parts):
    tok, te = parts["tokenizer"], parts["text_encoder"]
    module = add_placeholder(tok, te, DEFAULT_TOKEN, "background")
    ids = tok(["a lawn"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    te(ids)[0].sum().backward()
    assert module.vector.grad is not None and torch.count_nonzero(module.vector.grad) == 0


def test_bad_token_or_init_word_is_rejected(parts):
    tok, te = parts["tokenizer"], parts["text_encoder"]
    with pytest.raises(ValueError, match="init_word"):
        add_placeholder(tok, te, DEFAULT_TOKEN, "backgroundgrassgravel")
    with pytest.raises(ValueError, match="ordinary word"):
        add_placeholder(tok, te, "grass", "background")
    tok.add_tokens("<taken>")
    with pytest.raises(ValueError, match="already in the tokenizer"):
        add_placeholder(tok, te, "<taken>", "background")
