"""The refocus processor: self-attention only, t >= 700 only, labels per resolution, LoRA-proof."""

from __future__ import annotations

import numpy as np
import torch

from magiceraser.panoptic import refocus_labels
from magiceraser.pipelines.erase import processor
from magiceraser.pipelines.erase.processor import (
    RefocusAttnProcessor,
    is_refocus_installed,
    labels_at_resolution,
)


def test_labels_at_resolution_max_pools_the_mask(make_pan):
    mask = np.zeros((64, 64), bool)
    mask[10, 17] = True  # one pixel marks its whole 8x8 block
    pan = make_pan((64, 64), (32, 32, 64, 64))  # a person in the bottom-right quarter
    labels = labels_at_resolution(mask, pan, (8, 8))
    expected = np.ones((8, 8), np.uint8)
    expected[4:, 4:] = 2
    expected[1, 2] = 0
    np.testing.assert_array_equal(labels, expected)
    # At full resolution it is refocus_labels itself.
    np.testing.assert_array_equal(labels_at_resolution(mask, pan, (64, 64)), refocus_labels(mask, pan))


def test_processor_active_only_on_self_attention_at_t_ge_700(tiny_pipe, monkeypatch):
    pipe = tiny_pipe
    calls = []
    real = processor.refocused_attention

    def spy(q, k, v, labels, *args, **kw):
        calls.append({"t": pipe.refocus.timestep, "q": tuple(q.shape), "k": tuple(k.shape), "labels": labels.clone()})
        return real(q, k, v, labels, *args, **kw)

    monkeypatch.setattr(processor, "refocused_attention", spy)
    unet_ts = []
    hook = pipe.sd.unet.register_forward_pre_hook(lambda m, args: unet_ts.append(float(args[1])))
    pipe.refocus.trace = []
    try:
        img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), bool)
        mask[20:40, 24:44] = True
        pipe(img, mask, num_inference_steps=10, strength=1.0, mask_dilation=0, crop_margin=1.0)
        trace = pipe.refocus.trace
    finally:
        hook.remove()
        pipe.refocus.trace = None
    n_self = sum(1 for name in pipe.sd.unet.attn_processors if name.endswith("attn1.processor"))
    high = [t for t in unet_ts if t >= 700]
    assert high and len(high) < len(unet_ts)  # the run crosses t = 700
    # Exactly one refocused call per self-attention layer per UNet call with t >= 700 ...
    assert len(calls) == n_self * len(high)
    assert all(c["t"] >= 700 for c in calls)
    # ... on self-attention (keys are the image tokens, not the 77 text tokens), both CFG halves.
    assert all(c["k"][2] == c["q"][2] != 77 and c["q"][0] == 2 for c in calls)
    assert all(torch.equal(c["labels"][0], c["labels"][1]) for c in calls)
    assert any((c["labels"] == 0).any() and (c["labels"] == 1).any() for c in calls)
    # The trace records stock attention for attn2 and for attn1 below 700.
    assert all(e["name"].endswith("attn1.processor") for e in trace)
    assert not any(e["refocus"] for e in trace if e["timestep"] < 700)
    assert any(not e["refocus"] for e in trace)
    # Switched off: never called.
    calls.clear()
    pipe(img, mask, num_inference_steps=10, strength=1.0, refocus=False)
    assert calls == []


def test_processor_survives_lora_loading(tiny_sd, trained_dir):
    from peft.tuners.tuners_utils import BaseTunerLayer

    from magiceraser.pipelines import MagicEraserPipeline

    pipe = MagicEraserPipeline.from_pretrained(tiny_sd, model_size=64)
    assert is_refocus_installed(pipe.sd.unet, pipe.refocus)
    pipe.sd.load_lora_weights(str(trained_dir))  # loaded after the processors were installed
    assert is_refocus_installed(pipe.sd.unet, pipe.refocus)
    attn1 = [m for n, m in pipe.sd.unet.named_modules() if n.endswith("attn1")]
    assert attn1 and all(isinstance(m.to_q, BaseTunerLayer) for m in attn1)
    assert all(isinstance(m.processor, RefocusAttnProcessor) for m in attn1)
    # The processor really goes through the LoRA-wrapped projections: disabling the adapter changes its output.
    attn = attn1[0]
    x = torch.randn(2, 64, attn.to_q.in_features)
    pipe.refocus.set_image(np.ones((64, 64), bool), None)
    pipe.refocus.timestep = 900.0
    with torch.no_grad():
        with_lora = attn(x)
        pipe.sd.unet.disable_adapters()
        without = attn(x)
        pipe.sd.unet.enable_adapters()
    pipe.refocus.clear()
    assert (with_lora - without).abs().max() > 1e-4
