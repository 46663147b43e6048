"""JobStorage conformance: every backend (file://, s3:// on moto) behaves the same."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from skyport.core.inputs import InputSource
from skyport.errors import NotFoundError, StorageError, ValidationError
from skyport.storage import JobStorage


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> JobStorage:
    """A fresh, empty JobStorage on each backend."""
    if request.param == "file":
        return JobStorage((tmp_path / "storage").as_uri())
    bucket, options = request.getfixturevalue("s3_bucket")
    return JobStorage(f"s3://{bucket}/{uuid.uuid4().hex[:12]}/", options)


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "inputs" / "mesh.dat"
    path.parent.mkdir()
    path.write_bytes(b"\x00mesh\xff" * 100)
    return path


ESCAPES = ["../j2/x", "/etc/passwd", "a/../../x", "a//b", "", "dir/", "a\\b", "..", "x\n"]


class TestStorageConformance:
    def test_put_get(self, storage: JobStorage) -> None:
        storage.put("j1", "script.sh", b"#!/bin/bash\n")
        storage.put("j1", "out/deep/result.bin", bytes(range(256)))
        assert storage.get("j1", "script.sh") == b"#!/bin/bash\n"
        assert storage.get("j1", "out/deep/result.bin") == bytes(range(256))
        assert storage.exists("j1", "script.sh")
        assert storage.size("j1", "out/deep/result.bin") == 256

    def test_put_replaces(self, storage: JobStorage) -> None:
        storage.put("j1", "a", b"a much longer first version")
        storage.put("j1", "a", b"short")
        assert storage.get("j1", "a") == b"short"
        assert storage.size("j1", "a") == 5
        assert _plain(storage.listdir("j1")) == [{"path": "a", "size": 5}]

    def test_files_named_like_temporaries_are_listed(self, storage: JobStorage) -> None:
        storage.put("j1", "model.part", b"weights")
        storage.put("j1", "x.part.1", b"1")
        assert _plain(storage.listdir("j1")) == [
            {"path": "model.part", "size": 7},
            {"path": "x.part.1", "size": 1},
        ]

    def test_empty_file(self, storage: JobStorage) -> None:
        storage.put("j1", "empty", b"")
        assert storage.exists("j1", "empty")
        assert storage.get("j1", "empty") == b""

    def test_missing(self, storage: JobStorage) -> None:
        with pytest.raises(NotFoundError, match="job j1 has no file nope"):
            storage.get("j1", "nope")
        assert not storage.exists("j1", "nope")
        assert storage.size("j1", "nope") == 0
        assert storage.read_from("j1", "nope", 0) == b""
        assert _plain(storage.listdir("j1")) == []

    def test_jobs_are_separate(self, storage: JobStorage) -> None:
        storage.put("j1", "f", b"one")
        storage.put("j10", "f", b"ten")  # a prefix of another job's id
        storage.put("j2", "g", b"two")
        assert _plain(storage.listdir("j1")) == [{"path": "f", "size": 3}]
        assert _plain(storage.listdir("j10")) == [{"path": "f", "size": 3}]
        assert storage.get("j1", "f") == b"one"
        assert not storage.exists("j2", "f")

    def test_listdir(self, storage: JobStorage) -> None:
        storage.put("j1", "script.sh", b"x")
        storage.put("j1", "inputs/a.nc", b"12345")
        storage.put("j1", "out/r/1.txt", b"")
        storage.append("j1", "logs/stdout", 0, b"hello\n")
        assert _plain(storage.listdir("j1")) == [
            {"path": "inputs/a.nc", "size": 5},
            {"path": "logs/stdout", "size": 6},
            {"path": "out/r/1.txt", "size": 0},
            {"path": "script.sh", "size": 1},
        ]

    def test_listdir_sees_each_write(self, storage: JobStorage) -> None:
        # a listing taken between writes must not be served stale afterwards
        assert _plain(storage.listdir("j1")) == []
        storage.put("j1", "a", b"1")
        assert _plain(storage.listdir("j1")) == [{"path": "a", "size": 1}]
        storage.append("j1", "log", 0, b"abc")
        assert _plain(storage.listdir("j1")) == [
            {"path": "a", "size": 1}, {"path": "log", "size": 3}]
        storage.append("j1", "log", 3, b"defg")
        storage.put("j1", "a", b"22")
        assert _plain(storage.listdir("j1")) == [
            {"path": "a", "size": 2}, {"path": "log", "size": 7}]
        assert storage.size("j1", "log") == 7

    def test_every_written_file_has_its_checksum_recorded(self, storage: JobStorage) -> None:
        storage.put("j1", "a", b"one")
        w = storage.writer("j1", "outputs/big.bin")
        for i in range(3):
            w.write(bytes([i]) * 1000)
        size, digest = w.commit()
        content = b"".join(bytes([i]) * 1000 for i in range(3))
        assert (size, digest) == (3000, hashlib.sha256(content).hexdigest())
        assert storage.stat("j1", "outputs/big.bin") == (3000, digest)
        assert storage.listdir("j1") == [
            {"path": "a", "size": 3, "sha256": hashlib.sha256(b"one").hexdigest()},
            {"path": "outputs/big.bin", "size": 3000, "sha256": digest},
        ]
        storage.put("j1", "a", b"three")  # rewritten: the new content's sum
        assert storage.stat("j1", "a") == (5, hashlib.sha256(b"three").hexdigest())

    def test_a_log_grown_by_appends_claims_no_stale_checksum(self, storage: JobStorage) -> None:
        storage.append("j1", "log", 0, b"abc")
        storage.append("j1", "log", 3, b"def")
        size, digest = storage.stat("j1", "log")
        assert size == 6
        assert digest in (None, hashlib.sha256(b"abcdef").hexdigest())

    def test_writer_refuses_the_checksum_names(self, storage: JobStorage) -> None:
        with pytest.raises(ValidationError, match="path"):
            storage.writer("j1", "a.skyport-sha256")

    def test_a_file_is_read_in_ranges_and_chunks(self, storage: JobStorage) -> None:
        data = bytes(range(256)) * 40
        storage.put("j1", "f", data)
        assert b"".join(storage.iter_range("j1", "f", chunk=100)) == data
        assert all(len(c) <= 100 for c in storage.iter_range("j1", "f", chunk=100))
        assert b"".join(storage.iter_range("j1", "f", 1000, chunk=300)) == data[1000:]
        assert b"".join(storage.iter_range("j1", "f", 10, 20)) == data[10:20]
        with pytest.raises(NotFoundError):
            storage.stat("j1", "nothing")

    def test_append_in_order(self, storage: JobStorage) -> None:
        assert storage.append("j1", "logs/stdout", 0, b"line 1\n") == 7
        assert storage.append("j1", "logs/stdout", 7, b"line 2\n") == 14
        assert storage.get("j1", "logs/stdout") == b"line 1\nline 2\n"

    def test_chunk_resent_at_an_old_offset_is_stored_once(self, storage: JobStorage) -> None:
        storage.append("j1", "log", 0, b"abc")
        assert storage.append("j1", "log", 0, b"abc") == 3  # the same chunk again
        assert storage.append("j1", "log", 3, b"def") == 6
        assert storage.append("j1", "log", 3, b"def") == 6
        assert storage.append("j1", "log", 3, b"defgh") == 8  # overlaps: only "gh" is new
        assert storage.append("j1", "log", 1, b"bc") == 8
        assert storage.get("j1", "log") == b"abcdefgh"

    def test_append_empty_chunk(self, storage: JobStorage) -> None:
        assert storage.append("j1", "log", 0, b"") == 0
        storage.append("j1", "log", 0, b"x")
        assert storage.append("j1", "log", 1, b"") == 1
        assert storage.get("j1", "log") == b"x"

    def test_append_past_the_end_or_before_the_start_is_refused(self, storage: JobStorage) -> None:
        storage.append("j1", "log", 0, b"abc")
        for offset in (4, 100, -1):
            with pytest.raises(ValidationError, match="current size 3") as err:
                storage.append("j1", "log", offset, b"zzz")
            assert err.value.value == offset
        assert storage.get("j1", "log") == b"abc"

    def test_read_from(self, storage: JobStorage) -> None:
        storage.append("j1", "log", 0, b"0123456789")
        assert storage.read_from("j1", "log", 0) == b"0123456789"
        assert storage.read_from("j1", "log", 4, limit=3) == b"456"
        assert storage.read_from("j1", "log", 10) == b""
        assert storage.read_from("j1", "log", 50) == b""

    def test_paths_that_escape_the_job_prefix_are_refused(self, storage: JobStorage) -> None:
        storage.put("j2", "x", b"secret")
        calls = [
            lambda rel: storage.put("j1", rel, b"x"),
            lambda rel: storage.get("j1", rel),
            lambda rel: storage.append("j1", rel, 0, b"x"),
            lambda rel: storage.read_from("j1", rel, 0),
            lambda rel: storage.exists("j1", rel),
            lambda rel: storage.size("j1", rel),
        ]
        for rel in ESCAPES:
            for call in calls:
                with pytest.raises(ValidationError, match="relative path inside the job's pre"):
                    call(rel)
        assert storage.get("j2", "x") == b"secret"
        assert _plain(storage.listdir("j1")) == []

    def test_job_ids_that_escape_are_refused(self, storage: JobStorage) -> None:
        storage.put("j2", "x", b"secret")
        for job_id in ("..", "../j2", ".", "", "a/b"):
            with pytest.raises(ValidationError, match="job id"):
                storage.put(job_id, "x", b"x")
            with pytest.raises(ValidationError, match="job id"):
                storage.listdir(job_id)
        assert storage.get("j2", "x") == b"secret"

    def test_copy_in(self, storage: JobStorage, input_file: Path) -> None:
        n = storage.copy_in("j1", _file(input_file), "alice", "inputs/mesh.dat")
        assert n == 600
        assert storage.get("j1", "inputs/mesh.dat") == input_file.read_bytes()
        assert _plain(storage.listdir("j1")) == [{"path": "inputs/mesh.dat", "size": 600}]

    def test_copy_in_missing_url(self, storage: JobStorage, tmp_path: Path) -> None:
        with pytest.raises(StorageError, match="cannot read input"):
            storage.copy_in("j1", _file(tmp_path / "no-such-file"), "alice", "inputs/x")
        assert _plain(storage.listdir("j1")) == []

    def test_copy_in_refuses_an_escaping_target(
        self, storage: JobStorage, input_file: Path
    ) -> None:
        with pytest.raises(ValidationError):
            storage.copy_in("j1", _file(input_file), "alice", "../j2/inputs/x")

    def test_a_second_instance_sees_the_same_files(
        self, storage: JobStorage, request: pytest.FixtureRequest
    ) -> None:
        storage.put("j1", "a", b"1")
        # its own client (and listings cache), as another process would have
        other = JobStorage(storage.url, {**_options(storage), "skip_instance_cache": True})
        assert _plain(other.listdir("j1")) == [{"path": "a", "size": 1}]
        other.append("j1", "log", 0, b"xyz")
        storage.put("j1", "a", b"22")
        assert other.get("j1", "a") == b"22"
        assert storage.get("j1", "log") == b"xyz"


def _plain(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A listing without its checksums (tested on their own below)."""
    return [{"path": f["path"], "size": f["size"]} for f in listed]


