"""magiceraser.storage.Folder on a local disk and on S3 (moto's server): the operations the jobs use.

On S3 every object is written once under its final key (the server records each write), create-
if-absent and the ETag-conditional replace/delete hold, and the endpoint can come from each of
the standard places (AWS_ENDPOINT_URL, fsspec's FSSPEC_S3_* configuration, storage_options).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from magiceraser.storage import Folder, is_object_store, public_options


def test_urls_and_paths_are_told_apart():
    assert is_object_store("s3://bucket/olrd") and is_object_store("gs://b/p") and is_object_store("memory://x")
    assert not is_object_store("/data/olrd") and not is_object_store("runs/x") and not is_object_store("file:///data")


def test_public_options_mask_secrets_but_keep_the_endpoint():
    opts = {"key": "AKIA", "secret": "s", "token": "t", "endpoint_url": "http://minio:9000",
            "client_kwargs": {"aws_secret_access_key": "s", "region_name": "eu"}, "anon": False}
    assert public_options(opts) == {"key": "***", "secret": "***", "token": "***", "endpoint_url": "http://minio:9000",
                                    "client_kwargs": {"aws_secret_access_key": "***", "region_name": "eu"}, "anon": False}


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path):
    if request.param == "local":
        return Folder(tmp_path / "out")
    server = request.getfixturevalue("s3_server")
    return Folder(f"s3://{server.new_bucket()}/out")


def test_folder_operations(folder):
    folder.ensure()
    assert folder.list() == {} and not folder.exists("a.json") and folder.size("a.json") is None
    folder.write_json("a.json", {"x": 1})
    with folder.open_final("b.tar") as fh:
        fh.write(b"0123456789")
    assert json.loads(folder.read_text("a.json")) == {"x": 1}
    assert folder.list() == {"a.json": len(folder.read_bytes("a.json")), "b.tar": 10}
    assert folder.size("b.tar") == 10 and folder.exists("b.tar")
    with pytest.raises(FileNotFoundError):
        folder.read_bytes("missing")
    # a failed stream leaves nothing under the name
    with pytest.raises(RuntimeError), folder.open_final("c.tar") as fh:
        fh.write(b"partial")
        raise RuntimeError("killed")
    assert not folder.exists("c.tar")
    assert folder.create_exclusive("lock", b"first") and not folder.create_exclusive("lock", b"second")
    assert folder.read_bytes("lock") == b"first"
    assert folder.remove("a.json") and not folder.remove("a.json")
    assert sorted(folder.list()) == ["b.tar", "lock"]
    assert not [n for n in folder.list() if n.startswith(".tmp-")]


def test_s3_writes_only_final_keys_and_conditions_hold(s3_server):
    bucket = s3_server.new_bucket()
    folder = Folder(f"s3://{bucket}/out")
    folder.write_bytes("x.tar", b"tar")
    with folder.open_final("y.tar") as fh:
        fh.write(b"y" * 1000)
    assert folder.create_exclusive("job.lock", b"v1")
    data, version, mtime = folder.read_versioned("job.lock")
    assert data == b"v1" and version and mtime
    assert folder.replace_if("job.lock", b"v2", version)
    assert not folder.replace_if("job.lock", b"v3", version)  # changed since `version` was read
    assert not folder.remove("job.lock", version)
    assert folder.read_bytes("job.lock") == b"v2"
    assert folder.remove("job.lock", folder.read_versioned("job.lock")[1])
    assert s3_server.written(bucket) == ["out/x.tar", "out/y.tar", "out/job.lock", "out/job.lock"]
    assert s3_server.keys(bucket) == {"out/x.tar": 3, "out/y.tar": 1000}


def test_a_missing_bucket_is_reported_not_created(s3_server):
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        Folder("s3://no-such-bucket-x1/out").ensure()
    assert "no-such-bucket-x1" not in [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]


_PROBE = """
import json, sys
from magiceraser.storage import Folder
folder = Folder(sys.argv[1], json.loads(sys.argv[2]))
folder.write_text("probe.txt", "hello")
print(folder.read_text("probe.txt"))
"""


@pytest.mark.parametrize("where", ["FSSPEC_S3_ENDPOINT_URL", "storage_options", "none"])
def test_the_endpoint_comes_from_fsspec_config_or_storage_options(s3_server, where):
    """fsspec's own variable or the config's storage_options point at the server (over AWS_ENDPOINT_URL)."""
    bucket = s3_server.new_bucket()
    from moto_s3 import _free_port

    # AWS_ENDPOINT_URL at a closed loopback port: a setting that were ignored fails here, never reaching out.
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}", "AWS_MAX_ATTEMPTS": "1"}
    options = {}
    if where == "FSSPEC_S3_ENDPOINT_URL":
        env["FSSPEC_S3_ENDPOINT_URL"] = s3_server.endpoint
    elif where == "storage_options":
        options = {"endpoint_url": s3_server.endpoint}
    proc = subprocess.run([sys.executable, "-c", _PROBE, f"s3://{bucket}/p", json.dumps(options)], env=env,
                          capture_output=True, text=True, timeout=120)
    if where == "none":
        assert proc.returncode != 0
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "hello" and s3_server.keys(bucket) == {"p/probe.txt": 5}
