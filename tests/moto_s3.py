"""A local S3-compatible server for the object-storage tests: moto's server mode on 127.0.0.1.

The same approach s3fs's own test suite takes: a real HTTP endpoint (so botocore, s3fs, pyarrow,
webdataset's fsspec reader and a job in a subprocess all talk S3 over the wire), set up through
the standard AWS variables only (``AWS_ENDPOINT_URL`` and dummy credentials), exactly as a user
points the jobs at MinIO or Ceph. Never any address but the loopback.

The server runs in this process (a thread), so the tests can see every object the jobs *wrote*,
including ones written and deleted again: :meth:`S3Server.written` records the key of every PUT,
multipart upload and copy the server received, whoever sent it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from typing import Any

ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 on ``127.0.0.1:<free port>``, the AWS variables pointing at it while it runs."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._saved: dict[str, str | None] = {}
        self._writes: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._patched: list[tuple[Any, str, Any]] = []

    def start(self) -> S3Server:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._record_writes()
        self._server.start()
        self._saved = {k: os.environ.get(k) for k in ENV_KEYS}
        for k in ENV_KEYS:
            os.environ.pop(k, None)
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=self.endpoint,
                          AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        return self

    def stop(self) -> None:
        self._server.stop()
        for owner, name, original in self._patched:
            setattr(owner, name, original)
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def _record_writes(self) -> None:
        """Wrap the backend's write calls: every key a PUT, multipart upload or copy names is recorded."""
        from moto.s3.models import S3Backend

        def wrap(name: str, bucket_arg: str, key_arg: str, pos: int):
            original = getattr(S3Backend, name)

            def recorder(backend, *args, **kwargs):
                bucket = kwargs.get(bucket_arg, args[pos] if len(args) > pos else "")
                key = kwargs.get(key_arg, args[pos + 1] if len(args) > pos + 1 else "")
                with self._lock:
                    self._writes.append((str(bucket), str(key)))
                return original(backend, *args, **kwargs)

            setattr(S3Backend, name, recorder)
            self._patched.append((S3Backend, name, original))

        wrap("put_object", "bucket_name", "key_name", 0)
        wrap("create_multipart_upload", "bucket_name", "key_name", 0)
        wrap("copy_object", "dest_bucket_name", "dest_key_name", 1)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def new_bucket(self, prefix: str = "test") -> str:
        """A fresh, empty bucket (unique name): tests do not see each other's objects."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> dict[str, int]:
        """Every object now in ``bucket``: key -> size."""
        out: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def written(self, bucket: str) -> list[str]:
        """Every key a write request named in ``bucket`` so far, in order (also deleted ones)."""
        with self._lock:
            return [k for b, k in self._writes if b == bucket]
