"""Every model the project loads, in one place; the data engine, trainer, eraser, evaluation and
service import them from here.

* :mod:`~magiceraser.models.segmenter`: Mask2Former panoptic segmentation (``Mask2FormerSegmenter``).
* :mod:`~magiceraser.models.captioner`: LLaVA-1.5 captions through transformers or vLLM.
* :mod:`~magiceraser.models.stable_diffusion`: SD 1.5 Inpainting for training (its components)
  and for erasing (the stock pipeline with a trained LoRA and v*).
* :mod:`~magiceraser.models.lama`: Big-LaMa TorchScript, the learned content initialiser.

Heavy libraries (transformers, diffusers, vllm) are imported inside the functions, so importing
this package needs neither a GPU nor those libraries.
"""
