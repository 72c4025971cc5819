"""``MagicEraserPipeline``: erase masked objects at the input's own resolution (docs/method.md part 3).

Data flow for one call::

    image, mask ─ check ─ dilate ─ regions ─┬─ per region: crop with context ─ resize to model size
                                             │    ├─ panoptic segmentation ─ tag, refocus labels
                                             │    ├─ content init (Telea / Big-LaMa / none) ─ x̃₀
                                             │    ├─ z_T' = √ᾱ_T' E(x̃₀) + √(1−ᾱ_T') ε ; T' = ⌊T·s⌋ steps of the
                                             │    │   9-channel inpainting UNet with CFG, prompt "A photo of R* {tag}",
                                             │    │   attention refocus on self-attention while t ≥ 700
                                             │    └─ decode ─ resize back ─ feathered paste inside the dilated mask
                                             └─ output (input size; bit-identical outside the dilated mask)

Built from stock diffusers components: a ``StableDiffusionInpaintPipeline`` supplies the VAE,
text encoder (with ``load_textual_inversion``), UNet (with ``load_lora_weights``) and scheduler;
this class only owns the steps docs/method.md part 3 changes (content init, start step, refocus,
geometry).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from magiceraser.imageio import MASK_THRESHOLD
from magiceraser.panoptic import PanopticResult, PanopticSegmenter, dilate, dominant_background_tag
from magiceraser.pipelines.erase import geometry
from magiceraser.pipelines.erase.content_init import ContentInitializer, make_content_initializer
from magiceraser.pipelines.erase.settings import EraseSettings, settings_of
from magiceraser.prompts import learned_prompt

__all__ = ["MagicEraserPipeline", "MagicEraserOutput", "RegionResult", "ErasePlan", "prepare_inputs", "choose_prompt"]

MANY_REGIONS = 16  # with no cap on regions (max_regions 0), more crops than this per call draw a warning


@dataclass
class RegionResult:
    """What happened in one crop (one group of masked regions)."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the input image
    model_shape: tuple[int, int]  # (h, w) the crop was erased at
    tag: str | None
    prompt: str


@dataclass
class MagicEraserOutput:
    image: np.ndarray  # HxWx3 uint8, the input's size
    prompt: str  # prompt of the first region
    tag: str | None  # background tag of the first region (None: no segmenter / no stuff around it)
    regions: list[RegionResult] = field(default_factory=list)
    erase_mask: np.ndarray | None = None  # bool HxW, the dilated mask that was regenerated
    dropped_regions: int = 0  # mask components below min_region_area, left unerased
    dropped_pixels: int = 0  # their pixels
    mask_components: int = 0  # connected components of the dilated mask
    merged_for_cap: int = 0  # groups merged into a neighbouring crop to stay within max_regions


@dataclass(frozen=True)
class _DiffusionKey:
    """Settings every crop of one UNet batch must share."""

    steps: int
    strength: float
    guidance_scale: float
    refocus: bool
    negative_prompt: str


@dataclass
class ErasePlan:
    """One checked call of the pipeline, its crops planned, ready for :meth:`MagicEraserPipeline.run`."""

    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # bool HxW, specks below min_region_area removed
    erase: np.ndarray  # the dilated mask that is regenerated
    regions: geometry.RegionPlan
    dropped: geometry.SmallRegions
    tag: str | None
    prompt: str | None
    seed: int
    feather: int
    pan: PanopticResult | None
    diffusion: _DiffusionKey


@dataclass
class _Crop:
    """One diffusion run: a crop of one planned call at the model's size, and what it becomes."""

    item: int  # index of its plan
    seed: int
    box: geometry.Box
    erase: np.ndarray  # crop of the dilated mask part this crop regenerates
    core: np.ndarray  # crop of the user's mask part
    shape: tuple[int, int]
    image: np.ndarray  # model-size crop
    mask: np.ndarray  # model-size erase mask
    pan: PanopticResult | None = None
    tag: str | None = None
    prompt: str = ""
    filled: np.ndarray | None = None
    result: np.ndarray | None = None


def prepare_inputs(image: Any, mask: Any, threshold: int = MASK_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise (image, mask) to (HxWx3 uint8, bool HxW); ValueError saying what to fix.

    Masks: bool arrays are used as they are; numeric/greyscale masks are binarised at ``threshold``
    (a pixel >= 128 of 0..255 is erased), so a 0/1 uint8 mask must be passed as bool or scaled to 0/255.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"mask must be a single-channel HxW array, got shape {mask.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}: "
            "they must have the same size (resize the mask with nearest-neighbour sampling)"
        )
    if mask.dtype != bool:
        mask = mask >= threshold
    if not mask.any():
        raise ValueError(
            f"the mask is empty (no pixel >= {threshold} of 255): nothing to erase; paint the object white on black"
        )
    return np.ascontiguousarray(image), mask