def _options(storage: JobStorage) -> dict[str, Any]:
    """The storage_options a JobStorage was made with (s3fs keeps them)."""
    return dict(getattr(storage.fs, "storage_options", {}) or {})


def test_unknown_protocol_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="cannot open storage"):
        JobStorage(f"nosuchproto{uuid.uuid4().hex[:6]}://bucket/x")


def test_file_storage_creates_its_root(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    JobStorage(root.as_uri())
    assert root.is_dir()


def test_file_storage_layout(tmp_path: Path) -> None:
    storage = JobStorage(tmp_path.as_uri() + "/")
    storage.put("j1", "out/x", b"data")
    assert (tmp_path / "jobs" / "j1" / "out" / "x").read_bytes() == b"data"
    # the file and its checksum record, nothing else
    assert sorted(p.name for p in (tmp_path / "jobs" / "j1" / "out").iterdir()) == [
        "x", "x.skyport-sha256"]


def _file(path: Path) -> InputSource:
    return InputSource("file", str(path), path.name)


def test_check_input_says_why_an_input_cannot_be_read(input_file: Path, tmp_path: Path) -> None:
    storage = JobStorage((tmp_path / "store").as_uri())
    assert storage.check_input(_file(input_file), "alice") is None
    assert storage.check_input(_file(tmp_path / "missing"), "alice") == "no such file"
    assert storage.check_input(_file(tmp_path), "alice") is None  # a directory: taken whole


def test_uploads_are_kept_per_user_by_digest_and_checked(tmp_path: Path) -> None:
    storage = JobStorage((tmp_path / "store").as_uri())
    data = b"mesh" * 1000
    sha = hashlib.sha256(data).hexdigest()
    w = storage.upload_writer("alice", sha, "mesh.dat")
    w.write(data[:10])
    w.write(data[10:])
    assert w.commit(sha) == (len(data), sha)
    assert storage.has_upload("alice", sha, "mesh.dat")
    assert not storage.has_upload("bob", sha, "mesh.dat")  # another user's area is another
    upload = InputSource("upload", f"uploads/{sha}/mesh.dat", "mesh.dat")
    assert storage.copy_in("j1", upload, "alice", "inputs/mesh.dat") == len(data)
    with pytest.raises(StorageError):
        storage.copy_in("j2", upload, "bob", "inputs/mesh.dat")
    lying = storage.upload_writer("alice", "0" * 64, "x")
    lying.write(b"not that")
    with pytest.raises(ValidationError, match="sha256"):
        lying.commit("0" * 64)
    assert not storage.has_upload("alice", "0" * 64, "x")
    assert not list((tmp_path / "store" / "users" / "alice" / "uploads").glob("0*/*"))
