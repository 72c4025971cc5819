"""The vision-language success judge as a model: LLaVA (transformers, or vLLM on GPUs) asked whether the
removed object is still in the erased region. The pure parts (the crop, the question's object, P(yes) from
the yes/no logits, the verdict, the answer-token ids) and the defaults are in :mod:`judges`, beside the
detector judge; this module loads the model and runs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from magiceraser.evaluation.judges import (
    DEFAULT_VLM_PROMPT,
    VLM_CONTEXT,
    VLM_FALLBACK_PHRASE,
    VLM_LOGPROBS,
    VLM_THRESHOLD,
    answer_ids,
    class_phrase,
    judge_crop,
    top_logprobs_to_logits,
    vlm_verdict,
    yes_probability,
)

__all__ = ["VlmJudge"]



class VlmJudge:
    """LLaVA's P(yes) to "is there a {object}?" on the erased region; success = P(yes) < threshold.

    ``backend="transformers"``: :class:`~magiceraser.models.captioner.TransformersCaptioner`'s
    loading (AutoProcessor + LlavaForConditionalGeneration, ``device``/``dtype`` resolved the same
    way) and its chat-template prompt; one forward pass per batch, the last position's logits.
    Items are batched only with items of the same processed input length, so nothing is ever
    padded and a P(yes) does not depend on which other items shared its batch.

    ``backend="vllm"`` (GPU, ``pip install "magiceraser[vllm]"``, imported here only): vLLM's
    engine with ``SamplingParams(max_tokens=1, temperature=0, logprobs=VLM_LOGPROBS)``, LLaVA-1.5's
    "USER: <image>\\n... ASSISTANT:" prompt (as :class:`VllmCaptioner`), the yes/no log-probabilities
    of the first generated position (missing ones: :func:`top_logprobs_to_logits`). ``device`` and
    ``batch_size`` do not apply (vLLM places and batches by itself);
    ``gpu_memory_utilization``/``max_model_len`` go to vLLM.
    """

    def __init__(
        self,
        model: str,
        backend: str = "transformers",
        device: str = "cpu",
        dtype: str | None = None,
        prompt: str = DEFAULT_VLM_PROMPT,
        threshold: float = VLM_THRESHOLD,
        context: float = VLM_CONTEXT,
        yes_words: Sequence[str] = ("Yes", "yes"),
        no_words: Sequence[str] = ("No", "no"),
        batch_size: int = 8,
        *,
        fallback: str = VLM_FALLBACK_PHRASE,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 2048,
    ):
        if backend not in ("transformers", "vllm"):
            raise ValueError(f"unknown VLM judge backend {backend!r}; choose transformers or vllm")
        if "{object}" not in prompt:
            raise ValueError(f"the VLM judge prompt must contain '{{object}}', got {prompt!r}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_id, self.backend = model, backend
        self.prompt, self.threshold, self.context, self.batch_size = prompt, threshold, context, batch_size
        self.fallback = fallback
        if backend == "vllm":
            self._init_vllm(model, dtype, gpu_memory_utilization, max_model_len)
        else:
            from magiceraser.models.captioner import TransformersCaptioner

            self._llava = TransformersCaptioner(model, device=device, dtype=dtype, batch_size=batch_size)
            self.device = self._llava.device
        self.yes_ids, self.no_ids = answer_ids(self._tokenizer, self._render(self.question(None)), yes_words, no_words)

    def _init_vllm(self, model: str, dtype: str | None, gpu_memory_utilization: float, max_model_len: int) -> None:
        from magiceraser.models.captioner import llava_engine

        self._llm = llava_engine(model, "metrics.judge_vlm_backend", dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                 max_model_len=max_model_len, max_logprobs=VLM_LOGPROBS)
        from vllm import SamplingParams  # importable: llava_engine got vLLM

        self.device = "cuda"
        self._sampling = SamplingParams(max_tokens=1, temperature=0.0, logprobs=VLM_LOGPROBS)

    # -- prompts -----------------------------------------------------------------------------------

    def question(self, object_class: str | None) -> str:
        return self.prompt.format(object=class_phrase(object_class, self.fallback))

    def _render(self, question: str) -> str:
        if self.backend == "vllm":
            from magiceraser.models.captioner import LLAVA_PROMPT

            return LLAVA_PROMPT.format(question=question)
        return self._llava.prompt(question)

    @property
    def _tokenizer(self):
        return self._llm.get_tokenizer() if self.backend == "vllm" else self._llava.processor.tokenizer

    # -- judging -----------------------------------------------------------------------------------

    def p_yes(self, images: list[np.ndarray], masks: list[np.ndarray], classes: Sequence[str | None]) -> list[float]:
        """P(yes) per erased image (float64 maths on the model's float logits)."""
        if not len(images) == len(masks) == len(classes):
            raise ValueError(f"got {len(images)} images, {len(masks)} masks and {len(classes)} classes")
        crops = [judge_crop(im, m, self.context) for im, m in zip(images, masks)]
        prompts = [self._render(self.question(c)) for c in classes]
        if self.backend == "vllm":
            return self._p_yes_vllm(crops, prompts)
        return self._p_yes_transformers(crops, prompts)

    def __call__(self, image: np.ndarray, mask: np.ndarray, object_class: str | None) -> tuple[bool, float]:
        """(success, P(yes)) of one erased image."""
        p = self.p_yes([image], [mask], [object_class])[0]
        return vlm_verdict(p, self.threshold), p

    def _p_yes_transformers(self, crops: list[np.ndarray], prompts: list[str]) -> list[float]:
        import torch
        from PIL import Image

        processor, model = self._llava.processor, self._llava.model
        # Each item processed alone, then batched with items of the same shapes: no padding.
        items = [
            processor(images=[Image.fromarray(c)], text=[p], return_tensors="pt") for c, p in zip(crops, prompts)
        ]
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(tuple((k, tuple(v.shape)) for k, v in sorted(item.items())), []).append(i)
        yes_ids, no_ids = list(self.yes_ids), list(self.no_ids)
        out: list[float] = [math.nan] * len(items)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                batch = {k: torch.cat([items[i][k] for i in chunk]).to(self.device) for k in items[chunk[0]]}
                batch["pixel_values"] = batch["pixel_values"].to(self._llava.dtype)
                with torch.inference_mode():
                    logits = model(**batch, logits_to_keep=1).logits[:, -1, :]
                logits = logits.to(torch.float64).cpu().numpy()
                for row, i in zip(logits, chunk):
                    out[i] = yes_probability(row[yes_ids], row[no_ids])
        return out

    def _p_yes_vllm(self, crops: list[np.ndarray], prompts: list[str]) -> list[float]:
        from PIL import Image

        requests = [{"prompt": p, "multi_modal_data": {"image": Image.fromarray(c)}} for c, p in zip(crops, prompts)]
        outputs = self._llm.generate(requests, self._sampling, use_tqdm=False)
        out = []
        for o in outputs:
            top = {int(t): float(lp.logprob) for t, lp in o.outputs[0].logprobs[0].items()}
            out.append(yes_probability(top_logprobs_to_logits(top, self.yes_ids), top_logprobs_to_logits(top, self.no_ids)))
        return out
