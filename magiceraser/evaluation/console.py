"""The ``[evaluate]`` progress line every part of the run writes (stdout, flushed: runs last hours)."""

from __future__ import annotations


def log(msg: str) -> None:
    print(f"[evaluate] {msg}", flush=True)
