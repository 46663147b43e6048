"""``--dependency``: parsing, refusal, waiting, cancelling, chains, function pipelines.

The pure parts first (the text, the verdicts); then through the real REST API
and Core in-process (``TestControlPlane``), playing the agents by hand.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import skyport
from skyport.client.testing import TestControlPlane
from skyport.core.dependencies import Upstream, waiting_for
from skyport.dependencies import Condition, parse_dependency
from skyport.errors import JobFailedError, ValidationError
from skyport.models import Job, JobSpec, JobState, Resources
from skyport.runtime.contract import upstream_input_name, upstream_url
from skyport.store import JobStore

S = JobState

# -- the text ------------------------------------------------------------------------


def test_conditions_are_merged_by_type_in_one_canonical_form() -> None:
    conds = parse_dependency("singleton,afterok:b:a,afterany:c,afterok:a:d")
    assert conds == (Condition("afterany", ("c",)), Condition("afterok", ("b", "a", "d")),
                     Condition("singleton"))
    assert JobSpec(script="x", dependency="singleton,afterok:b:a").dependency == \
        "afterok:b:a,singleton"


@pytest.mark.parametrize(("text", "says"), [
    ("", "an empty dependency"),
    ("afterok", "afterok needs at least one job id"),
    ("afterok:", "'' is not a job id"),
    ("before:1", "unknown type 'before'"),
    ("AFTEROK:1", "unknown type 'AFTEROK'"),
    ("afterok:1?afterany:2", "'?' (any of the conditions) is not offered"),
    ("singleton:1", "singleton takes no job id"),
    ("afterok:../x", "'../x' is not a job id"),
    ("afterok:a/b", "'a/b' is not a job id"),
    ("afterok:1,,afterany:2", "unknown type ''"),
    ("afterok:" + ":".join(f"j{i}" for i in range(101)), "more than 100 job ids"),
    ("afterok:" + "a" * 9000, "9008 characters: at most 8192"),
])
def test_a_bad_dependency_is_refused_at_every_door_naming_what_is_allowed(text: str,
                                                                           says: str) -> None:
    from skyport.script import build_spec

    with pytest.raises(ValidationError) as info:
        build_spec(f"#!/bin/bash\n#SKYPORT --dependency={text}\ntrue\n")
    assert info.value.field == "--dependency" and info.value.value == text
    assert says in info.value.allowed and "afterok" in info.value.allowed
    with pytest.raises(ValidationError) as info:
        skyport.job(dependency=text)
    assert info.value.field == "dependency" and says in info.value.allowed


# -- the verdicts (pure) ------------------------------------------------------------------


def job(id: str, dependency: str | None = None, *, name: str = "j", owner: str = "alice",
        state: JobState = S.QUEUED, at: int = 0) -> Job:
    return Job(id=id, owner=owner, state=state, spec=JobSpec(
        name=name, script="x", dependency=dependency),
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=at))


def test_waiting_names_each_job_still_awaited_with_its_state() -> None:
    j = job("d", "afterok:a:b,after:c")
    facts = {"a": Upstream("a", S.SUCCEEDED, True), "b": Upstream("b", S.RUNNING, True),
             "c": Upstream("c", S.QUEUED, False)}
    assert waiting_for(j, facts) == "waits for after: c (QUEUED); afterok: b (RUNNING)"
    facts["c"] = Upstream("c", S.QUEUED, True)  # started once, then requeued: after holds
    facts["b"] = Upstream("b", S.SUCCEEDED, True)
    assert waiting_for(j, facts) is None


def test_singletons_of_one_name_and_owner_run_one_at_a_time_in_submission_order() -> None:
    first, second = job("s1", "singleton", at=1), job("s2", "singleton", at=2)
    namesakes = [first, second]
    assert waiting_for(first, {}, namesakes) is None
    assert waiting_for(second, {}, namesakes) == \
        "waits for singleton: job s1 of the same name is QUEUED"
    running = job("r", name="j", state=S.RUNNING)  # any job of that name, singleton or not
    assert "job r of the same name is RUNNING" in (waiting_for(first, {}, [running, first])
                                                   or "")
    others = [job("x", name="other", state=S.RUNNING), job("y", owner="bob", state=S.RUNNING)]
    assert waiting_for(first, {}, [*others, first]) is None


# -- through the REST API and the Core ----------------------------------------------------


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    with TestControlPlane(tmp_path / "cp", gate={"cpus": 4, "max_nodes": 4}) as plane:
        yield plane


def spec(dependency: str | None = None, name: str = "job") -> JobSpec:
    return JobSpec(name=name, script="#!/bin/bash\ntrue\n", dependency=dependency,
                   resources=Resources(cpus_per_node=1))


def until(cp: TestControlPlane, job_id: str, check, what: str) -> Job:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while True:
        found = cp.client().job(job_id)
        if check(found):
            return found
        assert time.monotonic() < deadline, (what, found.state, found.reason,
                                             found.wait_reason, found.wait_detail)
        time.sleep(0.01)


def stays_queued(cp: TestControlPlane, job_id: str) -> Job:
    time.sleep(0.2)  # several planning passes (replan_interval_s is 0.01 here)
    found = cp.client().job(job_id)
    assert found.state == S.QUEUED, (found.state, found.reason)
    return found


def test_a_dependant_waits_with_the_reason_then_runs_after_its_upstream_succeeds(
        cp: TestControlPlane) -> None:
    c = cp.client()
    a = c.submit(spec()).id
    b = c.submit(spec(f"afterok:{a}")).id
    waiting = stays_queued(cp, b)
    assert waiting.wait_reason == "Dependency"
    assert waiting.wait_detail == f"waits for afterok: {a} ({cp.store.get(a).state.value})"
    assert waiting.spec.dependency == f"afterok:{a}"
    assert b not in {e.job_id for e in c.timetable().entries}  # out of planning
    cp.run(a)
    cp.run(b)
    assert c.wait(b).state == S.SUCCEEDED


def test_a_dependency_that_can_never_hold_cancels_the_dependant_and_its_chain(
        cp: TestControlPlane) -> None:
    c = cp.client()
    a = c.submit(spec()).id
    b = c.submit(spec(f"afterok:{a}")).id
    d = c.submit(spec(f"afterany:{b}")).id  # b ends CANCELLED: afterany holds for d
    e = c.submit(spec(f"afterok:{b}")).id  # ... but afterok never will
    f = c.submit(spec(f"afterok:{e}")).id
    cp.run(a, exit_code=3)
    assert c.wait(a).state == S.FAILED
    ended = c.wait(b)
    assert (ended.state, ended.reason) == (S.CANCELLED, f"dependency {a} ended FAILED")
    assert c.wait(e).reason == f"dependency {b} ended CANCELLED"
    assert c.wait(f).reason == f"dependency {e} ended CANCELLED"
    cp.run(d)
    assert c.wait(d).state == S.SUCCEEDED


def test_afternotok_runs_only_after_a_failure(cp: TestControlPlane) -> None:
    c = cp.client()
    good, bad = c.submit(spec()).id, c.submit(spec()).id
    on_good = c.submit(spec(f"afternotok:{good}")).id
    on_bad = c.submit(spec(f"afternotok:{bad}")).id
    cp.run(good)
    assert c.wait(on_good).reason == f"dependency {good} ended SUCCEEDED"
    assert stays_queued(cp, on_bad).wait_reason == "Dependency"
    cp.run(bad, exit_code=1)
    cp.run(on_bad)
    assert c.wait(on_bad).state == S.SUCCEEDED


def test_after_waits_for_the_start_only(cp: TestControlPlane) -> None:
    c = cp.client()
    a = c.submit(spec()).id
    b = c.submit(spec(f"after:{a}")).id
    cp.wait_state(a, S.PROVISIONING)
    assert stays_queued(cp, b).wait_reason == "Dependency"
    agents = cp.start(a)  # RUNNING: b may go while a still runs
    cp.run(b)
    assert c.wait(b).state == S.SUCCEEDED
    assert c.job(a).state == S.RUNNING
    agents.exit(0)


def test_singletons_run_one_at_a_time(cp: TestControlPlane) -> None:
    c = cp.client()
    first = c.submit(spec("singleton", name="nightly")).id
    second = c.submit(spec("singleton", name="nightly")).id
    other = c.submit(spec("singleton", name="weekly")).id
    agents = cp.start(first)
    cp.run(other)  # another name: not held back
    waiting = stays_queued(cp, second)
    assert waiting.wait_detail == f"waits for singleton: job {first} of the same name is RUNNING"
    agents.exit(0)
    cp.run(second)
    assert c.wait(second).state == S.SUCCEEDED


def test_a_dependency_on_a_job_already_failed_cancels_at_once(cp: TestControlPlane) -> None:
    c = cp.client()
    a = c.submit(spec()).id
    cp.run(a, exit_code=2)
    c.wait(a)
    late = c.submit(spec(f"afterok:{a}"))
    assert (late.state, late.reason) == (S.CANCELLED, f"dependency {a} ended FAILED")


def test_unknown_and_other_users_job_ids_are_refused_alike(cp: TestControlPlane) -> None:
    theirs = cp.client("bob").submit(spec()).id
    answers = []
    for target in (theirs, "0badc0de"):
        with pytest.raises(ValidationError) as info:
            cp.client("alice").submit(spec(f"afterok:{theirs}:{target}"
                                           if target != theirs else f"afterany:{target}"))
        assert info.value.http_status == 422
        answers.append((info.value.field, info.value.allowed))
        assert str(info.value.value) == target or info.value.value == theirs
    assert answers[0] == answers[1] == ("dependency", "the id of one of your own jobs")
    assert [j.owner for j in cp.client().jobs(all=True)] == ["bob"]  # nothing queued


def test_a_job_input_needs_an_afterok_on_that_job_of_ones_own(cp: TestControlPlane) -> None:
    c = cp.client("alice")
    mine = c.submit(spec()).id
    with pytest.raises(ValidationError) as info:
        c.submit(spec(f"afterany:{mine}").model_copy(update={"inputs": (upstream_url(mine),)}))
    assert info.value.field == "input" and f"afterok:{mine}" in info.value.allowed
    theirs = cp.client("bob").submit(spec()).id
    with pytest.raises(ValidationError) as info:
        c.submit(spec(f"afterok:{theirs}").model_copy(
            update={"inputs": (upstream_url(theirs),)}))
    assert info.value.field == "dependency"


def test_dependencies_are_durable_and_settled_when_the_control_plane_starts(
        tmp_path: Path) -> None:
    root = tmp_path / "cp"
    with TestControlPlane(root) as cp:
        c = cp.client()
        a, z = c.submit(spec()).id, c.submit(spec()).id  # neither ever runs: no agent here
        b = c.submit(spec(f"afterok:{a}")).id
        y = c.submit(spec(f"afterok:{z}")).id
        stays_queued(cp, b)
    # as if the control plane stopped after a ended but before its dependants were settled
    store = JobStore(root / "jobs.db")
    store.transition(a, S.FAILED, "exit code 1")
    store.close()
    with TestControlPlane(root) as cp:
        assert cp.client().wait(b).reason == f"dependency {a} ended FAILED"
        kept = stays_queued(cp, y)  # still waits, with its dependency, after the restart
        assert (kept.spec.dependency, kept.wait_reason) == (f"afterok:{z}", "Dependency")
        assert [j.id for j in cp.store.dependants([z])] == [y]


# -- function pipelines ----------------------------------------------------------------------


def test_a_handle_as_an_argument_passes_the_result(cp: TestControlPlane) -> None:
    @skyport.job(client=cp.client("alice"))
    def prepare(x: int) -> list[int]:
        return list(range(x))

    @skyport.job(client=cp.client("alice"))
    def solve(values: list[int], scale: int = 1) -> int:
        return sum(values) * scale

    a = prepare.submit(4)
    b = solve.submit(a, scale=10)
    assert b.job().spec.dependency == f"afterok:{a.id}"
    assert upstream_url(a.id) in b.job().spec.inputs
    assert stays_queued(cp, b.id).wait_reason == "Dependency"
    cp.run_function(a.id)
    staged = cp.wait_state(b.id, S.PROVISIONING, S.STAGING_IN)
    # the Core staged a's result into b's own prefix: b's node reads nothing of a's
    names = [f.path for f in cp.client("alice").files(staged.id)]
    assert f"inputs/{upstream_input_name(a.id)}" in names
    cp.run_function(b.id)
    assert b.result() == 60
    c = solve.submit(values=b)  # a keyword argument too; an int, not a list: it fails
    cp.run_function(c.id)
    with pytest.raises(JobFailedError, match="TypeError"):
        c.result()
    with pytest.raises(ValidationError, match="only as a top-level argument"):
        solve.submit([a])  # inside a list it would be the handle itself, connection and all


def test_a_failed_upstream_fails_result_with_upstream_in_the_message(
        cp: TestControlPlane) -> None:
    @skyport.job(client=cp.client())
    def boom() -> int:
        raise RuntimeError("no data")

    @skyport.job(client=cp.client())
    def after(x: int) -> int:
        return x

    a = boom.submit()
    b = after.submit(a)
    cp.run_function(a.id)
    with pytest.raises(JobFailedError, match=f"upstream job {a.id} failed") as info:
        b.result()
    assert info.value.state == "CANCELLED" and "ended FAILED" in str(info.value)


def test_staging_checks_owner_state_and_digest_again(tmp_path: Path) -> None:
    """What reached the store by a way other than submit still stages nothing it should not."""
    import hashlib

    from skyport.core.dependencies import DependencyDesk
    from skyport.errors import StorageError
    from skyport.runtime.contract import RESULT_STORED_AS
    from skyport.storage import JobStorage

    store = JobStore(tmp_path / "jobs.db")
    storage = JobStorage((tmp_path / "storage").as_uri())
    desk = DependencyDesk(store, storage)
    outcome = b"pickled outcome"
    for job_id, owner in (("up", "alice"), ("theirs", "bob")):
        store.add(job_id, owner, spec())
        storage.put(job_id, RESULT_STORED_AS, outcome)
        store.update(job_id, result_digests={RESULT_STORED_AS: hashlib.sha256(outcome)
                                             .hexdigest()})
    store.add("down", "alice", spec().model_copy(update={
        "inputs": (upstream_url("up"),), "dependency": "afterok:up"}))
    store.add("sly", "alice", spec().model_copy(update={
        "inputs": (upstream_url("theirs"),), "dependency": "afterok:theirs"}))
    with pytest.raises(ValidationError, match="that SUCCEEDED"):
        desk.stage_results(store.get("down"))  # up has not succeeded
    for job_id in ("up", "theirs"):
        store.transition(job_id, S.FAILED, "x")
    with pytest.raises(ValidationError, match="your own jobs"):
        desk.stage_results(store.get("sly"))  # another user's job, even one that ended
    assert not storage.exists("sly", f"inputs/{upstream_input_name('theirs')}")
    store2 = JobStore(tmp_path / "jobs2.db")  # a SUCCEEDED upstream whose bytes changed
    store2.add("up", "alice", spec())
    store2.add("down", "alice", store.get("down").spec)
    for state in (S.SCHEDULED, S.PROVISIONING, S.STAGING_IN, S.RUNNING, S.STAGING_OUT,
                  S.SUCCEEDED):
        store2.transition("up", state, "x")
    store2.update("up", result_digests={RESULT_STORED_AS: "0" * 64})
    with pytest.raises(StorageError, match="not the one its run stored"):
        DependencyDesk(store2, storage).stage_results(store2.get("down"))
    store2.update("up", result_digests={RESULT_STORED_AS: hashlib.sha256(outcome).hexdigest()})
    DependencyDesk(store2, storage).stage_results(store2.get("down"))
    assert storage.get("down", f"inputs/{upstream_input_name('up')}") == outcome


@pytest.mark.parametrize("dependency", ["afterok:../x", "afterok:x?afterany:y", 123,
                                        ["afterok:a"], "afterok:" + "a:" * 5000 + "a",
                                        "afterok:BOBS"])
def test_a_raw_request_with_a_bad_dependency_is_a_422_naming_it(
        cp: TestControlPlane, dependency: object) -> None:
    import httpx

    from skyport.client.testing import BASE_URL

    bobs = cp.client("bob").submit(spec()).id
    if dependency == "afterok:BOBS":
        dependency = f"afterok:{bobs}"
    before = cp.store.count()
    raw = httpx.Client(base_url=BASE_URL, transport=cp.client("alice")._http._transport)
    answer = raw.post("/v1/jobs", json={"spec": {"script": "#!/bin/bash\ntrue\n",
                                                 "dependency": dependency}})
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["error"] == "ValidationError" and "dependency" in error["message"]
    assert bobs not in error["message"] or "your own jobs" in error["message"]
    assert cp.store.count() == before


# -- dependencies and job arrays (Slurm's semantics) ---------------------------------------


def array(dependency: str | None = None, indices: str = "0-2", name: str = "sweep") -> JobSpec:
    return spec(dependency, name).model_copy(update={"array": indices})


def test_afterok_on_an_array_waits_for_every_task_to_succeed(cp: TestControlPlane) -> None:
    c = cp.client()
    a = c.submit_array(array())
    d = c.submit(spec(f"afterok:{a.id}")).id
    cp.run(f"{a.id}_0")
    waiting = stays_queued(cp, d)
    assert waiting.wait_reason == "Dependency"
    assert waiting.wait_detail == f"waits for afterok: {a.id} (array: 1 of 3 tasks ended)"
    cp.run(f"{a.id}_1")
    stays_queued(cp, d)
    cp.run(f"{a.id}_2")
    cp.run(d)
    assert c.wait(d).state == S.SUCCEEDED


def test_one_failed_task_cancels_an_afterok_on_its_array_at_once_and_the_chain(
        cp: TestControlPlane) -> None:
    c = cp.client()
    a = c.submit_array(array())
    d = c.submit(spec(f"afterok:{a.id}")).id
    e = c.submit_array(array(f"afterok:{d}"))  # a dependent array: all its tasks follow
    on_any = c.submit(spec(f"afterany:{a.id}")).id
    cp.run(f"{a.id}_1", exit_code=4)  # tasks 0 and 2 have not even run
    ended = c.wait(d)
    assert (ended.state, ended.reason) == (S.CANCELLED,
                                           f"dependency {a.id} ended FAILED (task {a.id}_1)")
    assert {t.state for t in cp.store.list(array_id=e.id)} == {S.CANCELLED}
    assert c.wait(f"{e.id}_2").reason == f"dependency {d} ended CANCELLED"
    assert stays_queued(cp, on_any).wait_reason == "Dependency"  # 2 tasks left
    c.cancel_many([a.id])
    cp.run(on_any)
    assert c.wait(on_any).state == S.SUCCEEDED


def test_afternotok_on_an_array_needs_all_ended_and_one_not_succeeded(
        cp: TestControlPlane) -> None:
    c = cp.client()
    good, bad = c.submit_array(array(indices="0-1")), c.submit_array(array(indices="0-1"))
    on_good = c.submit(spec(f"afternotok:{good.id}")).id
    on_bad = c.submit(spec(f"afternotok:{bad.id}")).id
    for i in (0, 1):
        cp.run(f"{good.id}_{i}")
    assert c.wait(on_good).reason == f"dependency {good.id} ended SUCCEEDED"
    cp.run(f"{bad.id}_0", exit_code=1)
    assert stays_queued(cp, on_bad).wait_reason == "Dependency"  # task 1 not over yet
    cp.run(f"{bad.id}_1")
    cp.run(on_bad)
    assert c.wait(on_bad).state == S.SUCCEEDED


def test_after_on_an_array_holds_once_one_task_started(cp: TestControlPlane) -> None:
    c = cp.client()
    a = c.submit_array(array(indices="0-1%1"))
    d = c.submit(spec(f"after:{a.id}")).id
    cp.wait_state(f"{a.id}_0", S.PROVISIONING)
    assert stays_queued(cp, d).wait_reason == "Dependency"
    agents = cp.start(f"{a.id}_0")
    cp.run(d)
    assert c.wait(d).state == S.SUCCEEDED
    agents.exit(0)


def test_a_dependency_on_one_task_is_on_that_task_only(cp: TestControlPlane) -> None:
    c = cp.client()
    a = c.submit_array(array())
    one = c.submit(spec(f"afterok:{a.id}_1")).id
    doomed = c.submit(spec(f"afterok:{a.id}_0")).id
    cp.run(f"{a.id}_0", exit_code=1)
    assert c.wait(doomed).reason == f"dependency {a.id}_0 ended FAILED"
    assert stays_queued(cp, one).wait_detail == \
        f"waits for afterok: {a.id}_1 ({cp.store.get(f'{a.id}_1').state.value})"
    cp.run(f"{a.id}_1")
    cp.run(one)
    assert c.wait(one).state == S.SUCCEEDED


def test_another_users_array_or_task_is_refused_as_an_unknown_id(cp: TestControlPlane) -> None:
    theirs = cp.client("bob").submit_array(array())
    answers = set()
    alice = cp.client("alice")
    for target in (theirs.id, f"{theirs.id}_1", "0badc0de", "0badc0de_1"):
        for submit in (lambda d: alice.submit(spec(d)),
                       lambda d: alice.submit_array(array(d))):
            with pytest.raises(ValidationError) as info:
                submit(f"afterany:{target}")
            assert info.value.http_status == 422 and info.value.value == target
            answers.add((info.value.field, info.value.allowed))
    assert answers == {("dependency", "the id of one of your own jobs")}
    assert {j.owner for j in cp.client().jobs(all=True)} == {"bob"}  # nothing queued
    with sqlite3.connect(cp.store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM dependencies").fetchone()[0] == 0


def test_an_array_input_of_job_url_is_refused(cp: TestControlPlane) -> None:
    c = cp.client()
    a = c.submit_array(array())
    with pytest.raises(ValidationError, match="an array has no one result") as info:
        c.submit(spec(f"afterok:{a.id}").model_copy(update={"inputs": (upstream_url(a.id),)}))
    assert info.value.field == "input"


def test_a_dependent_array_waits_as_a_whole_then_runs(cp: TestControlPlane) -> None:
    c = cp.client()
    up = c.submit(spec()).id
    b = c.submit_array(array(f"afterok:{up}"))
    for task in b.task_ids():
        waiting = stays_queued(cp, task)
        assert (waiting.wait_reason, waiting.wait_detail) == (
            "Dependency", f"waits for afterok: {up} ({cp.store.get(up).state.value})")
    with sqlite3.connect(cp.store.path) as db:  # one row for the array, none per task
        assert db.execute("SELECT job_id, upstream, kind FROM dependencies").fetchall() == [
            (b.id, up, "afterok")]
    assert [j.id for j in cp.store.dependants([up])] == b.task_ids()
    cp.run(up)
    for task in b.task_ids():
        cp.run(task)
    assert c.array(b.id).counts == {S.SUCCEEDED: 3}


def test_a_dependent_array_on_a_failed_job_is_cancelled_whole_at_submit_and_on_end(
        cp: TestControlPlane) -> None:
    c = cp.client()
    up = c.submit(spec()).id
    b = c.submit_array(array(f"afterok:{up}"))
    cp.run(up, exit_code=2)
    for task in b.task_ids():
        assert c.wait(task).reason == f"dependency {up} ended FAILED"
    late = c.submit_array(array(f"afterok:{up}"))  # its upstream is over already
    assert late.counts == {S.CANCELLED: 3}
    assert cp.store.get(late.task_ids()[0]).reason == f"dependency {up} ended FAILED"


def test_a_dependent_array_is_settled_when_the_control_plane_starts(tmp_path: Path) -> None:
    root = tmp_path / "cp"
    with TestControlPlane(root) as cp:
        c = cp.client()
        a = c.submit_array(array())  # never runs: no agent here
        b = c.submit_array(array(f"afterok:{a.id}"))
        stays_queued(cp, b.task_ids()[0])
    store = JobStore(root / "jobs.db")  # a task failed, the control plane stopped at once
    store.transition(f"{a.id}_2", S.CANCELLED, "cancelled")
    store.close()
    with TestControlPlane(root) as cp:
        ended = cp.client().wait(f"{b.id}_0")
        assert ended.reason == f"dependency {a.id} ended CANCELLED (task {a.id}_2)"
        assert cp.client().array(b.id).counts == {S.CANCELLED: 3}
