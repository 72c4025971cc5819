"""The UNet attention processor that applies the attention refocus (docs/method.md, "Attention refocus").

Where: self-attention (``attn1``) of the UNet only; cross-attention keeps diffusers' stock
processor. When: only while the scheduler timestep t ≥ ``t_min`` (0.7 · 1000). Labels: built once
per image at the pixel resolution the UNet sees, then per attention resolution on demand (mask by
max-pool, panoptic classes by nearest-neighbour sampling, then
:func:`magiceraser.panoptic.refocus_labels`), the same for both halves of a CFG batch. A batch of
several crops (``MagicEraserPipeline.erase_many``) sets one (mask, segmentation) per crop with
:meth:`RefocusState.set_images`; each batch element then gets its own crop's labels.

One :class:`RefocusState` is shared by every processor of a UNet; the pipeline sets the image
labels and the current timestep on it. Processors call ``attn.to_q`` / ``to_k`` / ``to_v`` /
``to_out`` through the module, so PEFT's LoRA wrappers around them (``load_lora_weights``) are
used whether the adapters were loaded before or after the processors were installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from magiceraser.panoptic import PanopticResult, refocus_labels
from magiceraser.pipelines.erase.refocus import refocused_attention

__all__ = ["RefocusState", "RefocusAttnProcessor", "install_refocus", "labels_at_resolution", "is_refocus_installed"]


def labels_at_resolution(mask: np.ndarray, pan: PanopticResult | None, size: tuple[int, int]) -> np.ndarray:
    """Refocus labels (uint8, ``size`` = (h, w)) of a pixel mask + segmentation at a coarser resolution.

    A token is "mask" if any pixel of its area is masked (adaptive max-pool of the mask, which also
    covers sizes that do not divide evenly); its class is the segment at the area's centre.
    """
    h, w = size
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    small_mask = torch.nn.functional.adaptive_max_pool2d(m, (h, w))[0, 0].numpy() > 0
    small_pan = None
    if pan is not None:
        import cv2

        seg = cv2.resize(pan.segment_map.astype(np.int32).astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST)
        small_pan = PanopticResult(seg.astype(np.int32), list(pan.segments))
    return refocus_labels(small_mask, small_pan)


@dataclass
class RefocusState:
    """What every refocus processor of one UNet reads: labels, current timestep, switches."""

    enabled: bool = True
    t_min: float = 700.0
    lambda_pos: float = 0.8
    lambda_neg: float = 1.0
    chunk_size: int | None = None
    timestep: float | None = None
    mask: np.ndarray | None = None  # bool (H, W) at the UNet's pixel resolution (first image of a batch)
    pan: PanopticResult | None = None
    trace: list[dict[str, Any]] | None = None  # set to a list to record every self-attention call
    _images: list[tuple[np.ndarray, PanopticResult | None]] = field(default_factory=list)
    _cache: dict[int, torch.Tensor] = field(default_factory=dict)

    def set_image(self, mask: np.ndarray, pan: PanopticResult | None) -> None:
        self.set_images([mask], [pan])

    def set_images(self, masks: list[np.ndarray], pans: list[PanopticResult | None]) -> None:
        """One (mask, segmentation) per image of the UNet batch (all of one pixel size)."""
        if not masks or len(masks) != len(pans):
            raise ValueError(f"set_images needs one segmentation (or None) per mask, got {len(masks)} and {len(pans)}")
        for mask, pan in zip(masks, pans):
            if pan is not None and pan.shape != mask.shape:
                raise ValueError(f"segmentation shape {pan.shape} differs from mask shape {mask.shape}")
            if mask.shape != masks[0].shape:
                raise ValueError(f"every image of a batch must have one size, got {mask.shape} and {masks[0].shape}")
        self._images = [(m.astype(bool), p) for m, p in zip(masks, pans)]
        self.mask, self.pan, self._cache = self._images[0][0], self._images[0][1], {}

    def clear(self) -> None:
        self.mask, self.pan, self.timestep, self._images, self._cache = None, None, None, [], {}

    def active(self) -> bool:
        return self.enabled and self.mask is not None and self.timestep is not None and self.timestep >= self.t_min

    def labels_for(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        """(N,) long labels of the first image for an attention layer with ``n_tokens`` tokens."""
        return self.batch_labels(n_tokens, device)[0]

    def batch_labels(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        """(images, N) long labels for an attention layer with ``n_tokens`` tokens (cached per resolution)."""
        if n_tokens not in self._cache:
            assert self.mask is not None
            h, w = self.mask.shape
            # UNet levels: the latent (1/8 of the pixels), then stride-2 steps with ceil rounding.
            lh, lw = -(-h // 8), -(-w // 8)
            while lh * lw > n_tokens and (lh > 1 or lw > 1):
                lh, lw = -(-lh // 2), -(-lw // 2)
            if lh * lw != n_tokens:
                raise ValueError(f"no UNet resolution of a {h}x{w} image has {n_tokens} tokens")
            labels = np.stack([labels_at_resolution(m, p, (lh, lw)).reshape(-1) for m, p in self._images])
            self._cache[n_tokens] = torch.from_numpy(labels.astype(np.int64))
        return self._cache[n_tokens].to(device)


class RefocusAttnProcessor:
    """Self-attention with the refocus of Eq. 5-9 while the state is active; stock SDPA otherwise."""

    def __init__(self, state: RefocusState, name: str = ""):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.state = state
        self.name = name
        self.stock = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        state = self.state
        use = encoder_hidden_states is None and attention_mask is None and state.active()
        if state.trace is not None:
            state.trace.append({"name": self.name, "timestep": state.timestep, "refocus": use,
                                "cross": encoder_hidden_states is not None})
        if not use:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, n_tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # Each image's own labels; a CFG batch holds the images twice (unconditional half first),
        # and both halves of an image see the same labels.
        labels = state.batch_labels(n_tokens, query.device)
        if labels.shape[0] != batch:
            if batch % labels.shape[0]:
                raise ValueError(f"UNet batch of {batch} for {labels.shape[0]} refocus images")
            labels = labels.repeat(batch // labels.shape[0], 1)
        hidden_states = refocused_attention(
            query, key, value, labels, state.lambda_pos, state.lambda_neg, chunk_size=state.chunk_size
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def is_refocus_installed(unet, state: RefocusState) -> bool:
    """True when every self-attention of ``unet`` has a refocus processor bound to ``state``."""
    procs = unet.attn_processors
    selfs = [p for name, p in procs.items() if name.endswith("attn1.processor")]
    return bool(selfs) and all(isinstance(p, RefocusAttnProcessor) and p.state is state for p in selfs)


def install_refocus(unet, state: RefocusState) -> int:
    """Put refocus processors on every self-attention (attn1), stock SDPA on the rest; returns the count."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    procs: dict[str, Any] = {}
    count = 0
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            procs[name] = RefocusAttnProcessor(state, name)
            count += 1
        else:
            procs[name] = AttnProcessor2_0()
    if count == 0:
        raise ValueError("the UNet has no self-attention (attn1) layers to refocus")
    unet.set_attn_processor(procs)
    return count
