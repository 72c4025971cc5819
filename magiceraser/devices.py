"""The one device resolver: ``auto`` means CUDA when a GPU is visible, else the CPU.

Every component config has a ``device`` field (``auto``, ``cpu``, ``cuda`` or ``cuda:N``); every
loader resolves it here, so ``auto`` means the same everywhere and asking for a GPU that is not
there is one clear user error instead of a CUDA traceback minutes later.
"""

from __future__ import annotations

from magiceraser.errors import UserError


def resolve_device(device: str, key: str = "device") -> str:
    """``auto`` -> ``cuda`` or ``cpu``; ``cuda[:N]`` checked to exist (UserError naming ``key``)."""
    import torch

    if device in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{key}={device} but no CUDA device is visible; use {key}=auto or {key}=cpu")
    return device


def default_dtype(device: str, dtype: str | None = None):
    """The torch dtype for ``dtype`` (a name, or None/auto: float16 on CUDA, float32 elsewhere)."""
    import torch

    if dtype in (None, "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)
