"""Captioning backends: LLaVA-1.5 describes the background of the ORIGINAL image I (docs/method.md part 1).

The question is :func:`magiceraser.prompts.caption_question` of the sample's background tags
("Describe the grass and gravel in the image."), put in LLaVA-1.5's chat format
"USER: <image>\\n{question} ASSISTANT:". Decoding is greedy, so captions are reproducible.

* :class:`TransformersCaptioner`: ``LlavaForConditionalGeneration`` + ``AutoProcessor``, any device.
* :class:`VllmCaptioner`: vLLM's batched engine on GPUs (``pip install "magiceraser[vllm]"``);
  vllm is imported only when this class is built.
"""

from __future__ import annotations

import numpy as np

from magiceraser.devices import default_dtype, resolve_device

LLAVA_PROMPT = "USER: <image>\n{question} ASSISTANT:"
DEFAULT_LLAVA = "llava-hf/llava-1.5-7b-hf"
"""The LLaVA checkpoint of the paper's captions (and of the evaluation's vision-language judge)."""


def _clean(text: str) -> str:
    return " ".join(text.replace("\x00", "").split())


class TransformersCaptioner:
    """LLaVA through transformers: ``caption(images, questions) -> list[str]``."""

    def __init__(
        self, model: str, device: str = "cpu", dtype: str | None = None, batch_size: int = 8, max_new_tokens: int = 77
    ):
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.model_id = model
        self.device = resolve_device(device)
        self.dtype = default_dtype(self.device, dtype)
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.processor = AutoProcessor.from_pretrained(model)
        # Decoder-only generation in a batch needs left padding.
        self.processor.tokenizer.padding_side = "left"
        self.model = LlavaForConditionalGeneration.from_pretrained(model, dtype=self.dtype).to(self.device).eval()
        self._torch = torch

    def prompt(self, question: str) -> str:
        """The question in the checkpoint's chat template (LLaVA-1.5: 'USER: <image>\\n... ASSISTANT:')."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return LLAVA_PROMPT.format(question=question)

    def caption(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions")
        # Batch prompts of equal token length together: no padding, so a caption does not depend on
        # which other images shared its batch (same input + seed -> same bytes, however Ray batches).
        lengths = [len(self.processor.tokenizer(self.prompt(q))["input_ids"]) for q in questions]
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(n, []).append(i)
        out: list[str] = [""] * len(images)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                for i, text in zip(chunk, self._caption_batch([images[i] for i in chunk], [questions[i] for i in chunk])):
                    out[i] = text
        return out

    def _caption_batch(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        from PIL import Image

        torch = self._torch
        prompts = [self.prompt(q) for q in questions]
        inputs = self.processor(images=[Image.fromarray(im) for im in images], text=prompts, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            generated = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        return [_clean(t) for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


def llava_engine(model: str, key: str, *, dtype: str | None = None, gpu_memory_utilization: float = 0.85,
                 max_model_len: int = 2048, tensor_parallel_size: int = 1, **engine_args):
    """vLLM's offline engine for a LLaVA checkpoint, one image per prompt (captioner and evaluation judge);
    ``key`` names the config setting that chose vLLM, for the error when it is not installed."""
    try:
        from vllm import LLM
    except ImportError as exc:  # the extra is GPU-only and optional
        raise ImportError(f'{key}=vllm needs vLLM: pip install -e ".[vllm]" on a CUDA machine, '
                          f"or use {key}=transformers") from exc
    return LLM(model=model, dtype="auto" if dtype in (None, "auto") else dtype, gpu_memory_utilization=gpu_memory_utilization,
               max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size, limit_mm_per_prompt={"image": 1},
               seed=0, **engine_args)


class VllmCaptioner:
    """LLaVA served by vLLM's offline engine (GPU), batched over the whole Ray batch."""

    def __init__(
        self,
        model: str,
        max_new_tokens: int = 77,
        dtype: str | None = None,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int = 2048,
        tensor_parallel_size: int = 1,
    ):
        self.model_id = model
        self.llm = llava_engine(model, "captioner.backend", dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size)
        from vllm import SamplingParams  # importable: llava_engine got vLLM

        self.sampling = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)

    def caption(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        from PIL import Image

        if len(images) != len(questions):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions")
        requests = [
            {"prompt": LLAVA_PROMPT.format(question=q), "multi_modal_data": {"image": Image.fromarray(im)}}
            for im, q in zip(images, questions)
        ]
        outputs = self.llm.generate(requests, self.sampling, use_tqdm=False)
        return [_clean(o.outputs[0].text) for o in outputs]


def build_captioner(cfg) -> TransformersCaptioner | VllmCaptioner:
    """The captioner a :class:`~magiceraser.datasets.config.CaptionerConfig` names."""
    if cfg.backend == "vllm":
        return VllmCaptioner(
            cfg.model, max_new_tokens=cfg.max_new_tokens, dtype=cfg.dtype,
            gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
        )
    return TransformersCaptioner(
        cfg.model, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens
    )
