"""Inference pipelines. ``MagicEraserPipeline`` is imported lazily so ``import magiceraser`` stays light."""

from __future__ import annotations

from typing import Any

__all__ = ["MagicEraserPipeline", "MagicEraserOutput"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from magiceraser.pipelines.erase import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
