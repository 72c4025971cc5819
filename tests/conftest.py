"""Shared fixtures: tiny models are written once per test session, in the real on-disk formats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# `make test` runs two pytest-xdist workers (-n 2 --dist loadgroup) with the scheduler below, which
# hands out whole modules, so a module-scoped fixture (a training run, the GPU acceptance smoke run)
# is computed once, not once per worker, except SERIAL_MODULES: those are one unit, run by one
# worker one test after another in collection order, while the other worker runs the rest. They
# are what only one test at a time may run: a Ray cluster of ours (tests/datasets' shared local
# Ray, the multi-node cluster and `ray start --head` that follow it), the Ray Serve app of
# tests/serve, and the S3 server (a local Ray's workers inherit its variables). A test elsewhere
# that uses one of their fixtures is refused at collection.
# (xdist's own xdist_group marker is not used: its group never reaches the node ids on pytest 9.2.)
SERIAL = "serial"
SERIAL_MODULES = frozenset({
    "tests/datasets/test_olrd_job.py", "tests/datasets/test_olrd_s3.py", "tests/datasets/test_olrd_multinode.py",
    "tests/datasets/test_olrd_job_submit.py", "tests/datasets/test_olrd_lock_s3.py",
    "tests/serve/test_http.py", "tests/serve/test_page.py",
    "tests/test_storage.py", "tests/training/test_object_storage.py",
})
SERIAL_FIXTURES = {"s3_server", "shared_ray"}
SERVE_DIR = Path(__file__).parent / "serve"


def xdist_scope(nodeid: str) -> str:
    """The unit of work a test belongs to: SERIAL or its module."""
    module = nodeid.split("::", 1)[0]
    return SERIAL if module in SERIAL_MODULES else module


def _uses_a_serial_fixture(item) -> bool:
    names = set(item.fixturenames)
    return bool(names & SERIAL_FIXTURES) or ("app" in names and SERVE_DIR in Path(item.path).parents)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        """xdist's loadscope (modules, the largest first) with SERIAL as one unit, handed out first."""

        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            if SERIAL in self.workqueue:
                self.workqueue.move_to_end(SERIAL, last=False)
            super()._assign_work_unit(node)

    return ModuleScheduling(config, log)


# The other worker(s) run at a lower CPU priority: the SERIAL unit is the longest path of the run
# and its Ray jobs, started and timed by the tests, slow down most on two shared cores, while the
# rest is plain CPU work that fills whatever the Ray side leaves idle.
OTHER_WORKER_NICENESS = 10
_first_test_seen = False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    global _first_test_seen
    if _first_test_seen:
        return
    _first_test_seen = True
    # The SERIAL unit is handed out first, so a worker whose first test is not in it never runs it.
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 and xdist_scope(item.nodeid) != SERIAL:
        os.nice(OTHER_WORKER_NICENESS)


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        if _uses_a_serial_fixture(item) and xdist_scope(item.nodeid) != SERIAL:
            raise pytest.UsageError(f"{item.nodeid} starts Ray, Ray Serve or the S3 server: add its module to "
                                    "SERIAL_MODULES in tests/conftest.py")
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
