"""Fixtures of the service tests: demo-sized models, a segmenter that finds objects, one Ray Serve app per module.

The tiny random Mask2Former finds no segment at the default thresholds, so ``thing_segmenter``
writes a copy whose class head answers "person" or "grass" depending on one query feature (about
half of the queries each): its segmentations hold several person instances and one fused grass
segment, which is what selecting by class and by click needs. It runs with the service's
``serve.segment_*_threshold`` keys at 0 (transformers' post-processing, thresholds only).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import write_thing_segmenter


@pytest.fixture(scope="session")
def thing_segmenter(tiny_mask2former, tmp_path_factory) -> Path:
    return write_thing_segmenter(tiny_mask2former, tmp_path_factory.mktemp("thing-segmenter"))
