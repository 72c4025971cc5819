"""``EraseSettings``: the per-call settings of the eraser, defined once.

What one erase call may change without reloading a model: the prompt, the diffusion schedule,
the refocus switch, the seed and the geometry of the regenerated region. The pipeline's
``__call__``/``plan`` take them (as an ``EraseSettings`` or as keywords that replace fields of
it), ``EraseConfig`` (``magiceraser erase`` and the service's config) inherits them, the
service's request parsing builds them from form fields over the config's, and the evaluation's
methods build them from their rows. Every check of a value lives in :meth:`EraseSettings.__post_init__`
and raises :class:`SettingError`, which names the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["EraseSettings", "SettingError", "settings_of"]


class SettingError(ValueError):
    """A per-call setting out of its range; ``field`` names it (the service answers 422 for that field)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # crosses process boundaries (Ray) with its field
        return (type(self), (self.field, str(self)))


@dataclass(frozen=True)
class EraseSettings:
    tag: str | None = None
    """Override the background tag (a COCO stuff name such as grass); null: from segmentation."""
    prompt: str | None = None
    """Override the whole prompt; null: 'A photo of R* {tag}'."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance."""
    num_inference_steps: int = 50
    """Scheduler steps T; ⌊T·strength⌋ of them run."""
    strength: float = 0.9
    """Noise level the content-initialised image is started from (docs/method.md, Eq. 3: 0.9)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance weight (<= 1 disables CFG)."""
    refocus: bool = True
    """Apply the semantics-aware attention refocus (false for ablations)."""
    seed: int = 0
    """Seed of the starting noise (drawn on the CPU, so results match across devices)."""
    mask_dilation: int = 8
    """Pixels the mask is grown by before erasing (covers object edges the mask missed)."""
    crop_margin: float = 0.5
    """Context around each masked region's box, as a fraction of its long side."""
    feather: int = 4
    """Width in px of the soft seam, which lies inside the dilated mask."""
    min_region_area: int = 0
    """Mask components (8-connected, counted in the user's mask before dilation) of fewer px are left
    unerased and counted in the report (specks would each cost a full diffusion run); 0 keeps all."""
    max_regions: int = 0
    """At most this many crops per image (each a full diffusion run); further regions are merged into
    neighbouring crops, and the report says how many. 0: no cap."""

    def __post_init__(self) -> None:
        def refuse(field: str, message: str) -> None:
            raise SettingError(field, message)

        if self.max_regions is None:  # the pipeline's keyword once spelled "no cap" as None
            object.__setattr__(self, "max_regions", 0)

        if self.num_inference_steps < 1:
            refuse("num_inference_steps", f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 0.0 < self.strength <= 1.0:
            refuse("strength", f"strength must be in (0, 1], got {self.strength}")
        if int(self.num_inference_steps * self.strength) < 1:
            refuse("strength", f"num_inference_steps × strength must give at least one denoising step, got "
                               f"{self.num_inference_steps} × {self.strength}")
        if self.guidance_scale < 0:
            refuse("guidance_scale", f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not 0 <= self.seed < 2**63:
            refuse("seed", f"seed must be in 0..2^63-1, got {self.seed}")
        for name in ("mask_dilation", "feather", "crop_margin", "min_region_area"):
            if getattr(self, name) < 0:
                refuse(name, f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_regions < 0:
            refuse("max_regions", f"max_regions must be >= 0 (0: no cap), got {self.max_regions}")

    def replace(self, **changes: Any) -> EraseSettings:
        """These settings with ``changes`` (field names) applied and checked; a TypeError names an unknown field."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(EraseSettings)})
        if unknown:
            raise TypeError(f"not an erase setting: {', '.join(unknown)} (see EraseSettings)")
        return dataclasses.replace(settings_of(self), **changes)


def settings_of(obj: Any) -> EraseSettings:
    """The :class:`EraseSettings` part of ``obj`` (an ``EraseConfig``, a ``ServeConfig`` or settings)."""
    if type(obj) is EraseSettings:
        return obj
    return EraseSettings(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(EraseSettings)})
