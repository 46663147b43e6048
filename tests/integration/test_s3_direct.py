"""The direct data path on S3 (moto's server): agents move the bytes, the Core signs.

An agent's files go to and come from object storage through presigned URLs the
Core issues per file, on the attempt's live token, for that job's prefix only;
the control plane relays none of the bytes and records each file's checksum.
Moto checks neither signatures nor expiry of presigned URLs, so the attack
tests go through ``StrictS3``: a proxy in front of moto that checks them as S3
does (botocore's own SigV4 code, with the storage's secret).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
import pytest
import s3fs

from skyport.agent.client import AgentClient
from skyport.client.testing import TestControlPlane
from skyport.direct import DirectAccess
from skyport.errors import (
    AuthenticationError,
    PermissionDeniedError,
    SkyportError,
    ValidationError,
)
from skyport.models import JobState
from skyport.protocol import DirectReadAnswer, DirectWriteAnswer
from skyport.script import build_spec
from skyport.storage import JobStorage
from tests.conftest import S3_SECRET

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SCRIPT = "#!/bin/bash\n#SKYPORT --name=direct --output=out.bin\ntrue\n"
MiB = 1 << 20


def check_presigned(method: str, url: str, secret: str, now: datetime) -> str | None:
    """Why S3 would refuse this presigned request (expired, bad signature), or None."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query, keep_blank_values=True))
    signed_at = datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if now > signed_at + timedelta(seconds=int(q["X-Amz-Expires"])):
        return "AccessDenied: Request has expired"
    key_id, _, region, service, _ = q["X-Amz-Credential"].split("/")
    # the canonical query is the raw one, less the signature (botocore sorts it)
    unsigned = "&".join(p for p in parts.query.split("&")
                        if not p.startswith("X-Amz-Signature="))
    request = AWSRequest(method=method, url=urlunsplit(parts._replace(query=unsigned)),
                         headers={"host": parts.netloc})
    request.context["timestamp"] = q["X-Amz-Date"]
    auth = S3SigV4QueryAuth(Credentials(key_id, secret), service, region,
                            expires=int(q["X-Amz-Expires"]))
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)),
                               request)
    if not hmac.compare_digest(signature, q["X-Amz-Signature"]):
        return "SignatureDoesNotMatch"
    return None


