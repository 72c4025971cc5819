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


@pytest.fixture(autouse=True)
def no_inherited_wandb_service(monkeypatch):
    """W&B keeps its service's address in this process's environment (WANDB_SERVICE) once a test ran
    it in-process; a training process started later would inherit it and share that service, where a
    killed run's id stays "in use". Every test starts without it."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


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
def tiny_sam(tiny_models_root):
    """A tiny random SamModel + SamProcessor directory (ReMOVE)."""
    return _tiny(tiny_models_root, "sam")


@pytest.fixture(scope="session")
def tiny_dinov2(tiny_models_root):
    """A tiny random Dinov2Model + image processor directory (CFD)."""
    return _tiny(tiny_models_root, "dinov2")


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


class SmallFilesystem:
    """A tmpfs mounted on a folder of the test's, to fill up or make read-only (needs root: CI runs as root)."""

    def __init__(self, path, size: int):
        import subprocess

        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): needs root")

    def _remount(self, options: str) -> None:
        import subprocess

        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)

    def resize(self, size: int) -> None:
        self._remount(f"size={size}")

    def read_only(self) -> None:
        self._remount("ro")

    def writable(self) -> None:
        self._remount("rw")

    def fill(self, leave: int = 0) -> None:
        """Write a filler file until at most ``leave`` bytes are free."""
        import shutil

        free = shutil.disk_usage(self.path).free - leave
        with open(self.path / "filler", "ab") as fh:
            while free > 0:
                try:
                    fh.write(b"\0" * min(free, 1 << 16))
                    fh.flush()
                except OSError:
                    break
                free -= 1 << 16

    def unmount(self) -> None:
        import subprocess

        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def small_filesystem(tmp_path):
    """``make(size_bytes)`` -> a :class:`SmallFilesystem` under ``tmp_path``; unmounted at the end; skipped without root."""
    import os

    made: list[SmallFilesystem] = []

    def make(size: int, name: str = "small-fs") -> SmallFilesystem:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
        fs = SmallFilesystem(tmp_path / name, size)
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.unmount()
