"""A big file fetched as several byte ranges at once (``skyport.agent.ranged``).

The real file route (``skyport.api.files.ranged_download`` over ``file://``
storage) served over TLS by ``skyport.api.tls``; the fetch must give back the
same bytes with the recorded sha256, and refuse bytes whose digest differs.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from skyport.agent.ranged import RANGES, download_ranges
from skyport.api.files import ranged_download
from skyport.api.tls import ServerHandle, start_in_thread
from skyport.errors import StorageError
from skyport.pki import ca_cert_path, init_ca, issue_server_cert
from skyport.storage import JobStorage

pytestmark = pytest.mark.timeout(120)
SIZE = 3 * (1 << 20) + 12345  # not a multiple of the ranges: the last one is short


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[JobStorage, ServerHandle, ssl.SSLContext]]:
    pki = tmp_path / "pki"
    init_ca(pki)
    issue_server_cert(pki, ["127.0.0.1"])
    storage = JobStorage((tmp_path / "storage").as_uri())
    app = FastAPI()

    @app.get("/files/{path:path}")
    async def get(path: str, request: Request) -> Response:
        return await ranged_download(storage, "job1", path, request.headers.get("range"))

    server = start_in_thread(app, pki_dir=pki)
    try:
        yield storage, server, ssl.create_default_context(cafile=str(ca_cert_path(pki)))
    finally:
        server.stop()


def _once(what: str, attempt: Callable[[], None]) -> None:
    attempt()


def _check(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        resp.read()
        raise AssertionError(f"HTTP {resp.status_code}: {resp.text}")


def test_ranges_give_back_the_file_with_its_digest(
        served: tuple[JobStorage, ServerHandle, ssl.SSLContext], tmp_path: Path) -> None:
    storage, server, ctx = served
    data = os.urandom(SIZE)
    storage.put("job1", "inputs/big.bin", data)
    seen: list[int] = []
    dest = tmp_path / "big.bin"
    with httpx.Client(base_url=server.url, verify=ctx, timeout=30) as http:
        got = download_ranges(http, _check, _once, "inputs/big.bin", dest, SIZE, seen.append)
    assert dest.read_bytes() == data
    assert got == hashlib.sha256(data).hexdigest()
    assert sum(seen) == SIZE
    assert RANGES > 1


def test_bytes_that_differ_from_the_recorded_digest_are_refused(
        served: tuple[JobStorage, ServerHandle, ssl.SSLContext], tmp_path: Path) -> None:
    storage, server, ctx = served
    storage.put("job1", "inputs/big.bin", os.urandom(SIZE))
    # the file changes under its recorded sum (same size): what arrives no longer matches
    stored = Path(storage._path("job1", "inputs/big.bin"))
    stored.write_bytes(os.urandom(SIZE))
    dest = tmp_path / "big.bin"
    with httpx.Client(base_url=server.url, verify=ctx, timeout=30) as http, \
            pytest.raises(StorageError, match="sha256"):
        download_ranges(http, _check, _once, "inputs/big.bin", dest, SIZE, lambda n: None)
    assert not dest.exists()
