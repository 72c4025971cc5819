"""What the OLRD job tests share: one in-process local Ray, one job config, one uninterrupted run.

A local Ray costs 10-30 s to start on the shared 2-core machine, and the uninterrupted run of the
job config is the reference of four modules (test_olrd_job, test_olrd_s3, test_olrd_job_submit,
and its Ray is the single-node one test_olrd_multinode's reference runs on). So:

* ``shared_ray`` is one local Ray (2 CPUs) in this process, started after the S3 server so
  that its workers inherit the AWS variables. Fixtures and tests that need it call ``up()``
  (``local_ray`` does, for a test); it is stopped as soon as the next test does not use it, so a
  test that checks Ray was never started, or starts a cluster of its own, never sees it, and a
  fixture that starts another cluster stops it first (``down()``): one cluster at a time.
* ``job_config`` and ``olrd_reference`` (the uninterrupted run) are written once per session.
* The modules that share them run one after another (``pytest_collection_modifyitems``), so the
  Ray is started once for all of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .olrd_job_fixture import run_job, write_job_config

# The modules that use the shared Ray and reference run, in the order they run (contiguous, at the
# place of the first of them): the in-process jobs first, then the ones that stop it for a cluster.
SHARED_RAY_MODULES = ("test_olrd_job.py", "test_olrd_s3.py", "test_olrd_multinode.py", "test_olrd_job_submit.py")


class LocalRay:
    """This process's local Ray, started on demand and stopped when no test needs it."""

    def __init__(self) -> None:
        self.started = False

    def up(self) -> LocalRay:
        import ray

        if not ray.is_initialized():
            # address="local": never a `ray start` cluster found on the machine (a user's, another run's)
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            self.started = True
        return self

    def down(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False


_LOCAL_RAY = LocalRay()


@pytest.fixture(scope="session")
def shared_ray(s3_server) -> LocalRay:
    """The shared local Ray (not started yet: call ``up()``); the S3 server runs before it starts."""
    yield _LOCAL_RAY
    _LOCAL_RAY.down()


@pytest.fixture
def local_ray(shared_ray) -> LocalRay:
    """The shared local Ray, running, for the test that requests it."""
    return shared_ray.up()


@pytest.fixture(scope="session")
def job_config(tmp_path_factory, tiny_llava) -> Path:
    """The OLRD job config of 6 demo scenes + 6 bad inputs (``olrd_job_fixture``), written once."""
    return write_job_config(tmp_path_factory.mktemp("olrd-job"), tiny_llava)


@pytest.fixture(scope="session")
def olrd_reference(job_config, shared_ray, tmp_path_factory) -> tuple[Path, dict]:
    """The job, uninterrupted, into a local folder on the shared Ray: (output folder, stats)."""
    shared_ray.up()
    out = tmp_path_factory.mktemp("olrd-out") / "full"
    stats = run_job(job_config, out)
    return out, stats


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent

    def rank(item) -> int | None:
        path = Path(item.path)
        return SHARED_RAY_MODULES.index(path.name) if path.parent == here and path.name in SHARED_RAY_MODULES else None

    first = next((i for i, item in enumerate(items) if rank(item) is not None), None)
    if first is None:
        return
    shared = sorted((item for item in items if rank(item) is not None), key=rank)  # stable: module order kept
    rest = [item for item in items if rank(item) is None]
    items[:] = rest[:first] + shared + rest[first:]


def pytest_runtest_teardown(item, nextitem):
    if nextitem is None or "shared_ray" not in nextitem.fixturenames:
        _LOCAL_RAY.down()
