"""JobStorage on S3 (moto): what only an object store can get wrong.

The behaviours every backend shares are in ``tests/unit/test_storage.py``;
here: appends that rewrite the object, no temporary objects left behind,
listings that stay fresh across clients, and inputs fetched from s3:// URLs.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import s3fs

from skyport.core.inputs import InputSource
from skyport.storage import JobStorage


@pytest.fixture
def prefix(s3_bucket: tuple[str, dict[str, Any]]) -> str:
    """A prefix of this test's own in the session's bucket: ``bucket/<random>``."""
    return f"{s3_bucket[0]}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def options(s3_bucket: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return s3_bucket[1]


def raw(options: dict[str, Any]) -> s3fs.S3FileSystem:
    """A client of its own, with no listings cache, to look at what is really stored."""
    return s3fs.S3FileSystem(**options, skip_instance_cache=True, use_listings_cache=False)


def test_append_rewrites_the_object(prefix: str, options: dict[str, Any]) -> None:
    storage = JobStorage(f"s3://{prefix}", options)
    chunks = [b"step 1\n", b"step 2\n", b"step 3\n"]
    offset = 0
    for chunk in chunks:
        offset = storage.append("j1", "logs/stdout", offset, chunk)
        storage.append("j1", "logs/stdout", offset - len(chunk), chunk)  # resent: no change
    fs = raw(options)
    key = f"{prefix}/jobs/j1/logs/stdout"
    assert fs.cat_file(key) == b"".join(chunks)
    # no ".part" object left behind; the rewrite recorded the checksum of the whole
    assert fs.find(f"{prefix}/jobs/j1") == [key, key + ".skyport-sha256"]


def test_put_leaves_no_temporary_object(prefix: str, options: dict[str, Any]) -> None:
    storage = JobStorage(f"s3://{prefix}/", options)
    storage.put("j1", "out/result.bin", b"\x00" * 1000)
    # the file and the record of its checksum, nothing else
    assert raw(options).find(f"{prefix}/jobs/j1") == [
        f"{prefix}/jobs/j1/out/result.bin", f"{prefix}/jobs/j1/out/result.bin.skyport-sha256"]


def test_listing_is_fresh_across_clients(prefix: str, options: dict[str, Any]) -> None:
    """Two clients with their own caches (as after a restart) see each other's writes."""
    a = JobStorage(f"s3://{prefix}", {**options, "skip_instance_cache": True})
    b = JobStorage(f"s3://{prefix}", {**options, "skip_instance_cache": True})
    assert b.listdir("j1") == []
    assert b.size("j1", "log") == 0
    a.append("j1", "log", 0, b"abc")
    a.put("j1", "f", b"1")
    assert [(f["path"], f["size"]) for f in b.listdir("j1")] == [("f", 1), ("log", 3)]
    assert b.size("j1", "log") == 3
    a.append("j1", "log", 3, b"def")
    assert b.read_from("j1", "log", 0) == b"abcdef"
    assert b.append("j1", "log", 6, b"g") == 7
    assert a.get("j1", "log") == b"abcdefg"
    assert [(f["path"], f["size"]) for f in a.listdir("j1")] == [("f", 1), ("log", 7)]


def test_copy_in_from_s3(
    prefix: str, options: dict[str, Any], s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # inputs are fetched with the default client: point it at moto as a deployment would
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    fs = raw(options)
    # an input under the user's own prefix, read with the storage's options
    fs.pipe_file(f"{prefix}/store/users/alice/data/forcing.nc", b"netcdf" * 10)
    storage = JobStorage(f"s3://{prefix}/store", options)
    source = InputSource("storage", f"s3://{prefix}/store/users/alice/data/forcing.nc",
                         "forcing.nc")
    assert storage.copy_in("j1", source, "alice", "inputs/forcing.nc") == 60
    assert storage.get("j1", "inputs/forcing.nc") == b"netcdf" * 10
    assert fs.cat_file(f"{prefix}/store/jobs/j1/inputs/forcing.nc") == b"netcdf" * 10


def test_a_prefix_input_is_copied_with_its_paths(prefix: str, options: dict[str, Any]) -> None:
    fs = raw(options)
    for rel, data in (("a.txt", b"a"), ("sub/b.txt", b"bb"), ("sub/deep/c.txt", b"ccc")):
        fs.pipe_file(f"{prefix}/store/users/alice/run/{rel}", data)
    storage = JobStorage(f"s3://{prefix}/store", options)
    source = InputSource("storage", f"s3://{prefix}/store/users/alice/run/", "run")
    assert storage.check_input(source, "alice") is None
    assert storage.copy_in("j1", source, "alice", "inputs/run") == 6
    assert {f["path"]: f["size"] for f in storage.listdir("j1")} == {
        "inputs/run/a.txt": 1, "inputs/run/sub/b.txt": 2, "inputs/run/sub/deep/c.txt": 3}
    assert all("sha256" in f for f in storage.listdir("j1"))
