"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

S3_KEY = "testing-key"
S3_SECRET = "testing-secret"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free local port for the whole session; yields its endpoint URL.

    Dummy AWS credentials are set in the environment while it runs, so that no
    client ever finds (or uses) real ones.
    """
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_server: str) -> tuple[str, dict[str, Any]]:
    """A bucket on the moto server, and the s3fs ``storage_options`` that reach it.

    One bucket for the session (creating clients is the slow part): tests keep
    apart by writing under a prefix of their own.
    """
    import s3fs

    options: dict[str, Any] = {
        "client_kwargs": {"endpoint_url": s3_server},
        "key": S3_KEY,
        "secret": S3_SECRET,
    }
    bucket = f"skyport-test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)  # no region: moto's default is fine
    return bucket, options
