"""Fixtures of the eraser tests: a trained output in the artifacts format, a fixed segmenter, one CPU thread."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from magiceraser import coco
from magiceraser.panoptic import PanopticResult, Segment


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: thread barriers under contention cost far more than
    # a second core gains, so run single-threaded (tests only; the library never sets this).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_dir(tiny_sd, tmp_path_factory):
    """A trained output directory written the way the trainer does: stock LoRA + TI files + meta."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from magiceraser.artifacts import EMBEDS_NAME, META_NAME
    from magiceraser.prompts import DEFAULT_TOKEN

    out = tmp_path_factory.mktemp("trained")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(tiny_sd), safety_checker=None, requires_safety_checker=False)
    unet = pipe.unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:  # PEFT initialises B to zero; a trained LoRA is not
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionInpaintPipeline.save_lora_weights(str(out), unet_lora_layers=layers, safe_serialization=True)
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    save_file({DEFAULT_TOKEN: torch.randn(1, dim, generator=gen)}, str(out / EMBEDS_NAME))
    (out / META_NAME).write_text(json.dumps({"token": DEFAULT_TOKEN, "base_model": str(tiny_sd)}))
    return out


def grass_with_object(shape: tuple[int, int], box: tuple[int, int, int, int]) -> PanopticResult:
    """Grass everywhere, a person in ``box`` (x0, y0, x1, y1)."""
    seg = np.ones(shape, np.int32)
    x0, y0, x1, y1 = box
    seg[y0:y1, x0:x1] = 2
    return PanopticResult(seg, [Segment(1, coco.BY_NAME["grass-merged"].label), Segment(2, coco.BY_NAME["person"].label)])


class FixedSegmenter:
    """A PanopticSegmenter that labels every image as grass with a person in the same relative box."""

    model_id = "fixed"

    def __init__(self, rel_box=(0.25, 0.25, 0.75, 0.75)):
        self.rel_box = rel_box
        self.calls = 0

    def segment(self, images):
        self.calls += 1
        out = []
        for img in images:
            h, w = img.shape[:2]
            x0, y0, x1, y1 = self.rel_box
            out.append(grass_with_object((h, w), (int(x0 * w), int(y0 * h), int(x1 * w), int(y1 * h))))
        return out


@pytest.fixture
def fixed_segmenter():
    return FixedSegmenter()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_sd):
    """The plain base model at 64 px (shared; tests must not change its settings)."""
    from magiceraser.pipelines import MagicEraserPipeline

    return MagicEraserPipeline.from_pretrained(tiny_sd, model_size=64)


@pytest.fixture(scope="session")
def trained_pipe(tiny_sd, trained_dir):
    from magiceraser.pipelines import MagicEraserPipeline

    return MagicEraserPipeline.from_pretrained(tiny_sd, trained_dir=trained_dir, model_size=64)


@pytest.fixture
def make_pan():
    return grass_with_object
