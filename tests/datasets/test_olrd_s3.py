"""``output=s3://...`` end to end against a local S3 server (moto): same bytes as a local output.

One uninterrupted Ray job into a local folder (the reference), one into a bucket, one killed part
way into another bucket and resumed. The server records every key written to it, so the tests
see that no temporary key was ever created (not just that none is left).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from .job_helpers import BAD, NUM_SCENES, kill_tree, run_job

FINAL = {"job.json", "skipped.jsonl", "stats.json", "job.lock"}


@pytest.fixture(scope="module")
def ray_s3(s3_server):
    """A local Ray started after the AWS variables point at the S3 server (its workers inherit them)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_full(job_config, ray_s3, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("olrd-local") / "full"
    run_job(job_config, out)
    return out


@pytest.fixture(scope="module")
def s3_full(job_config, ray_s3, s3_server):  # noqa: F811
    bucket = s3_server.new_bucket("olrd")
    url = f"s3://{bucket}/olrd"
    stats = run_job(job_config, url)
    return bucket, url, stats


def _objects(s3_server, bucket: str, prefix: str = "olrd/") -> dict[str, bytes]:
    client = s3_server.client()
    return {k[len(prefix):]: client.get_object(Bucket=bucket, Key=k)["Body"].read()
            for k in s3_server.keys(bucket) if k.startswith(prefix)}


def _is_final(name: str) -> bool:
    return name in FINAL or (name.startswith("olrd-") and name.endswith((".tar", ".json")) and "tmp" not in name)


def _assert_same_shards(objects: dict[str, bytes], local: Path) -> None:
    shard_files = sorted(p.name for p in local.iterdir() if p.name.startswith("olrd-"))
    assert sorted(n for n in objects if n.startswith("olrd-")) == shard_files
    for name in [*shard_files, "skipped.jsonl"]:
        assert objects[name] == (local / name).read_bytes(), name


@pytest.mark.slow  # its fixtures run the two uninterrupted Ray jobs
def test_s3_output_is_byte_identical_to_a_local_output_and_written_once_per_key(local_full, s3_full, s3_server):
    bucket, url, stats = s3_full
    objects = _objects(s3_server, bucket)
    assert sorted(objects) == sorted(p.name for p in local_full.iterdir())  # same files, no job.lock left
    _assert_same_shards(objects, local_full)
    assert stats["samples"] == NUM_SCENES and json.loads(objects["stats.json"]) == stats
    job = json.loads(objects["job.json"])
    assert job["fingerprint"] == json.loads((local_full / "job.json").read_text())["fingerprint"]
    assert job["config"]["output"] == url
    written = [k.removeprefix("olrd/") for k in s3_server.written(bucket)]
    assert all(_is_final(k) for k in written), [k for k in written if not _is_final(k)]
    tars = [k for k in written if k.endswith(".tar")]
    assert len(tars) == len(set(tars)) == stats["shards"]  # each tar object written once
    for tar in tars:  # ... and its sidecar after it
        assert written.index(tar) < written.index(tar.replace(".tar", ".json"))
    assert written[-1] == "stats.json" and written[0] == "job.lock"


def test_shards_read_back_from_s3_with_stock_webdataset_and_ray_data(local_full, s3_full, monkeypatch):
    import importlib

    import fsspec
    import ray
    import webdataset as wds

    _, url, stats = s3_full
    reference = {}
    for tar in sorted(local_full.glob("olrd-*.tar")):
        for sample in wds.WebDataset(str(tar), shardshuffle=False, empty_check=False):
            reference[sample["__key__"]] = sample["original.png"]
    # webdataset opens URLs through its gopen_schemes table, which has no s3 entry: give it fsspec's.
    gopen = importlib.import_module("webdataset.gopen")  # the module (webdataset.gopen is also its function)
    monkeypatch.setitem(gopen.gopen_schemes, "s3", lambda u, mode="rb", bufsize=8192, **kw: fsspec.open(u, mode).open())
    n = stats["shards"] - 1
    got = {s["__key__"]: s["original.png"]
           for s in wds.WebDataset(f"{url}/olrd-{{000000..{n:06d}}}.tar", shardshuffle=False, empty_check=False)}
    assert got == reference and len(got) == NUM_SCENES
    rows = ray.data.read_webdataset(url, file_extensions=["tar"], decoder=None).take_all()  # raw member bytes
    assert {r["__key__"]: bytes(r["original.png"]) for r in rows} == reference


def _run_and_kill_part_way(job_config: Path, url: str, s3_server, bucket: str) -> None:  # noqa: F811
    """The job in a subprocess (same AWS variables), frozen the moment a sidecar object appears, then killed.

    It joins this process's Ray (starting another costs half a minute on a busy machine); killing
    the driver ends its Ray job, whose actors Ray then stops.
    """
    import ray

    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, "-m", "magiceraser", "olrd", "--config", str(job_config), f"output={url}", f"ray_address={address}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 600
        while not any(k.endswith(".json") and "/olrd-" in k for k in s3_server.keys(bucket)):
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGSTOP)
    finally:
        kill_tree(proc)


