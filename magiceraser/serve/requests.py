"""Checking what a client sent, as pure functions: every bad input becomes an :class:`ApiError` (4xx) naming the field.

Nothing here touches Ray, HTTP or a model, so each rule is tested on its own (tests/serve/test_requests.py)
and the service can refuse a request before it costs a replica anything. The HTTP layer only maps
form fields onto :func:`parse_erase_params` and uploads onto :func:`decode_upload` /
:func:`decode_upload_mask`; :func:`check_mask` is the last check before a mask is queued.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magiceraser.class_masks import THING_NAMES, parse_class_names
from magiceraser.imageio import ImageDecodeError, decode_image, decode_mask
from magiceraser.pipelines.erase.settings import EraseSettings, SettingError

__all__ = [
    "ApiError", "EraseParams", "parse_erase_params", "parse_classes", "decode_upload", "decode_upload_mask",
    "check_mask", "THING_NAMES",
]

# Decode failure reason -> HTTP status: too big is 413 (Content Too Large), every other unusable file is 422.
_STATUS_FOR_REASON = {"too_large": 413}


class ApiError(Exception):
    """A request the client must change: HTTP ``status`` (4xx), the offending ``field`` and a one-line message."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def to_json(self) -> dict[str, object]:
        return {"error": self.message, "field": self.field, "status": self.status}

    def __reduce__(self):  # crosses process boundaries (Ray) with its three fields intact
        return (type(self), (self.status, self.field, self.message))


# Form field -> the EraseSettings field it sets (the others have the same name).
SETTING_OF_FIELD = {"steps": "num_inference_steps"}
FIELD_OF_SETTING = {v: k for k, v in SETTING_OF_FIELD.items()}


@dataclass(frozen=True)
class EraseParams:
    """The per-request settings of ``POST /api/erase``; None means "the config's value"."""

    steps: int | None = None
    strength: float | None = None
    seed: int | None = None
    refocus: bool | None = None
    tag: str | None = None
    prompt: str | None = None
    classes: tuple[str, ...] = ()

    def settings(self, base: EraseSettings) -> EraseSettings:
        """``base`` (the config's settings) with the fields this request gave; ApiError 422 naming a bad one."""
        given = {SETTING_OF_FIELD.get(name, name): getattr(self, name)
                 for name in ("steps", "strength", "seed", "refocus", "tag", "prompt") if getattr(self, name) is not None}
        try:
            return base.replace(**given)
        except SettingError as exc:
            raise ApiError(422, FIELD_OF_SETTING.get(exc.field, exc.field), str(exc)) from None


def _blank(value: str | None) -> bool:
    return value is None or value.strip() == ""


def _int(field: str, value: str | None) -> int | None:
    if _blank(value):
        return None
    try:
        return int(value.strip())  # type: ignore[union-attr]
    except ValueError:
        raise ApiError(422, field, f"{field} must be an integer, got {value!r}") from None


def _float(field: str, value: str | None) -> float | None:
    if _blank(value):
        return None
    try:
        out = float(value.strip())  # type: ignore[union-attr]
    except ValueError:
        raise ApiError(422, field, f"{field} must be a number, got {value!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise ApiError(422, field, f"{field} must be a finite number, got {value!r}")
    return out


def _bool(field: str, value: str | None) -> bool | None:
    if _blank(value):
        return None
    text = value.strip().lower()  # type: ignore[union-attr]
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ApiError(422, field, f"{field} must be true or false, got {value!r}")


def _text(field: str, value: str | None, limit: int = 500) -> str | None:
    if value is None:
        return None
    if len(value) > limit:
        raise ApiError(422, field, f"{field} is {len(value)} characters long; at most {limit} are accepted")
    return value


def parse_classes(text: str | None) -> tuple[str, ...]:
    """``classes=`` -> COCO thing class names (:func:`~magiceraser.class_masks.parse_class_names`); ApiError 422."""
    try:
        return parse_class_names(text)
    except ValueError as exc:
        raise ApiError(422, "classes", str(exc)) from None


def parse_erase_params(
    steps: str | None = None,
    strength: str | None = None,
    seed: str | None = None,
    refocus: str | None = None,
    tag: str | None = None,
    prompt: str | None = None,
    classes: str | None = None,
    max_steps: int = 200,
    base: EraseSettings | None = None,
) -> EraseParams:
    """Form fields (text as sent) -> :class:`EraseParams`; ApiError(422) naming the first bad field.

    The values are checked by :class:`EraseSettings` over ``base`` (the service's config; default:
    the eraser's defaults), so a request is refused here by the same rules as a config.
    """
    n_steps = _int("steps", steps)
    if n_steps is not None and n_steps > max_steps:  # the service's own limit; the rest is EraseSettings'
        raise ApiError(422, "steps", f"steps must be in 1..{max_steps}, got {n_steps}")
    tag_text = _text("tag", tag, 100)
    if tag_text is not None and tag_text.strip() == "":
        tag_text = None
    params = EraseParams(
        steps=n_steps, strength=_float("strength", strength), seed=_int("seed", seed), refocus=_bool("refocus", refocus),
        tag=tag_text, prompt=_text("prompt", prompt), classes=parse_classes(classes),
    )
    params.settings(base or EraseSettings())
    return params


def _check_size(field: str, data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise ApiError(413, field, f"{field} is {len(data)} bytes, above the limit of {max_bytes} bytes")


def decode_upload(data: bytes | None, max_pixels: int, max_bytes: int, field: str = "image") -> np.ndarray:
    """An uploaded image -> HxWx3 uint8; ApiError 400 (missing), 413 (too big) or 422 (not a usable image)."""
    if data is None:
        raise ApiError(400, field, f"{field} is missing: send the photo as the multipart file field {field!r}")
    _check_size(field, data, max_bytes)
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise ApiError(_STATUS_FOR_REASON.get(exc.reason, 422), field, f"{field}: {exc}") from None


def decode_upload_mask(data: bytes, max_bytes: int, threshold: int, field: str = "mask") -> np.ndarray:
    """An uploaded mask -> bool HxW (white = erase); ApiError 413 or 422."""
    _check_size(field, data, max_bytes)
    try:
        return decode_mask(data, threshold=threshold)
    except ImageDecodeError as exc:
        raise ApiError(422, field, f"{field}: {exc}") from None


def check_mask(image: np.ndarray, mask: np.ndarray, min_region_area: int = 0) -> None:
    """Refuse a mask of another size than the image, an empty one, or one whose regions are all specks."""
    h, w = image.shape[:2]
    if mask.shape != (h, w):
        raise ApiError(
            422, "mask",
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}: they must have the same size",
        )
    if not mask.any():
        raise ApiError(422, "mask", "the mask is empty: paint the object to erase white on black")
    if min_region_area > 0:
        from magiceraser.pipelines.erase.geometry import drop_small_regions

        kept, dropped = drop_small_regions(mask, min_region_area)
        if not kept.any():
            raise ApiError(
                422, "mask",
                f"every masked region is smaller than min_region_area={min_region_area} px ({dropped.count} region(s)); paint larger strokes",
            )
