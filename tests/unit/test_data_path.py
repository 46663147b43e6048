"""Files of any size between agents, storage and users: streamed, checked, never lost quietly.

Against the real API and Core in this process (``TestControlPlane``); the agent's
staging code (``skyport.agent.transfer``) runs with a real ``AgentClient``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from skyport.agent.client import AgentClient
from skyport.agent.transfer import Progress, expand_outputs, stage_in, stage_out
from skyport.api.app import MAX_BODY_BYTES
from skyport.client.core import PART_SUFFIX
from skyport.client.testing import BASE_URL, TestControlPlane
from skyport.errors import SkyportError, StorageError
from skyport.models import JobSpec, JobState


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    with TestControlPlane(tmp_path / "cp") as cp:
        yield cp


def started(cp: TestControlPlane, outputs: tuple[str, ...] = ()) -> tuple[str, AgentClient]:
    job = cp.client().submit(JobSpec(name="data", script="#!/bin/bash\ntrue\n",
                                     outputs=outputs))
    agents = cp.start(job.id)
    return job.id, agents[0]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_agent_upload_larger_than_the_body_limit_is_stored_whole(
        cp: TestControlPlane, tmp_path: Path) -> None:
    job_id, agent = started(cp)
    src = tmp_path / "big.bin"
    data = os.urandom(1 << 20) * (MAX_BODY_BYTES // (1 << 20) + 1)
    src.write_bytes(data)
    answer = agent.put_file("outputs/big.bin", src)
    assert (answer.size, answer.sha256) == (len(data), sha(data))
    assert cp.storage.stat(job_id, "outputs/big.bin") == (len(data), sha(data))


def test_an_upload_whose_named_digest_differs_is_refused_and_not_kept(
        cp: TestControlPlane) -> None:
    job_id, agent = started(cp)
    resp = agent._http.put("/files/outputs/x", content=b"abc",
                           headers={"X-Skyport-Sha256": sha(b"abd")})
    assert resp.status_code == 422, resp.text
    assert "sha256" in resp.text
    assert not cp.storage.exists(job_id, "outputs/x")
    assert cp.storage.listdir(job_id) == [
        f for f in cp.storage.listdir(job_id) if f["path"] != "outputs/x"]


def test_a_user_download_is_ranged_and_names_its_checksum(cp: TestControlPlane,
                                                          tmp_path: Path) -> None:
    job_id, agent = started(cp)
    data = bytes(range(256)) * 100
    (tmp_path / "f").write_bytes(data)
    agent.put_file("outputs/f", tmp_path / "f")
    client = cp.client()
    whole = client._http.get(f"/v1/jobs/{job_id}/files/outputs/f")
    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers["X-Skyport-Sha256"] == sha(data)
    part = client._http.get(f"/v1/jobs/{job_id}/files/outputs/f",
                            headers={"Range": "bytes=1000-"})
    assert part.status_code == 206
    assert part.content == data[1000:]
    assert part.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    bad = client._http.get(f"/v1/jobs/{job_id}/files/outputs/f",
                           headers={"Range": "bytes=99999999-"})
    assert bad.status_code == 422
    listed = {f.path: f for f in client.files(job_id)}
    assert listed["outputs/f"].sha256 == sha(data)


def test_fetch_goes_on_from_an_interrupted_part_and_checks_the_whole(
        cp: TestControlPlane, tmp_path: Path) -> None:
    job_id, agent = started(cp)
    data = os.urandom(3 << 20)
    (tmp_path / "src").write_bytes(data)
    agent.put_file("outputs/r.bin", tmp_path / "src")
    client = cp.client()
    dest = tmp_path / "dest"
    target = dest / "outputs" / "r.bin"
    target.parent.mkdir(parents=True)
    part = target.with_name(target.name + PART_SUFFIX)
    part.write_bytes(data[: 1 << 20])  # what an interrupted fetch left
    cp.requests.clear()
    seen: list[tuple[str, int, int]] = []
    client.fetch(job_id, dest, lambda name, done, total: seen.append((name, done, total)))
    assert target.read_bytes() == data
    assert not part.exists()
    ranged = [r for r in cp.requests if r.url.path.endswith("/outputs/r.bin")]
    assert [r.headers.get("range") for r in ranged] == [f"bytes={1 << 20}-"]
    assert [s for s in seen if s[0] == "outputs/r.bin"][-1] == (
        "outputs/r.bin", len(data), len(data))
    # a part that does not match what is stored: the digest check throws it away
    target.unlink()
    part.write_bytes(b"\0" * 100)
    with pytest.raises(StorageError, match="sha256"):
        client.download_to(job_id, "outputs/r.bin", target)
    assert not part.exists() and not target.exists()
    client.fetch(job_id, dest)
    assert target.read_bytes() == data


def test_fetch_does_not_download_again_what_is_already_there(cp: TestControlPlane,
                                                             tmp_path: Path) -> None:
    job_id, agent = started(cp)
    (tmp_path / "src").write_bytes(b"result")
    agent.put_file("outputs/r", tmp_path / "src")
    client = cp.client()
    client.fetch(job_id, tmp_path / "d")
    cp.requests.clear()
    client.fetch(job_id, tmp_path / "d")
    assert not [r for r in cp.requests if "/files/outputs/r" in r.url.path]


def workdir_with_results(tmp_path: Path) -> Path:
    wd = tmp_path / "work"
    (wd / "results" / "deep").mkdir(parents=True)
    (wd / "results" / "a.txt").write_bytes(b"a")
    (wd / "results" / "deep" / "b.txt").write_bytes(b"bb")
    (wd / "x.h5").write_bytes(b"x")
    (wd / "y.h5").write_bytes(b"yy")
    (wd / "other.txt").write_bytes(b"no")
    return wd


def test_outputs_take_directories_and_globs_with_their_paths(tmp_path: Path) -> None:
    wd = workdir_with_results(tmp_path)
    (tmp_path / "secret").write_bytes(b"s")
    (wd / "z.h5").symlink_to(tmp_path / "secret")
    files, missing, refused = expand_outputs(wd, ["results/", "*.h5", "none/", "*.nc"])
    assert [rel for rel, _ in files] == ["results/a.txt", "results/deep/b.txt", "x.h5", "y.h5"]
    assert missing == ["none", "*.nc"]
    assert refused == ["z.h5"]


def test_stage_out_saves_every_file_and_the_job_ends_with_them(cp: TestControlPlane,
                                                               tmp_path: Path) -> None:
    job_id, agent = started(cp, ("results/", "*.h5"))
    wd = workdir_with_results(tmp_path)
    agent.set_state(JobState.STAGING_OUT.value, "payload exited with 0")
    notes: list[str] = []
    got = stage_out(agent, wd, ["results/", "*.h5"], notes.append, parallel=3)
    assert got.problems == ()
    assert sorted(got.saved) == ["results/a.txt", "results/deep/b.txt", "x.h5", "y.h5"]
    assert notes[-1] == "staged out 6 B of 6 B"
    job = agent.exit(0, False, "exit code 0", list(got.problems))
    assert job.state is JobState.SUCCEEDED
    listed = {f.path: f.sha256 for f in cp.client().files(job_id)}
    assert listed["outputs/results/deep/b.txt"] == sha(b"bb")
    assert listed["outputs/y.h5"] == sha(b"yy")


def test_a_missing_output_ends_the_job_failed_with_the_reason(cp: TestControlPlane,
                                                              tmp_path: Path) -> None:
    job_id, agent = started(cp, ("out.bin",))
    (tmp_path / "work").mkdir()
    agent.set_state(JobState.STAGING_OUT.value, "payload exited with 0")
    got = stage_out(agent, tmp_path / "work", ["out.bin"], lambda text: None)
    assert got.problems == ("missing outputs: out.bin",)
    job = agent.exit(0, False, "exit code 0; missing outputs: out.bin", list(got.problems))
    assert job.state is JobState.FAILED
    assert job.exit_code == 0
    assert job.events[-1].reason == "exit code 0; missing outputs: out.bin"


class _FailingPuts(httpx.BaseTransport):
    """The control plane's transport, except that writes of ``outputs/`` fail."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "/files/outputs/" in request.url.path:
            return httpx.Response(507, json={"error": "StorageError",
                                             "message": "the disk is full"})
        return self.inner.handle_request(request)


