"""``EraseConfig``: everything ``magiceraser erase`` needs besides the input and output paths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class EraseConfig:
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-inpainting"
    """Base SD 1.5 inpainting model: Hugging Face id or local diffusers directory."""
    trained_dir: str | None = None
    """Trained MagicEraser output (LoRA + v*); null runs the plain base model (baseline)."""
    segmenter: str | None = None
    """Mask2Former COCO-panoptic checkpoint (id or path) for the tag and refocus labels; null: no segmentation."""
    content_init: Literal["telea", "lama", "none"] = "telea"
    """Pixel-space fill before diffusion: OpenCV Telea (no weights), Big-LaMa TorchScript, or none (gray)."""
    lama_path: str | None = None
    """Big-LaMa TorchScript file (big-lama.pt), needed for content_init=lama."""
    telea_radius: int = 5
    """Neighbourhood radius in px of Telea inpainting."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda[:N]'."""
    dtype: str | None = None
    """Model dtype name (float16, float32, bfloat16); null: float16 on CUDA, float32 on CPU."""
    num_threads: int = 0
    """CPU threads for torch in this command (0: torch's default); 1 is fastest for tiny models on a busy machine."""
    model_size: int = 512
    """Long side in px the crop is resized to for the model (multiple of 64)."""
    num_inference_steps: int = 50
    """Scheduler steps T; ⌊T·strength⌋ of them run."""
    strength: float = 0.9
    """Noise level the content-initialised image is started from (docs/method.md, Eq. 3: 0.9)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance weight (<= 1 disables CFG)."""
    refocus: bool = True
    """Apply the semantics-aware attention refocus (false for ablations)."""
    lambda_pos: float = 0.8
    """λ_pos of Eq. 9."""
    lambda_neg: float = 1.0
    """λ_neg of Eq. 9."""
    tag: str | None = None
    """Override the background tag (a COCO stuff name such as grass); null: from segmentation."""
    prompt: str | None = None
    """Override the whole prompt; null: 'A photo of R* {tag}'."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance."""
    mask_dilation: int = 8
    """Pixels the mask is grown by before erasing (covers object edges the mask missed)."""
    crop_margin: float = 0.5
    """Context around each masked region's box, as a fraction of its long side."""
    feather: int = 4
    """Width in px of the soft seam, which lies inside the dilated mask."""
    mask_threshold: int = 128
    """Mask pixels >= this gray value (0..255) are erased."""
    min_region_area: int = 16
    """Mask components (8-connected, counted in the user's mask before dilation) of fewer px are left
    unerased and counted in the report (specks would each cost a full diffusion run); 0 keeps all."""
    max_regions: int = 8
    """At most this many crops per image (each a full diffusion run); further regions are merged into
    neighbouring crops, and the report says how many. 0: no cap."""
    output_format: str = "png"
    """Directory mode: results are written as {stem}.{output_format}; png, jpg, jpeg, webp (lossless)
    or tif/tiff (uncompressed). A single-image --out FILE follows its own extension instead."""
    seed: int = 0
    """Seed of the starting noise."""
    save_inputs: bool | None = None
    """Also save the input image and the mask that was erased (binarised, or built from --classes) as PNG.
    A single image: input.png and mask.png next to result.png. Directory mode: inputs/{stem}.png and
    masks/{stem}.png under --out. null (the default): yes for a single image, no for a directory."""

    def __post_init__(self) -> None:
        if not self.base_model:
            raise ValueError("base_model must be set (an HF id or a local diffusers directory)")
        if self.content_init == "lama" and not self.lama_path:
            raise ValueError("lama_path: content_init=lama needs the Big-LaMa TorchScript file")
        if self.num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {self.num_threads}")
        if self.telea_radius < 1:
            raise ValueError(f"telea_radius must be >= 1, got {self.telea_radius}")
        if self.model_size < 64 or self.model_size % 64:
            raise ValueError(f"model_size must be a positive multiple of 64, got {self.model_size}")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if int(self.num_inference_steps * self.strength) < 1:
            raise ValueError("strength: num_inference_steps × strength must give at least one denoising step")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not 0.0 <= self.lambda_pos <= 1.0:
            raise ValueError(f"lambda_pos must be in [0, 1], got {self.lambda_pos}")
        if self.lambda_neg < 0:
            raise ValueError(f"lambda_neg must be >= 0, got {self.lambda_neg}")
        if self.mask_dilation < 0:
            raise ValueError(f"mask_dilation must be >= 0, got {self.mask_dilation}")
        if self.crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0, got {self.crop_margin}")
        if self.feather < 0:
            raise ValueError(f"feather must be >= 0, got {self.feather}")
        if not 1 <= self.mask_threshold <= 255:
            raise ValueError(f"mask_threshold must be in 1..255, got {self.mask_threshold}")
        if self.min_region_area < 0:
            raise ValueError(f"min_region_area must be >= 0, got {self.min_region_area}")
        if self.max_regions < 0:
            raise ValueError(f"max_regions must be >= 0 (0: no cap), got {self.max_regions}")
        from magiceraser.imageio import format_for_suffix

        if format_for_suffix("." + self.output_format) is None:
            raise ValueError(f"output_format must be one of png, jpg, jpeg, webp, tif, tiff; got {self.output_format!r}")
