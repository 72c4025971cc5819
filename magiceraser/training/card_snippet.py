"""The model card's Python snippet: the export loaded with stock diffusers only, one image erased.

Its settings are variables at its top (paths, the base model, steps), so a user edits them and runs it;
the tests substitute them and run it on a tiny export.
"""

from __future__ import annotations

from importlib.metadata import version

from magiceraser.artifacts import EMBEDS_NAME, LORA_WEIGHTS_NAME
from magiceraser.prompts import LEARNED_TEMPLATE

__all__ = ["diffusers_snippet"]


def diffusers_snippet(base_model: str, token: str, resolution: int, guidance: float, base_is_hub_id: bool) -> str:
    """The snippet for an export of ``token`` on ``base_model``, run at ``resolution`` with ``guidance``."""
    # The learned prompt of magiceraser.prompts, as an f-string over the snippet's variables.
    prompt = "f" + repr(LEARNED_TEMPLATE.format(token="{TOKEN}", tag="{BACKGROUND}")) + ".rstrip()"
    base_comment = "" if base_is_hub_id else "  # a local folder, relative to where training ran; or the Hub id it is a copy of"
    diffusers_floor = ".".join(version("diffusers").split(".")[:2])  # the release the export was written with
    return f"""\
# pip install torch "diffusers>={diffusers_floor}" transformers peft safetensors pillow
import torch
from diffusers import StableDiffusionInpaintPipeline
from PIL import Image

IMAGE_PATH = "photo.jpg"  # the photo to erase objects from
MASK_PATH = "mask.png"  # same size as the photo: white where objects are erased
OUTPUT_PATH = "erased.png"
BACKGROUND = "grass"  # what the hole should become, in words ("sky", "brick wall"), or "" for none
BASE_MODEL = {base_model!r}{base_comment}
MAGICERASER_MODEL = "."  # the folder of this card (run from inside it), or the Hub repo it was uploaded to
TOKEN = {token!r}
RESOLUTION = {resolution}  # long side the model runs at (the training resolution)
STEPS = 50
GUIDANCE_SCALE = {guidance}
SEED = 0

device = "cuda" if torch.cuda.is_available() else "cpu"
pipe = StableDiffusionInpaintPipeline.from_pretrained(
    BASE_MODEL, dtype=torch.float16 if device == "cuda" else torch.float32
).to(device)
pipe.load_lora_weights(MAGICERASER_MODEL, weight_name={LORA_WEIGHTS_NAME!r})
pipe.load_textual_inversion(MAGICERASER_MODEL, weight_name={EMBEDS_NAME!r}, token=TOKEN)

PROMPT = {prompt}
image = Image.open(IMAGE_PATH).convert("RGB")
mask = Image.open(MASK_PATH).convert("L").point(lambda v: 255 if v >= 128 else 0)
scale = RESOLUTION / max(image.size)
width, height = (max(8, round(side * scale / 8) * 8) for side in image.size)
result = pipe(
    prompt=PROMPT, image=image, mask_image=mask, width=width, height=height,
    num_inference_steps=STEPS, guidance_scale=GUIDANCE_SCALE,
    generator=torch.Generator().manual_seed(SEED),
).images[0]
# Back to the photo's size; the pixels outside the mask stay the photo's own.
result = Image.composite(result.resize(image.size, Image.LANCZOS), image, mask)
result.save(OUTPUT_PATH)
"""
