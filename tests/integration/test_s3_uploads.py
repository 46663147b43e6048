"""Multipart uploads an attempt leaves open on S3 (moto's server) are aborted.

An agent that dies mid-upload leaves its multipart upload open, billed until
aborted (``skyport.core.uploads``).  The Core aborts an attempt's uploads when
the attempt ends, however it ends, and sweeps at start-up what a stopped control
plane left; a live attempt's upload and another job's are never touched.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import s3fs

from skyport.agent.client import AgentClient
from skyport.client.testing import TestControlPlane
from skyport.models import JobState
from skyport.protocol import DirectWriteAnswer
from skyport.script import build_spec
from skyport.storage import JobStorage
from skyport.store import JobStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCRIPT = "#!/bin/bash\n#SKYPORT --name=uploads --output=out.bin\ntrue\n"
BIG = 40 << 20  # several parts: a multipart upload


@pytest.fixture
def prefix(s3_bucket: tuple[str, dict[str, Any]]) -> str:
    return f"{s3_bucket[0]}/{uuid.uuid4().hex[:12]}"


def _raw(options: dict[str, Any]) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(**options, skip_instance_cache=True, use_listings_cache=False)


def _open_ids(options: dict[str, Any], prefix: str) -> set[str]:
    """The ids of the multipart uploads open under ``prefix``, as S3 lists them."""
    bucket, key = prefix.split("/", 1)
    got = _raw(options).call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key + "/")
    return {u["UploadId"] for u in got.get("Uploads", [])}


def _until_gone(options: dict[str, Any], prefix: str, upload_id: str) -> None:
    deadline = time.monotonic() + 30
    while upload_id in _open_ids(options, prefix):
        assert time.monotonic() < deadline, f"upload {upload_id} still open"
        time.sleep(0.05)


def _storage(prefix: str, options: dict[str, Any]) -> JobStorage:
    return JobStorage(f"s3://{prefix}", {**options, "skip_instance_cache": True})


def _running(cp: TestControlPlane) -> tuple[str, AgentClient]:
    job = cp.client().submit(build_spec(SCRIPT))
    return job.id, cp.start(job.id)[0]


def _left_open(agent: AgentClient, path: str = "outputs/out.bin") -> str:
    """An upload the agent starts (one part sent) and never completes: it died."""
    plan = agent._call(DirectWriteAnswer, "POST", "/direct/write",
                       json={"path": path, "size": BIG})
    assert plan.upload_id and len(plan.urls) > 1
    import httpx

    assert httpx.put(plan.urls[0], content=b"x" * plan.part_size).status_code == 200
    return plan.upload_id


@pytest.mark.parametrize("end", ["success", "failure", "cancel", "lost node"])
def test_an_ended_attempts_uploads_are_aborted(
        end: str, prefix: str, s3_bucket: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    options = s3_bucket[1]
    with TestControlPlane(tmp_path / "cp", storage=_storage(prefix, options)) as cp:
        job_id, agent = _running(cp)
        other_id, other = _running(cp)
        mine, theirs = _left_open(agent), _left_open(other)
        assert {mine, theirs} <= _open_ids(options, prefix)
        if end in ("success", "failure"):
            cp.agents(job_id).exit(0 if end == "success" else 1)
            cp.wait_state(job_id, JobState.SUCCEEDED if end == "success" else JobState.FAILED)
        elif end == "cancel":
            cp.client().cancel(job_id)
            cp.wait_state(job_id, JobState.CANCELLED)
        else:  # the attempt is lost with its node: the job is requeued, or fails
            first = cp.store.token_hash(job_id)
            # its cluster vanishes (every node gone): the Core's liveness check sees it
            cp.gate.delete_cluster(cp.store.get(job_id, events=False).cluster_id or "")
            deadline = time.monotonic() + 30
            while cp.store.token_hash(job_id) == first:
                assert time.monotonic() < deadline, "the lost node went unnoticed"
                time.sleep(0.05)
        _until_gone(options, prefix, mine)
        # the other job's attempt is live: its upload stays, and it can still finish it
        assert theirs in _open_ids(options, prefix)
        assert cp.store.open_uploads(job_id) == []
        assert [u[0] for u in cp.store.open_uploads(other_id)] == [theirs]


def test_a_completed_upload_is_forgotten(
        prefix: str, s3_bucket: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    options = s3_bucket[1]
    data = tmp_path / "out.bin"
    data.write_bytes(b"y" * BIG)
    with TestControlPlane(tmp_path / "cp", storage=_storage(prefix, options)) as cp:
        job_id, agent = _running(cp)
        assert agent.put_file("outputs/out.bin", data).size == BIG
        assert cp.store.open_uploads(job_id) == []
        assert _open_ids(options, prefix) == set()


def test_the_start_up_sweep_aborts_what_a_stopped_control_plane_left(
        prefix: str, s3_bucket: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    options = s3_bucket[1]
    storage = _storage(prefix, options)
    bucket, root = prefix.split("/", 1)
    raw = _raw(options)
    with TestControlPlane(tmp_path / "cp", storage=storage) as cp:
        job_id, agent = _running(cp)
        recorded = _left_open(agent)
    # the control plane stopped just after the attempt's end was committed, before it
    # could abort: the store says the attempt is over, S3 still holds the upload
    store = JobStore(tmp_path / "cp" / "jobs.db")
    store.transition(job_id, JobState.FAILED, "the node died", token_hash=None)
    store.close()
    # one opened just before a crash, never recorded; and one of a job not ours
    unrecorded = raw.call_s3("create_multipart_upload", Bucket=bucket,
                             Key=f"{root}/jobs/{job_id}/outputs/late.bin")["UploadId"]
    stranger = raw.call_s3("create_multipart_upload", Bucket=bucket,
                           Key=f"{root}/jobs/not-a-job-of-ours/outputs/x.bin")["UploadId"]
    assert {recorded, unrecorded, stranger} <= _open_ids(options, prefix)
    with TestControlPlane(tmp_path / "cp", storage=storage) as cp:
        _until_gone(options, prefix, recorded)
        _until_gone(options, prefix, unrecorded)
        assert stranger in _open_ids(options, prefix)
        assert cp.store.open_uploads(job_id) == []
        # a live attempt's upload survives a sweep, recorded or not
        live_id, live = _running(cp)
        kept = _left_open(live)
        kept_unrecorded = raw.call_s3("create_multipart_upload", Bucket=bucket,
                                      Key=f"{root}/jobs/{live_id}/outputs/y.bin")["UploadId"]
        cp.service.uploads.sweep()
        assert {kept, kept_unrecorded, stranger} <= _open_ids(options, prefix)
    raw.call_s3("abort_multipart_upload", Bucket=bucket,
                Key=f"{root}/jobs/not-a-job-of-ours/outputs/x.bin", UploadId=stranger)
