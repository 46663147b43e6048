"""Pushed waits: ``wait``, ``result()`` and ``logs -f`` are woken by the job's change.

The server holds a long-poll until the job's next transition (the Core's
``JobWaiters``, fed by the store's change hook) or log append (the API's, fed
by the agent routes); these tests show the call returning because of the event.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from skyport.cli import cli
from skyport.cli import jobs as jobs_module
from skyport.client.testing import TestControlPlane
from skyport.core import waiters as waiters_module
from skyport.core.waiters import MAX_WAIT_S, JobWaiters
from skyport.errors import NotFoundError, ValidationError
from skyport.models import Job, JobSpec, JobState
from skyport.pki import Identity

SPEC = JobSpec(name="hello", script="#!/bin/bash\necho hi\n")


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    with TestControlPlane(tmp_path / "cp") as cp:
        yield cp


def until(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    """Until ``condition()`` holds (a hang guard, not a speed bound)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    out: dict[str, object] = {}

    def body() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


# -- the waiter itself -------------------------------------------------------------------


def test_a_waiter_is_woken_by_notify_not_by_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiters_module, "MAX_WAIT_S", 3600.0)  # no timer could end this wait

    async def scenario() -> tuple[bool, int, int]:
        w = JobWaiters()
        task = asyncio.create_task(w.wait("j1", 3600.0))
        while w.waiting == 0:
            await asyncio.sleep(0)
        w.notify("j2")  # another job's change wakes nobody here
        await asyncio.sleep(0)
        assert not task.done()
        before = w.waiting
        w.notify("j1")
        return await task, before, w.waiting

    woke, before, after = asyncio.run(scenario())
    assert (woke, before, after) == (True, 1, 0)


def test_a_waiter_times_out_and_too_many_answer_at_once() -> None:
    async def scenario() -> tuple[bool, bool, int]:
        timed_out = await JobWaiters().wait("j1", 0.01)
        full = await JobWaiters(max_waiters=0).wait("j1", 3600.0)
        return timed_out, full, 0

    assert asyncio.run(scenario())[:2] == (False, False)


# -- the Core and the REST long-poll ---------------------------------------------------------


def test_the_core_wait_is_woken_by_the_transition(
        cp: TestControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiters_module, "MAX_WAIT_S", 3600.0)
    client = cp.client("alice")
    job = client.submit(SPEC)
    alice = Identity("alice", "user")
    waiting = asyncio.run_coroutine_threadsafe(
        cp.service.wait_job(alice, job.id, 3600.0), cp._loop)
    until(lambda: cp.service.waiters.waiting == 1)
    client.cancel(job.id)
    got: Job = waiting.result(timeout=60)  # a timer would hold it for an hour
    assert got.state is JobState.CANCELLED
    assert cp.service.waiters.waiting == 0


def test_wait_since_returns_on_the_next_transition(cp: TestControlPlane) -> None:
    client = cp.client("alice")
    job = client.submit(SPEC)
    agents = cp.agents(job.id)
    provisioning = cp.wait_state(job.id, JobState.PROVISIONING)
    t, out = in_thread(lambda: client.call(
        "GET", f"/v1/jobs/{job.id}/wait", Job,
        params={"timeout_s": MAX_WAIT_S, "since": provisioning.state.value}))
    until(lambda: cp.service.waiters.waiting == 1)
    agents.hello()
    t.join(60)
    assert isinstance(out.get("value"), Job), out
    assert out["value"].state is not JobState.PROVISIONING  # type: ignore[union-attr]


def test_a_long_poll_that_times_out_answers_the_current_state(cp: TestControlPlane) -> None:
    client = cp.client("alice")
    job = client.submit(SPEC)
    cp.agents(job.id)  # PROVISIONING; no agent calls in
    got = client.call("GET", f"/v1/jobs/{job.id}/wait", Job, params={"timeout_s": 0.05})
    assert got.id == job.id and got.state is JobState.PROVISIONING
    assert cp.service.waiters.waiting == 0


@pytest.mark.parametrize("value", ["-1", str(MAX_WAIT_S + 1), "nan", "soon"])
def test_a_bad_wait_bound_is_refused_naming_it(cp: TestControlPlane, value: str) -> None:
    client = cp.client("alice")
    job = client.submit(SPEC)
    with pytest.raises(ValidationError, match="timeout_s"):
        client.call("GET", f"/v1/jobs/{job.id}/wait", Job, params={"timeout_s": value})
    with pytest.raises(ValidationError, match="wait_s"):
        client.call("GET", f"/v1/jobs/{job.id}/logs/stdout", Job, params={"wait_s": value})
    assert cp.service.waiters.waiting == 0


def test_another_users_job_cannot_be_waited_on(cp: TestControlPlane) -> None:
    job = cp.client("alice").submit(SPEC)
    bob = cp.client("bob")
    with pytest.raises(NotFoundError):
        bob.wait(job.id, timeout=5)
    with pytest.raises(NotFoundError):
        bob.logs(job.id, wait_s=5)
    with pytest.raises(NotFoundError):
        bob.call("GET", "/v1/jobs/nosuchjob/wait", Job, params={"timeout_s": 1})
    assert cp.service.waiters.waiting == 0
    assert cp.app.state.log_events.waiting == 0


def test_result_of_a_function_job_is_pushed(cp: TestControlPlane) -> None:
    import skyport

    square = skyport.job(client=cp.client("alice"), cpus=1)(lambda x: x * x)
    handle = square.submit(7)
    t, out = in_thread(lambda: handle.result(timeout=120))
    until(lambda: cp.service.waiters.waiting == 1)  # result() is held by the server
    cp.run_function(handle.id)
    t.join(120)
    assert out == {"value": 49}


# -- logs -f ----------------------------------------------------------------------------------


def test_a_log_long_poll_is_woken_by_the_append(cp: TestControlPlane) -> None:
    client = cp.client("alice")
    job = client.submit(SPEC)
    agents = cp.start(job.id)
    agents.write(stdout=b"one\n")
    t, out = in_thread(lambda: client.logs(job.id, offset=4, wait_s=MAX_WAIT_S))
    until(lambda: cp.app.state.log_events.waiting == 1)
    agents.write(stdout=b"two\n")
    t.join(60)
    chunk = out["value"]
    assert chunk.data == b"two\n" and chunk.size == 8  # type: ignore[attr-defined]
    assert cp.app.state.log_events.waiting == 0


def test_logs_follow_prints_as_the_job_writes_and_ends_with_it(
        cp: TestControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("skyport.cli.app.client_factory", lambda home, user: cp.client("alice"))
    monkeypatch.setattr(jobs_module, "FOLLOW_WAIT_S", MAX_WAIT_S)
    job = cp.client("alice").submit(SPEC)
    agents = cp.start(job.id)
    t, out = in_thread(lambda: CliRunner().invoke(cli, ["logs", job.id, "-f"]))

    def held() -> bool:
        return cp.app.state.log_events.waiting == 1

    until(held)
    agents.write(stdout=b"one\n")
    until(lambda: not held())
    until(held)
    agents.write(stdout=b"two\n")
    until(lambda: not held())
    until(held)
    agents.exit(0)  # the state report wakes the follower, which sees the end
    t.join(60)
    result = out["value"]
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert result.stdout == "one\ntwo\n"  # type: ignore[attr-defined]