def test_an_output_that_cannot_be_saved_ends_the_job_failed(cp: TestControlPlane,
                                                            tmp_path: Path) -> None:
    job_id, agent = started(cp, ("x.h5",))
    failing = AgentClient(BASE_URL, job_id, cp.agents(job_id).token, retry_for_s=0,
                          transport=_FailingPuts(agent._http._transport))
    wd = workdir_with_results(tmp_path)
    failing.set_state(JobState.STAGING_OUT.value, "payload exited with 0")
    slept: list[float] = []
    got = stage_out(failing, wd, ["x.h5"], lambda text: None, sleep=slept.append)
    assert slept == [2.0, 4.0]  # the storage's error was tried three times
    assert got.saved == ()
    assert got.problems == ("outputs not saved: x.h5 (the disk is full)",)
    job = failing.exit(0, False, "exit code 0; " + got.problems[0], list(got.problems))
    assert job.state is JobState.FAILED
    assert "the disk is full" in job.events[-1].reason


def test_stage_in_fetches_every_input_and_reports_progress_as_events(
        cp: TestControlPlane, tmp_path: Path) -> None:
    job_id, agent = started(cp)
    # inputs are staged by the Core before the agents run; put them there the same way
    for name, data in (("inputs/a.dat", b"A" * 1000), ("inputs/sub/b.dat", b"B" * 3000)):
        cp.storage.put(job_id, name, data)
    wd = tmp_path / "work"
    wd.mkdir()
    reports: list[str] = []
    got = stage_in(agent, wd, reports.append, parallel=2)
    assert sorted(got) == [("a.dat", 1000), ("sub/b.dat", 3000)]
    assert (wd / "sub" / "b.dat").read_bytes() == b"B" * 3000
    assert (wd / "script.sh").exists()
    assert reports[-1] == "staged in 4.0 KB of 4.0 KB"
    # the agent's progress calls become events of the job, its state unchanged
    agent.set_state(JobState.STAGING_OUT.value, "payload exited with 0")
    job = agent.set_state(JobState.STAGING_OUT.value, "staged out 1.2 GB of 3.4 GB")
    assert job.state is JobState.STAGING_OUT
    assert job.events[-1].reason == "staged out 1.2 GB of 3.4 GB"


