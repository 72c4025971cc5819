"""magiceraser: erase objects from photos with a diffusion model taught by the MagicEraser method.

Subpackages:
    datasets     OLRD data engine (segmentation, object shift and blend, captions, WebDataset shards)
    training     prompt tuning of v* and LoRA on SD 1.5 Inpainting (Accelerate, Ray Train, W&B)
    pipelines    the eraser (content initialisation, learned prompt, attention refocus)
    evaluation   the paper's protocol, metrics, baselines and ablations
    tiny_models  random-weight models in the real on-disk formats, for offline tests and the demo

Importing the package is cheap: heavy dependencies are imported where they are used.
"""

__version__ = "0.1.0"