def choose_prompt(token: str | None, tag: str | None, prompt: str | None) -> str:
    """The user's prompt if given; else "A photo of R* {tag}" with a trained token; else the tag words (baseline)."""
    if prompt is not None:
        return prompt
    if token:
        return learned_prompt(token, tag)
    from magiceraser.coco import tag_text

    return tag_text(tag) if tag else ""


class MagicEraserPipeline:
    """Erase the masked objects of an image with (optionally prompt-tuned) SD 1.5 Inpainting."""

    def __init__(
        self,
        sd_pipeline,
        segmenter: PanopticSegmenter | None = None,
        content_init: str | ContentInitializer = "telea",
        lama_path: str | Path | None = None,
        token: str | None = None,
        trained_dir: str | Path | None = None,
        model_size: int = 512,
        lambda_pos: float = 0.8,
        lambda_neg: float = 1.0,
        refocus_t_min: float | None = None,
    ):
        from magiceraser.pipelines.erase.processor import RefocusState, install_refocus

        self.sd = sd_pipeline
        self.segmenter = segmenter
        self.content_init = (
            make_content_initializer(content_init, lama_path, device="cpu") if isinstance(content_init, str) else content_init
        )
        self.content_init_kind = content_init if isinstance(content_init, str) else type(content_init).__name__
        self.token = token
        self.trained_dir = Path(trained_dir) if trained_dir else None
        geometry.model_shape(model_size, model_size, model_size)  # validates the size
        self.model_size = model_size
        t_train = int(self.sd.scheduler.config.num_train_timesteps)
        self.refocus = RefocusState(
            t_min=0.7 * t_train if refocus_t_min is None else refocus_t_min, lambda_pos=lambda_pos, lambda_neg=lambda_neg
        )
        install_refocus(self.sd.unet, self.refocus)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        base_model: str | Path,
        trained_dir: str | Path | None = None,
        segmenter: PanopticSegmenter | None = None,
        content_init: str | ContentInitializer = "telea",
        lama_path: str | Path | None = None,
        device: str = "cpu",
        dtype=None,
        scheduler: str = "ddim",
        **kwargs: Any,
    ) -> MagicEraserPipeline:
        """Load the base inpainting model (HF id or path) plus, if given, a trained output (LoRA + v*).

        The LoRA and v* are loaded with stock ``load_lora_weights`` / ``load_textual_inversion``,
        so anything a user can load into diffusers works here. ``trained_dir=None`` gives the plain
        base model (baseline). ``dtype`` defaults to float16 on CUDA and float32 elsewhere.
        ``scheduler``: "ddim" (default, deterministic, one evaluation per step, built from the
        model's scheduler config) or "model" (the checkpoint's own scheduler).
        """
        from magiceraser.models.stable_diffusion import load_inpaint_pipeline

        sd, token = load_inpaint_pipeline(base_model, trained_dir=trained_dir, device=device, dtype=dtype, scheduler=scheduler)
        if isinstance(content_init, str) and content_init == "lama":
            content_init = make_content_initializer("lama", lama_path, device=str(device))
        return cls(sd, segmenter=segmenter, content_init=content_init, lama_path=lama_path, token=token,
                   trained_dir=trained_dir, **kwargs)

    @property
    def device(self):
        return self.sd.unet.device

    # ------------------------------------------------------------------ call
    def __call__(self, image: Any, mask: Any, *, settings: EraseSettings | None = None, pan: PanopticResult | None = None,
                 **changes: Any) -> MagicEraserOutput:
        """Erase ``mask`` (bool HxW, or 0..255 thresholded at 128) from ``image`` (HxWx3 uint8).

        ``settings`` (default :class:`EraseSettings`'s defaults) with ``changes`` applied: any of
        its fields as a keyword (``strength=0.8``, ``refocus=False``; a ValueError names a bad
        value, a TypeError an unknown name). ``pan``: a full-image panoptic segmentation to use
        instead of the segmenter.
        """
        return self.run([self.plan(image, mask, settings=settings, pan=pan, **changes)])[0]

    def erase_many(self, items: Sequence[dict[str, Any]], max_batch: int = 8) -> list[MagicEraserOutput]:
        """Erase several images in one pass: ``items`` are the keyword arguments of :meth:`__call__`.

        Crops of the same model shape and diffusion settings (steps, strength, guidance, refocus,
        negative prompt) are denoised together, up to ``max_batch`` crops per UNet batch, which is
        what makes serving many requests cheaper than a loop (the per-step cost of a small batch is
        mostly fixed overhead). Each crop keeps its own prompt, seed, mask and refocus labels, so a
        result equals the one-image result up to float rounding of batched kernels.
        """
        return self.run([self.plan(**item) for item in items], max_batch=max_batch)

    def plan(self, image: Any, mask: Any, *, settings: EraseSettings | None = None, pan: PanopticResult | None = None,
             **changes: Any) -> ErasePlan:
        """Check one call's inputs and settings and plan its crops (no model runs); ValueError saying what to fix."""
        s = settings_of(settings or EraseSettings())
        if changes:
            s = s.replace(**changes)
        image, mask = prepare_inputs(image, mask)
        if pan is not None and pan.shape != mask.shape:
            raise ValueError(f"pan has shape {pan.shape}, the image {mask.shape}")
        mask, dropped = geometry.drop_small_regions(mask, s.min_region_area)
        if not mask.any():
            raise ValueError(
                f"every masked region is smaller than min_region_area={s.min_region_area} px "
                f"({dropped.count} region(s), {dropped.pixels} px): nothing left to erase; lower min_region_area"
            )
        erase = dilate(mask, s.mask_dilation)
        regions = geometry.plan_regions(erase, s.crop_margin, max_regions=s.max_regions or None)
        if not s.max_regions and len(regions.crops) > MANY_REGIONS:
            warnings.warn(
                f"the mask has {len(regions.crops)} separate regions, each erased in its own crop (a full diffusion "
                "run): pass max_regions (and min_region_area for specks) to bound the cost", stacklevel=3,
            )
        diffusion = _DiffusionKey(s.num_inference_steps, float(s.strength), float(s.guidance_scale), bool(s.refocus),
                                  s.negative_prompt)
        return ErasePlan(image, mask, erase, regions, dropped, s.tag, s.prompt, s.seed, s.feather, pan, diffusion)

    def run(self, plans: Sequence[ErasePlan], max_batch: int = 8) -> list[MagicEraserOutput]:
        """Erase planned calls, batching compatible crops across them (see :meth:`erase_many`)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        crops = [c for k, plan in enumerate(plans) for c in self._crops(k, plan)]
        self._segment_crops(crops, plans)
        for c in crops:
            plan = plans[c.item]
            c.tag = plan.tag if plan.tag is not None else (dominant_background_tag(c.pan, c.mask) if c.pan is not None else None)
            c.prompt = choose_prompt(self.token, c.tag, plan.prompt)
            c.filled = self.content_init(c.image, c.mask)
        groups: dict[tuple, list[_Crop]] = {}
        for c in crops:  # insertion order: the first call's crops first
            groups.setdefault((c.shape, plans[c.item].diffusion), []).append(c)
        for (_, key), members in groups.items():
            for start in range(0, len(members), max_batch):
                chunk = members[start : start + max_batch]
                for c, out in zip(chunk, self._denoise_batch(chunk, key)):
                    c.result = out
        results = [plan.image.copy() for plan in plans]
        regions: list[list[RegionResult]] = [[] for _ in plans]
        for c in crops:
            plan = plans[c.item]
            out_crop = geometry.resize_image(c.result, (c.box.height, c.box.width))
            alpha = geometry.feather_alpha(c.erase, c.core, plan.feather)
            results[c.item] = geometry.paste(results[c.item], out_crop, c.box, alpha)
            regions[c.item].append(RegionResult((c.box.x0, c.box.y0, c.box.x1, c.box.y1), c.shape, c.tag, c.prompt))
        return [
            MagicEraserOutput(
                image=results[k], prompt=regions[k][0].prompt, tag=regions[k][0].tag, regions=regions[k],
                erase_mask=plan.erase, dropped_regions=plan.dropped.count, dropped_pixels=plan.dropped.pixels,
                mask_components=plan.regions.components, merged_for_cap=plan.regions.merged_for_cap,
            )
            for k, plan in enumerate(plans)
        ]

    def _crops(self, item: int, plan: ErasePlan) -> list[_Crop]:
        """The model-size crops of one planned call (crops never overlap, so each reads the input image)."""
        out = []
        for i, (box, part) in enumerate(plan.regions.crops):
            sl = box.slices()
            shape = geometry.model_shape(box.height, box.width, self.model_size)
            crop_erase = part[sl]
            out.append(_Crop(
                item=item, seed=plan.seed + i, box=box, erase=crop_erase, core=(part & plan.mask)[sl], shape=shape,
                image=geometry.resize_image(plan.image[sl], shape), mask=geometry.resize_mask(crop_erase, shape),
            ))
        return out

    def _segment_crops(self, crops: list[_Crop], plans: Sequence[ErasePlan]) -> None:
        """Panoptic labels per crop: from a given full-image segmentation, else the segmenter, one batch per crop size."""
        import cv2

        pending: dict[tuple[int, int], list[_Crop]] = {}
        for c in crops:
            pan = plans[c.item].pan
            if pan is not None:
                seg = cv2.resize(pan.segment_map[c.box.slices()].astype(np.float32), c.shape[::-1], interpolation=cv2.INTER_NEAREST)
                c.pan = PanopticResult(seg.astype(np.int32), list(pan.segments))
            elif self.segmenter is not None:
                pending.setdefault(c.shape, []).append(c)
        for members in pending.values():  # one size per batch: no padding changes a crop's segmentation
            assert self.segmenter is not None
            for c, pan_m in zip(members, self.segmenter.segment([c.image for c in members])):
                c.pan = pan_m

    # ------------------------------------------------------------------ diffusion
    def start_timesteps(self, num_inference_steps: int, strength: float):
        """Scheduler timesteps actually run: the last ⌊T·s⌋ of T (docs/method.md, Eq. 3)."""
        sched = self.sd.scheduler
        sched.set_timesteps(num_inference_steps, device=self.device)
        n_run = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = num_inference_steps - n_run
        return sched.timesteps[t_start * sched.order :]

    def _denoise_batch(self, crops: list[_Crop], key: _DiffusionKey) -> list[np.ndarray]:
        """Denoise crops of one model shape together; each keeps its prompt, seed, mask and refocus labels."""
        import torch
        import torch.nn.functional as F

        from magiceraser.pipelines.erase.processor import install_refocus, is_refocus_installed

        sd, unet, vae = self.sd, self.sd.unet, self.sd.vae
        device, dtype = unet.device, unet.dtype
        if not is_refocus_installed(unet, self.refocus):  # e.g. a user called set_attn_processor
            install_refocus(unet, self.refocus)
        do_cfg = key.guidance_scale > 1.0
        b = len(crops)
        with torch.inference_mode():
            cond, uncond = sd.encode_prompt([c.prompt for c in crops], device, 1, do_cfg, [key.negative_prompt] * b)
            text = torch.cat([uncond, cond]) if do_cfg else cond

            def to_tensor(arrs: list[np.ndarray]) -> torch.Tensor:
                stacked = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float()
                return (stacked / 127.5 - 1.0).to(device, dtype)

            m = torch.from_numpy(np.stack([c.mask.astype(np.float32) for c in crops]))[:, None]
            sf = vae.config.scaling_factor
            z0 = vae.encode(to_tensor([c.filled for c in crops])).latent_dist.mean * sf
            masked_image = to_tensor([c.image for c in crops]) * (1.0 - m.to(device, dtype))  # 0 (mid-gray) inside the mask
            z_masked = vae.encode(masked_image).latent_dist.mean * sf
            m_lat = F.interpolate(m, size=z0.shape[-2:]).to(device, dtype)  # nearest, as diffusers/trainer
            timesteps = self.start_timesteps(key.steps, key.strength)
            # One generator per crop: a crop's noise depends on its own seed only, not on its batch.
            noise = torch.stack([
                torch.randn(z0.shape[1:], generator=torch.Generator("cpu").manual_seed(c.seed), dtype=torch.float32)
                for c in crops
            ]).to(device, dtype)
            # z_T' = sqrt(ᾱ_T') z̃₀ + sqrt(1 − ᾱ_T') ε (docs/method.md, Eq. 3).
            latents = sd.scheduler.add_noise(z0, noise, timesteps[:1])
            self.refocus.enabled = key.refocus
            self.refocus.set_images([c.mask for c in crops], [c.pan for c in crops])
            try:
                n = 2 if do_cfg else 1
                cond_extra = torch.cat([m_lat, z_masked], dim=1).repeat(n, 1, 1, 1)
                for t in timesteps:
                    self.refocus.timestep = float(t)
                    model_in = sd.scheduler.scale_model_input(torch.cat([latents] * n), t)
                    eps = unet(torch.cat([model_in, cond_extra], dim=1), t, encoder_hidden_states=text).sample
                    if do_cfg:
                        eps_u, eps_c = eps.chunk(2)
                        eps = eps_u + key.guidance_scale * (eps_c - eps_u)
                    latents = sd.scheduler.step(eps, t, latents).prev_sample
            finally:
                self.refocus.clear()
            decoded = vae.decode(latents / sf).sample
        out = ((decoded.float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return list(out)
