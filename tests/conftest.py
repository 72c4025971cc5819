"""Shared fixtures: tiny models are written once per test session, in the real on-disk formats."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


def _tiny(root, name):
    from magiceraser.tiny_models import write_tiny_models

    return write_tiny_models(root, [name])[name]


@pytest.fixture(scope="session")
def tiny_sd(tiny_models_root):
    """Path of a tiny random SD-inpainting pipeline directory (diffusers format)."""
    return _tiny(tiny_models_root, "sd-inpaint")


@pytest.fixture(scope="session")
def tiny_mask2former(tiny_models_root):
    return _tiny(tiny_models_root, "mask2former")


@pytest.fixture(scope="session")
def tiny_llava(tiny_models_root):
    return _tiny(tiny_models_root, "llava")


@pytest.fixture(scope="session")
def tiny_lama(tiny_models_root):
    return _tiny(tiny_models_root, "big-lama")


@pytest.fixture(scope="session")
def s3_server():
    """A local S3 (moto's server on 127.0.0.1, a free port); the AWS variables point at it meanwhile.

    Started before anything else that talks S3 (or a local Ray whose workers inherit the
    variables) so that the standard configuration is all any reader or writer sees.
    """
    from moto_s3 import S3Server

    server = S3Server().start()
    yield server
    server.stop()