def test_progress_is_told_now_and_then_and_a_failed_report_is_harmless() -> None:
    told: list[str] = []
    now = [0.0]

    def report(text: str) -> None:
        told.append(text)
        if len(told) == 2:
            raise SkyportError("control plane busy")

    p = Progress("staged out", 3_400_000_000, report, every_s=5, clock=lambda: now[0])
    p.add(1_000_000_000)
    assert told == []
    now[0] = 6
    p.add(200_000_000)
    now[0] = 12
    p.add(0)
    p.finish()
    assert told == ["staged out 1.2 GB of 3.4 GB", "staged out 1.2 GB of 3.4 GB",
                    "staged out 1.2 GB of 3.4 GB"]


def test_agents_cannot_write_the_checksum_records(cp: TestControlPlane) -> None:
    job_id, agent = started(cp)
    resp = agent._http.put("/files/outputs/a.skyport-sha256", content=b"0" * 64 + b" 1")
    assert resp.status_code == 422
    assert "skyport-sha256" in resp.text


def test_progress_bars_show_large_files_only(capsys: pytest.CaptureFixture[str]) -> None:
    from skyport.cli.progress import ProgressBars

    with ProgressBars(min_bytes=100) as bars:
        bars.update("small.txt", 5, 50)
        bars.update("big.bin", 100, 400)
        bars.update("big.bin", 400, 400)
    err = capsys.readouterr().err
    assert "big.bin" in err
    assert "small.txt" not in err


def test_fetch_can_take_one_prefix_only(cp: TestControlPlane, tmp_path: Path) -> None:
    job_id, agent = started(cp)
    (tmp_path / "src").write_bytes(b"result")
    agent.put_file("outputs/r", tmp_path / "src")
    got = cp.client().fetch(job_id, tmp_path / "d", prefix="outputs/")
    assert got == [tmp_path / "d" / "outputs" / "r"]
    assert not (tmp_path / "d" / "script.sh").exists()
