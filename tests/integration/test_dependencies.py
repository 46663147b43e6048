"""Jobs that wait for jobs, on a real control plane (local Ray, the local gate, mutual TLS):
``--dependency`` chains, ``afternotok``, a failed upstream, a function pipeline, a restart."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyport
from skyport.errors import JobFailedError
from skyport.models import JobState
from skyport.script import build_spec

from .conftest import until_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
S = JobState


def _script(body: str, directives: str = "") -> str:
    return f"#!/bin/bash\n#SKYPORT --cpus-per-node=1 --time=5m {directives}\n{body}\n"



@pytest.fixture
def go_on() -> Iterator[Path]:
    """A file whose appearance lets a waiting payload end (where the payload's user sees it)."""
    signals = Path(tempfile.mkdtemp(prefix="sp-go-", dir="/var/tmp"))  # a node has its own /tmp
    signals.chmod(0o755)
    yield signals / "go-on"
    shutil.rmtree(signals, ignore_errors=True)


def _waits_for(path: Path, then: str = "true") -> str:
    return f"for i in $(seq 1200); do [ -e {path} ] && break; sleep 0.2; done\n{then}"


def test_an_afterok_chain_of_three_runs_in_order(admin, go_on: Path) -> None:
    first = admin.submit(build_spec(_script(_waits_for(go_on, "echo one")))).id
    second = admin.submit(build_spec(_script("echo two", f"--dependency=afterok:{first}"))).id
    third = admin.submit(build_spec(_script("echo three", f"--dependency=afterok:{second}"))).id
    until_job(admin, first, lambda j: j.state == S.RUNNING, "the first to run")
    waiting = admin.job(second)
    assert (waiting.state, waiting.wait_reason) == (S.QUEUED, "Dependency")
    assert first in (waiting.wait_detail or "")
    assert admin.job(third).wait_detail == f"waits for afterok: {second} (QUEUED)"
    go_on.touch()
    jobs = [admin.wait(j, timeout=180) for j in (first, second, third)]
    assert [j.state for j in jobs] == [S.SUCCEEDED] * 3, [(j.state, j.reason) for j in jobs]
    assert [admin.logs(j.id).data for j in jobs] == [b"one\n", b"two\n", b"three\n"]
    for before, after in zip(jobs, jobs[1:], strict=False):
        assert after.started_at is not None and before.ended_at is not None
        assert after.started_at >= before.ended_at


def test_afternotok_runs_only_after_a_failure(admin) -> None:
    fails = admin.submit(build_spec(_script("exit 3"))).id
    works = admin.submit(build_spec(_script("true"))).id
    rescue = admin.submit(build_spec(_script("echo rescue", f"--dependency=afternotok:{fails}")))
    unneeded = admin.submit(build_spec(_script("echo no", f"--dependency=afternotok:{works}")))
    assert admin.wait(rescue.id, timeout=180).state == S.SUCCEEDED
    assert admin.job(fails).state == S.FAILED
    assert admin.logs(rescue.id).data == b"rescue\n"
    ended = admin.wait(unneeded.id, timeout=180)
    assert (ended.state, ended.reason) == (S.CANCELLED, f"dependency {works} ended SUCCEEDED")
    assert ended.started_at is None


def test_a_dependency_on_a_failed_job_cancels_the_dependant_with_the_reason(
        admin, go_on: Path) -> None:
    upstream = admin.submit(build_spec(_script(_waits_for(go_on, "exit 1")))).id
    dependant = admin.submit(build_spec(_script("echo never",
                                                f"--dependency=afterok:{upstream}"))).id
    chained = admin.submit(build_spec(_script("echo never",
                                              f"--dependency=afterany:{upstream},"
                                              f"afterok:{dependant}"))).id
    until_job(admin, dependant, lambda j: j.wait_reason == "Dependency", "the Dependency reason")
    go_on.touch()
    ended = admin.wait(dependant, timeout=180)
    assert (ended.state, ended.reason) == (S.CANCELLED, f"dependency {upstream} ended FAILED")
    assert admin.wait(chained, timeout=60).reason == f"dependency {dependant} ended CANCELLED"
    assert admin.job(upstream).state == S.FAILED


def test_afterok_on_an_array_runs_after_every_task_and_a_failed_task_cancels(admin) -> None:
    good = admin.submit_array(build_spec(_script("sleep 1; echo task $SKYPORT_ARRAY_TASK_ID",
                                                 "--array=0-2")))
    after_all = admin.submit(build_spec(_script("echo after", f"--dependency=afterok:{good.id}")))
    bad = admin.submit_array(build_spec(_script(
        '[ "$SKYPORT_ARRAY_TASK_ID" = 1 ] && exit 5; sleep 1', "--array=0-2")))
    doomed = admin.submit(build_spec(_script("echo never", f"--dependency=afterok:{bad.id}")))
    ran = admin.wait(after_all.id, timeout=240)
    assert ran.state == S.SUCCEEDED, (ran.state, ran.reason)
    assert admin.logs(ran.id).data == b"after\n"
    tasks = [admin.job(t) for t in good.task_ids()]
    assert [t.state for t in tasks] == [S.SUCCEEDED] * 3
    assert ran.started_at is not None
    assert all(t.ended_at is not None and t.ended_at <= ran.started_at for t in tasks)
    ended = admin.wait(doomed.id, timeout=240)
    assert (ended.state, ended.reason, ended.started_at) == (
        S.CANCELLED, f"dependency {bad.id} ended FAILED (task {bad.id}_1)", None)
    assert admin.job(f"{bad.id}_1").state == S.FAILED


def test_a_function_pipeline_passes_results_between_jobs(controlplane) -> None:
    @skyport.job(cpus=1, time="3m", home=controlplane.home)
    def prepare(n: int) -> list[int]:
        return [i * i for i in range(n)]

    @skyport.job(cpus=1, time="3m", home=controlplane.home)
    def solve(squares: list[int], offset: int = 0) -> int:
        return sum(squares) + offset

    @skyport.job(cpus=1, time="3m", home=controlplane.home)
    def broken(n: int) -> int:
        raise ValueError(f"cannot prepare {n}")

    a = prepare.submit(5)
    b = solve.submit(a, offset=100)
    assert b.result(timeout=240) == 0 + 1 + 4 + 9 + 16 + 100
    bad = broken.submit(3)
    after_bad = solve.submit(bad)
    with pytest.raises(JobFailedError, match=f"upstream job {bad.id} failed"):
        after_bad.result(timeout=240)
    assert bad.state == S.FAILED


def test_dependencies_survive_a_restart(fresh_controlplane, go_on: Path) -> None:
    cp = fresh_controlplane()
    with cp.client() as c:
        upstream = c.submit(build_spec(_script(_waits_for(go_on, "echo up")))).id
        dependant = c.submit(build_spec(_script("echo down",
                                                f"--dependency=afterok:{upstream}"))).id
        until_job(c, upstream, lambda j: j.state == S.RUNNING, "the upstream to run")
        assert c.job(dependant).wait_reason == "Dependency"
    cp.stop()
    cp.start()
    with cp.client() as c:
        kept = c.job(dependant)
        assert (kept.state, kept.wait_reason) == (S.QUEUED, "Dependency")
        assert kept.spec.dependency == f"afterok:{upstream}"
        go_on.touch()
        assert c.wait(upstream, timeout=180).state == S.SUCCEEDED
        done = c.wait(dependant, timeout=180)
        assert done.state == S.SUCCEEDED and c.logs(dependant).data == b"down\n"
