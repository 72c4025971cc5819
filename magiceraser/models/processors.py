"""Which image processor a checkpoint gets: one rule for every model the project loads.

transformers >= 5.2x falls back to a PIL image processor by itself when torchvision is absent;
5.17 (the GPU machines' stack) raises instead. So where torchvision is missing the PIL class is asked
for directly, and where it is present the checkpoint's Auto class is used.
"""

from __future__ import annotations

import importlib
import importlib.util

__all__ = ["image_processor"]


def image_processor(model: str, pil_class: str):
    """The checkpoint's image processor; ``pil_class`` ("module:Class") is the PIL one to use without torchvision."""
    if importlib.util.find_spec("torchvision") is None:
        module, name = pil_class.split(":")
        return getattr(importlib.import_module(module), name).from_pretrained(model)
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model)