@pytest.mark.slow
def test_killed_s3_run_resumes_to_the_same_bytes(local_full, job_config, s3_server, ray_s3, capsys):  # noqa: F811
    n_shards = len(list(local_full.glob("olrd-*.tar")))
    for _ in range(3):  # on a fast machine every shard can land within one poll: repeat on a fresh bucket
        bucket = s3_server.new_bucket("killed")
        url = f"s3://{bucket}/olrd"
        _run_and_kill_part_way(job_config, url, s3_server, bucket)
        objects = _objects(s3_server, bucket)
        if len([n for n in objects if n.endswith(".tar")]) < n_shards:
            break
    assert "stats.json" not in objects and "job.lock" in objects, "the job must be killed part way, holding its lock"
    finished = [n for n in objects if n.endswith(".tar")]
    assert 0 < len(finished) < n_shards, f"{len(finished)} of {n_shards} shards finished before the kill"
    for name in finished:  # nothing partial under a final key
        with tarfile.open(fileobj=io.BytesIO(objects[name])) as t:
            t.getmembers()
    capsys.readouterr()
    stats = run_job(job_config, url)
    assert f"taking over the stale lock {url}/job.lock" in capsys.readouterr().err
    assert 0 < stats["processed_this_run"] < NUM_SCENES + len(BAD) and stats["samples"] == NUM_SCENES
    objects = _objects(s3_server, bucket)
    assert "job.lock" not in objects
    _assert_same_shards(objects, local_full)
    written = [k.removeprefix("olrd/") for k in s3_server.written(bucket)]
    assert all(_is_final(k) for k in written), [k for k in written if not _is_final(k)]


def test_a_locked_s3_output_is_refused_in_one_line_naming_the_owner(job_config, s3_server, capsys):  # noqa: F811
    from magiceraser.datasets import olrd_job

    bucket = s3_server.new_bucket("held")
    now = time.time()
    s3_server.client().put_object(Bucket=bucket, Key="olrd/job.lock", Body=json.dumps(
        {"host": "gpu-node-7", "pid": 4242, "started_at": now, "heartbeat_at": now, "token": "x"}).encode())
    assert olrd_job.main(["--config", str(job_config), f"output=s3://{bucket}/olrd"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[olrd] ")]  # log lines
    assert len(err) == 1 and "in use by another job (host gpu-node-7, pid 4242" in err[0], err
    assert set(s3_server.keys(bucket)) == {"olrd/job.lock"}  # nothing written, the lock not touched


def test_a_missing_bucket_is_one_line(job_config, s3_server, capsys):  # noqa: F811
    from magiceraser.datasets import olrd_job

    assert olrd_job.main(["--config", str(job_config), "output=s3://no-such-bucket-olrd/olrd"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[olrd] ")]
    assert len(err) == 1 and "no-such-bucket-olrd" in err[0] and "does not exist" in err[0], err