class StrictS3:
    """A proxy to moto that refuses presigned requests S3 would refuse."""

    def __init__(self, upstream: str, secret: str) -> None:
        owner = self
        self.refused: list[str] = []
        self.checked = 0  # presigned requests checked

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "Signature=" in self.path:
                    owner.checked += 1
                    why = check_presigned(self.command, f"http://{self.headers['Host']}"
                                          f"{self.path}", secret, datetime.now(UTC))
                    if why is not None:
                        owner.refused.append(why)
                        data = why.encode()
                        self.send_response(403)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                resp = httpx.request(self.command, upstream + self.path, headers=headers,
                                     content=body, timeout=120)
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length",
                                         "content-encoding"):
                        self.send_header(k, v)
                data = b"" if self.command == "HEAD" else resp.content
                self.send_header("Content-Length", str(
                    resp.headers.get("content-length", len(data))
                    if self.command == "HEAD" else len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def strict(s3_server: str) -> Iterator[StrictS3]:
    proxy = StrictS3(s3_server, S3_SECRET)
    yield proxy
    proxy.close()


def options_via(endpoint: str, options: dict[str, Any]) -> dict[str, Any]:
    return {**options, "client_kwargs": {"endpoint_url": endpoint},
            "skip_instance_cache": True}


def raw(options: dict[str, Any]) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(**options, skip_instance_cache=True, use_listings_cache=False)


@pytest.fixture
def prefix(s3_bucket: tuple[str, dict[str, Any]]) -> str:
    return f"{s3_bucket[0]}/{uuid.uuid4().hex[:12]}"


def running_job(cp: TestControlPlane) -> tuple[str, AgentClient]:
    job = cp.client().submit(build_spec(SCRIPT))
    agents = cp.start(job.id)
    return job.id, agents[0]


def test_agents_move_bytes_straight_to_storage(
        prefix: str, s3_bucket: tuple[str, dict[str, Any]], strict: StrictS3,
        tmp_path: Path) -> None:
    options = options_via(strict.url, s3_bucket[1])
    storage = JobStorage(f"s3://{prefix}", options)
    big = tmp_path / "out.bin"
    big.write_bytes(os.urandom(40 * MiB + 123))  # three parts
    small = tmp_path / "small.txt"
    small.write_bytes(b"small\n")
    with TestControlPlane(tmp_path / "cp", storage=storage) as cp:
        job_id, agent = running_job(cp)
        storage.put(job_id, "inputs/data.bin", b"input bytes" * 1000)
        cp.requests.clear()
        assert agent.put_file("outputs/out.bin", big).size == big.stat().st_size
        assert agent.put_file("outputs/small.txt", small).size == 6
        assert agent.put_file("checkpoints/v1/state.bin", small).size == 6
        assert agent.download("inputs/data.bin", tmp_path / "in.bin") == 11000
        assert agent.download("checkpoints/v1/state.bin", tmp_path / "state.bin") == 6
        assert agent._direct is True
        # the control plane saw requests for URLs, not the bytes
        assert sum(len(r.content) for r in cp.requests) < 64 * 1024
        assert not any("/files/" in r.url.path for r in cp.requests)
        assert (tmp_path / "in.bin").read_bytes() == b"input bytes" * 1000
        # every file with the checksum the Core recorded, readable by the user
        listed = {f.path: f for f in cp.client().files(job_id)}
        assert listed["outputs/out.bin"].sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
        assert listed["outputs/out.bin"].size == big.stat().st_size
        assert listed["outputs/small.txt"].sha256 == hashlib.sha256(b"small\n").hexdigest()
        assert cp.client().download(job_id, "outputs/out.bin") == big.read_bytes()
        stored = raw(s3_bucket[1]).find(f"{prefix}/jobs/{job_id}")
        assert not [p for p in stored if p.endswith(".skyport-part")]
        # every URL went through the strict proxy and passed its checks
        assert strict.refused == []
        assert strict.checked >= 6
        # the storage's secret never reaches an agent: URLs carry a signature, not the key
        assert S3_SECRET not in str([r.content for r in cp.requests])


def _write_plan(agent: AgentClient, path: str, size: int = 10) -> DirectWriteAnswer:
    return agent._call(DirectWriteAnswer, "POST", "/direct/write",
                       json={"path": path, "size": size})


def _read_plan(agent: AgentClient, path: str) -> DirectReadAnswer:
    return agent._call(DirectReadAnswer, "POST", "/direct/read", json={"path": path})


def test_urls_only_for_the_jobs_own_files(prefix: str, s3_bucket: tuple[str, dict[str, Any]],
                                          tmp_path: Path) -> None:
    storage = JobStorage(f"s3://{prefix}", options_via(s3_bucket[1]["client_kwargs"]
                                                       ["endpoint_url"], s3_bucket[1]))
    with TestControlPlane(tmp_path / "cp", storage=storage) as cp:
        job_a, agent = running_job(cp)
        job_b, agent_b = running_job(cp)
        storage.put(job_b, "inputs/secret.txt", b"b's data")
        for path in (f"../{job_b}/outputs/x", "outputs/../../" + job_b + "/outputs/x",
                     "/etc/passwd", "outputs/a/../../x", "inputs/x", "script.sh",
                     "checkpoints/latest.json", "logs/stdout"):
            with pytest.raises((PermissionDeniedError, ValidationError)):
                _write_plan(agent, path)
        for path in (f"../{job_b}/inputs/secret.txt", "outputs/out.bin", "logs/stdout",
                     "inputs/../../" + job_b + "/inputs/secret.txt", "/inputs/x"):
            with pytest.raises((PermissionDeniedError, ValidationError)):
                _read_plan(agent, path)
        for path in ("outputs/x.skyport-sha256", "outputs/x.skyport-part"):
            with pytest.raises(ValidationError):
                _write_plan(agent, path)
        with pytest.raises(ValidationError):
            _write_plan(agent, "outputs/huge", 6 << 40)
        # another job's id with this job's token: no URL at all
        with cp.agent(job_b, cp.agents(job_a).token) as thief:
            with pytest.raises((AuthenticationError, PermissionDeniedError)):
                _read_plan(thief, "inputs/secret.txt")
            with pytest.raises((AuthenticationError, PermissionDeniedError)):
                _write_plan(thief, "outputs/x")
        # completing another job's upload, or a size other than what arrived: refused,
        # nothing kept
        plan_b = _write_plan(agent_b, "outputs/big.bin", 40 * MiB)
        assert plan_b.upload_id
        with pytest.raises(ValidationError, match="an upload opened for outputs/big.bin"):
            agent._call(DirectReadAnswer, "POST", "/direct/done", json={
                "path": "outputs/big.bin", "upload_id": plan_b.upload_id,
                "etags": ['"x"'] * 3, "size": 40 * MiB, "sha256": "0" * 64})
        plan = _write_plan(agent, "outputs/short.bin", 10)
        assert plan.upload_id == "" and len(plan.urls) == 1
        assert httpx.put(plan.urls[0], content=b"12345").status_code == 200
        with pytest.raises(SkyportError, match="holds 5 bytes, not the 10"):
            agent._call(DirectReadAnswer, "POST", "/direct/done", json={
                "path": "outputs/short.bin", "upload_id": "", "etags": [], "size": 10,
                "sha256": "0" * 64})
        assert not [f for f in storage.listdir(job_a) if f["path"].startswith("outputs/")]
        # an ended attempt's token gets no new URL
        cp.agents(job_a).exit(0)
        cp.wait_state(job_a, JobState.SUCCEEDED)
        with pytest.raises(SkyportError):
            _read_plan(agent, "inputs/x")


def test_expired_and_retargeted_urls_are_refused(
        prefix: str, s3_bucket: tuple[str, dict[str, Any]], strict: StrictS3) -> None:
    storage = JobStorage(f"s3://{prefix}", options_via(strict.url, s3_bucket[1]))
    storage.put("job-a", "inputs/data.txt", b"a's data")
    storage.put("job-b", "inputs/data.txt", b"b's data")
    fresh = DirectAccess(storage).read("job-a", "inputs/data.txt")
    assert httpx.get(fresh.url).content == b"a's data"
    assert f"X-Amz-Expires={fresh.expires_in}" in fresh.url
    # the same URL pointed at another job's key: the signature covers the key
    other = fresh.url.replace("/job-a/", "/job-b/")
    assert httpx.get(other).status_code == 403
    assert strict.refused[-1] == "SignatureDoesNotMatch"
    # a URL past its lifetime
    short = DirectAccess(storage, ttl_s=1)
    url = short.read("job-a", "inputs/data.txt").url
    plan = short.start_write("job-a", "outputs/late.txt", 4)
    time.sleep(2.5)
    assert httpx.get(url).status_code == 403
    assert strict.refused[-1] == "AccessDenied: Request has expired"
    assert httpx.put(plan.urls[0], content=b"late").status_code == 403
    assert not storage.exists("job-a", "outputs/late.txt")


def test_file_storage_keeps_the_streaming_routes(tmp_path: Path) -> None:
    data = tmp_path / "out.bin"
    data.write_bytes(b"x" * 1000)
    with TestControlPlane(tmp_path / "cp") as cp:
        job_id, agent = running_job(cp)
        assert _write_plan(agent, "outputs/out.bin").urls == []
        assert agent.put_file("outputs/out.bin", data).size == 1000
        assert agent._direct is False
        assert any("/files/outputs/out.bin" in r.url.path for r in cp.requests)
