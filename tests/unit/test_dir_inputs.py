"""Directory inputs: a local directory or a prefix, staged with its paths; hostile trees refused."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from skyport.agent.transfer import stage_in
from skyport.client.testing import TestControlPlane
from skyport.config import InputPolicy
from skyport.core.inputs import InputSource, check_input_url
from skyport.dirinputs import dir_manifest, local_tree, parse_dir_manifest
from skyport.errors import ValidationError
from skyport.models import JobSpec
from skyport.storage import JobStorage

SHA = "a" * 64


def tree(root: Path) -> Path:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a\n")
    (root / "sub" / "b.txt").write_bytes(b"bb\n")
    (root / "sub" / "deep" / "c.bin").write_bytes(b"\x00" * 1000)
    return root


def test_local_tree_keeps_relative_paths_and_links_inside(tmp_path: Path) -> None:
    root = tree(tmp_path / "data")
    (root / "link.txt").symlink_to(root / "a.txt")
    (root / "sublink").symlink_to(root / "sub")  # a link to a directory inside: not walked twice
    assert [rel for rel, _ in local_tree(root)] == [
        "a.txt", "link.txt", "sub/b.txt", "sub/deep/c.bin"]


@pytest.mark.parametrize("hostile", ["link out", "dir link out", "fifo", "reserved name"])
def test_local_tree_refuses_what_leaves_the_directory(tmp_path: Path, hostile: str) -> None:
    root = tree(tmp_path / "data")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the job")
    if hostile == "link out":
        (root / "sub" / "leak.txt").symlink_to(secret)
    elif hostile == "dir link out":
        (root / "up").symlink_to(tmp_path)
    elif hostile == "fifo":
        os.mkfifo(root / "pipe")
    else:
        (root / "x.skyport-sha256").write_text("forged")
    with pytest.raises(ValidationError) as err:
        local_tree(root)
    assert err.value.field == "input"
    assert str(root) in str(err.value.value)


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", "a//b", "a/./b",
                                  "x.skyport-part", ""])
def test_a_hostile_manifest_path_is_refused(path: str) -> None:
    raw = json.dumps({"files": [{"path": path, "sha256": SHA, "size": 1}]}).encode()
    with pytest.raises(ValidationError) as err:
        parse_dir_manifest(raw, "data")
    assert err.value.field == "input"


@pytest.mark.parametrize("files", [
    [{"path": "a", "sha256": SHA, "size": 1}, {"path": "a", "sha256": SHA, "size": 1}],
    [{"path": "a", "sha256": SHA, "size": 1}, {"path": "a/b", "sha256": SHA, "size": 1}],
    [{"path": "a", "sha256": "nope", "size": 1}],
    [{"path": "a", "sha256": SHA, "size": -1}],
    "not a list",
])
def test_a_malformed_manifest_is_refused(files: object) -> None:
    with pytest.raises(ValidationError):
        parse_dir_manifest(json.dumps({"files": files}).encode(), "data")
    with pytest.raises(ValidationError):
        parse_dir_manifest(b"not json", "data")


def test_upload_dir_urls_are_checked_like_uploads(tmp_path: Path) -> None:
    def check(url: str) -> InputSource:
        return check_input_url(url, "alice", InputPolicy(), state_dir=tmp_path / "home",
                               storage_protocols=("s3",), storage_root="bucket/sp")

    assert check(f"upload-dir:{SHA}/data") == InputSource("upload-dir", f"uploads/{SHA}/data",
                                                          "data")
    for bad in (f"upload-dir:{SHA}/../x", "upload-dir:abc/data", f"upload-dir:{SHA}/a/b"):
        with pytest.raises(ValidationError):
            check(bad)


def test_a_local_directory_is_uploaded_staged_and_listed_with_its_paths(
        tmp_path: Path) -> None:
    root = tree(tmp_path / "data")
    with TestControlPlane(tmp_path / "cp") as cp:
        c = cp.client()
        job = c.submit(JobSpec(name="d", script="#!/bin/bash\ntrue\n",
                               inputs=(root.as_uri(),)))
        assert job.spec.inputs[0].startswith("upload-dir:")
        agents = cp.start(job.id)
        listed = {f.path: f.sha256 for f in c.files(job.id)}
        for rel in ("a.txt", "sub/b.txt", "sub/deep/c.bin"):
            data = (root / rel).read_bytes()
            assert listed[f"inputs/data/{rel}"] == hashlib.sha256(data).hexdigest()
        work = tmp_path / "work"
        work.mkdir()
        got = dict(stage_in(agents[0], work, lambda text: None))
        assert got["data/sub/deep/c.bin"] == 1000
        assert (work / "data" / "sub" / "b.txt").read_bytes() == b"bb\n"


def test_a_hostile_directory_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    root = tree(tmp_path / "data")
    (root / "leak").symlink_to(tmp_path / "cp")
    with TestControlPlane(tmp_path / "cp") as cp:
        with pytest.raises(ValidationError, match="leads out of it"):
            cp.client().submit(JobSpec(name="d", script="#!/bin/bash\ntrue\n",
                                       inputs=(root.as_uri(),)))
        assert not list((tmp_path / "cp" / "storage").rglob("uploads/*/*"))


def test_a_forged_directory_list_is_refused_at_submit(tmp_path: Path) -> None:
    with TestControlPlane(tmp_path / "cp") as cp:
        c = cp.client()
        for files, why in (([{"path": "../../x", "sha256": SHA, "size": 1}], "no '..'"),
                           ([{"path": "a", "sha256": SHA, "size": 1}], "not uploaded")):
            forged = tmp_path / "list"
            forged.write_bytes(dir_manifest(files))
            url = c.upload(forged, name="data")
            with pytest.raises(ValidationError, match=why) as err:
                c.submit(JobSpec(name="d", script="#!/bin/bash\ntrue\n",
                                 inputs=(url.replace("upload:", "upload-dir:"),)))
            assert err.value.field == "input"


def test_a_granted_directory_or_prefix_is_copied_whole(tmp_path: Path) -> None:
    root = tree(tmp_path / "data")
    storage = JobStorage((tmp_path / "store").as_uri())
    source = InputSource("file", str(root), "data")
    assert storage.check_input(source, "alice") is None
    assert storage.copy_in("j1", source, "alice", "inputs/data") == 2 + 3 + 1000
    assert [f["path"] for f in storage.listdir("j1")] == [
        "inputs/data/a.txt", "inputs/data/sub/b.txt", "inputs/data/sub/deep/c.bin"]
    # a link out, planted after submit: still refused when the Core copies
    (root / "leak").symlink_to(tmp_path / "store")
    assert "leads out of it" in (storage.check_input(source, "alice") or "")
    with pytest.raises(ValidationError, match="leads out of it"):
        storage.copy_in("j2", source, "alice", "inputs/data")
    assert storage.listdir("j2") == []
    # a prefix of the storage itself, walked there
    storage.put("j1", "outputs/run/x.txt", b"x")
    # (its checksum records are the storage's own, not files of the tree)
    prefix = InputSource("storage", f"file://{storage.root}/jobs/j1/outputs/run", "run")
    assert storage.check_input(prefix, "alice") is None
    assert storage.copy_in("j3", prefix, "alice", "inputs/run") == 1
    assert storage.get("j3", "inputs/run/x.txt") == b"x"
