"""``EraseConfig``: everything ``magiceraser erase`` needs besides the input and output paths.

The per-call settings (prompt, schedule, refocus, seed, region geometry) are
:class:`~magiceraser.pipelines.erase.settings.EraseSettings`, inherited; this class adds the models
and the command's own keys, and gives the command's defaults for the region limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from magiceraser.pipelines.erase.settings import EraseSettings


@dataclass(frozen=True)
class EraseConfig(EraseSettings):
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
    lambda_pos: float = 0.8
    """λ_pos of Eq. 9."""
    lambda_neg: float = 1.0
    """λ_neg of Eq. 9."""
    mask_threshold: int = 128
    """Mask pixels >= this gray value (0..255) are erased."""
    min_region_area: int = 16
    """Mask components of fewer px (before dilation) are left unerased and reported; 0 keeps all (16 here: specks
    would each cost a full diffusion run)."""
    max_regions: int = 8
    """At most this many crops per image; further regions merge into neighbouring crops; 0: no cap (8 here)."""
    output_format: str = "png"
    """Directory mode: results are written as {stem}.{output_format}; png, jpg, jpeg, webp (lossless)
    or tif/tiff (uncompressed). A single-image --out FILE follows its own extension instead."""
    save_inputs: bool | None = None
    """Also save the input image and the mask that was erased (binarised, or built from --classes) as PNG.
    A single image: input.png and mask.png next to result.png. Directory mode: inputs/{stem}.png and
    masks/{stem}.png under --out. null (the default): yes for a single image, no for a directory."""

    def __post_init__(self) -> None:
        super().__post_init__()
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
        if not 0.0 <= self.lambda_pos <= 1.0:
            raise ValueError(f"lambda_pos must be in [0, 1], got {self.lambda_pos}")
        if self.lambda_neg < 0:
            raise ValueError(f"lambda_neg must be >= 0, got {self.lambda_neg}")
        if not 1 <= self.mask_threshold <= 255:
            raise ValueError(f"mask_threshold must be in 1..255, got {self.mask_threshold}")
        from magiceraser.imageio import format_for_suffix

        if format_for_suffix("." + self.output_format) is None:
            raise ValueError(f"output_format must be one of png, jpg, jpeg, webp, tif, tiff; got {self.output_format!r}")
