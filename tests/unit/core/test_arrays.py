"""Job arrays through the real REST API and Core (the in-process double, memory gate)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

import skyport
from skyport.agent.bootstrap import Bootstrap
from skyport.agent.main import payload_env
from skyport.cli import cli
from skyport.client.testing import TestControlPlane
from skyport.config import SubmitLimits
from skyport.core.arrays import ARRAY_TASK_LIMIT, throttle
from skyport.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from skyport.models import Job, JobSpec, JobState, Resources
from skyport.protocol import ArrayView
from skyport.store import utcnow

S = JobState
SCRIPT = "#!/bin/bash\necho task $SKYPORT_ARRAY_TASK_ID\n"


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    """A gate of 8 one-core nodes: room for 8 one-core tasks at once."""
    with TestControlPlane(tmp_path / "cp", gate={"cpus": 1, "max_nodes": 8}) as plane:
        # the default (1000 queued per user) would refuse the 10,000-task array
        plane.service.intake.limits = SubmitLimits(max_queued_per_user=100_000)
        yield plane


def spec(array: str, name: str = "sweep") -> JobSpec:
    return JobSpec(name=name, script=SCRIPT, array=array, resources=Resources(cpus_per_node=1))


def active(cp: TestControlPlane, array_id: str) -> list[Job]:
    return [j for j in cp.store.list(array_id=array_id)
            if j.state is not S.QUEUED and not j.state.is_terminal()]


def wait_for(what: object, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_an_array_is_one_record_with_its_script_once(cp: TestControlPlane) -> None:
    view = cp.client("alice").submit_array(spec("0-9999"))
    assert (view.task_count, view.array, view.owner) == (10000, "0-9999", "alice")
    assert view.task_ids()[:2] == [f"{view.id}_0", f"{view.id}_1"]
    with sqlite3.connect(cp.store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM arrays").fetchone()[0] == 1
        specs = db.execute("SELECT DISTINCT spec FROM jobs WHERE array_id = ?",
                           (view.id,)).fetchall()
        assert specs == [("",)]  # no task row carries the script
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 10000
    assert cp.storage.get(view.id, "script.sh") == SCRIPT.encode()  # once, the array's
    job = cp.client("alice").job(f"{view.id}_9999")
    assert (job.array_id, job.array_index, job.spec.script) == (view.id, 9999, SCRIPT)
    assert sum(cp.client("alice").array(view.id).counts.values()) == 10000


def test_an_arrays_relative_deadline_is_stored_as_a_time(cp: TestControlPlane) -> None:
    # as for one job: "+2h" means two hours from submission, not from whenever it is read
    before = time.time()
    view = cp.client().submit_array(spec("0-1").model_copy(update={"deadline": "+2h"}))
    stored = cp.client().job(f"{view.id}_0").spec.deadline
    assert stored is not None and not stored.startswith("+")
    from datetime import datetime

    at = datetime.fromisoformat(stored).timestamp()
    assert before + 7200 - 5 <= at <= time.time() + 7200 + 5


def test_steps_and_lists_give_those_task_ids(cp: TestControlPlane) -> None:
    view = cp.client().submit_array(spec("1,3,5-7"))
    assert view.indices == [1, 3, 5, 6, 7]
    assert {j.id for j in cp.client().jobs()} == {f"{view.id}_{i}" for i in (1, 3, 5, 6, 7)}
    assert cp.client().submit_array(spec("0-99:2")).task_count == 50


@pytest.mark.parametrize(("array", "says"), [
    ("0-9%0", "limit %0"), ("9-0", "descends"), ("0-9:0", "step 0"), ("1-2-3", "is not N"),
    ("1,1", "appears twice"), ("0-100000", "at most 100000 tasks")])
def test_a_bad_array_is_a_422_naming_field_value_and_rule(cp: TestControlPlane, array: str,
                                                          says: str) -> None:
    body = {"spec": {"script": SCRIPT, "array": array}}
    with pytest.raises(ValidationError) as info:
        cp.client().call("POST", "/v1/arrays", ArrayView, json=body)
    assert info.value.field == "spec.array" and says in info.value.allowed
    assert cp.client().jobs() == [] and not list((cp.root / "storage").glob("jobs/*"))


def test_one_job_routes_refuse_an_array_and_the_array_route_needs_one(
        cp: TestControlPlane) -> None:
    with pytest.raises(ValidationError, match="submit_array"):
        cp.client().submit(spec("0-3"))  # the client says so before sending
    with pytest.raises(ValidationError) as info:  # and the server too
        cp.client().call("POST", "/v1/jobs", Job,
                         json={"spec": {"script": SCRIPT, "array": "0-3"}})
    assert info.value.field == "array" and "/v1/arrays" in info.value.allowed
    with pytest.raises(ValidationError) as info:
        cp.client().call("POST", "/v1/arrays", ArrayView, json={"spec": {"script": SCRIPT}})
    assert info.value.field == "array"
    with pytest.raises(ValidationError) as info:  # a script array carries no payloads
        cp.client().submit_array(spec("0-1"), [b"x", b"y"])
    assert info.value.field == "payloads_b64"
    assert cp.client().jobs() == []


def test_the_queue_limit_counts_every_task(tmp_path: Path) -> None:
    with TestControlPlane(tmp_path / "cp") as plane:
        plane.service.intake.limits = SubmitLimits(max_queued_per_user=10)
        with pytest.raises(ConflictError, match="11 more tasks would pass 10"):
            plane.client("alice").submit_array(spec("0-10"))
        assert plane.client("alice").jobs() == []
        assert plane.client("alice").submit_array(spec("0-9")).task_count == 10


def test_a_task_sees_its_env_and_reads_only_its_own_prefix(cp: TestControlPlane,
                                                           tmp_path: Path) -> None:
    view = cp.client("alice").submit_array(spec("0-8:2%2"))
    first, other = f"{view.id}_0", f"{view.id}_2"
    agents = cp.agents(first)  # the gate built its cluster: the node's token is the task's
    hello = agents[0].hello(0, "n0", "testhost", 0)
    assert (hello.job.id, hello.job.array_id, hello.job.array_index) == (first, view.id, 0)
    boot = Bootstrap(control_url="https://x", ca_pem="", token="t", job_id=first)
    env = payload_env(boot, hello.job.spec, {})
    assert {k: v for k, v in env.items() if k.startswith("SKYPORT_ARRAY_")} == {
        "SKYPORT_ARRAY_JOB_ID": view.id, "SKYPORT_ARRAY_TASK_ID": "0",
        "SKYPORT_ARRAY_TASK_COUNT": "5", "SKYPORT_ARRAY_TASK_MIN": "0",
        "SKYPORT_ARRAY_TASK_MAX": "8", "SKYPORT_ARRAY_TASK_STEP": "2"}
    # the script was staged into the task's own prefix when it started
    agents[0].download("script.sh", tmp_path / "s.sh")
    assert (tmp_path / "s.sh").read_text() == SCRIPT
    # with its token, a node reaches neither the array's prefix nor another task's
    for elsewhere in (view.id, other):
        with pytest.raises(PermissionDeniedError):
            cp.agent(elsewhere, agents.token).download("script.sh", tmp_path / "x")
    # outputs are per task: each under its own prefix
    agents.running()
    agents.write(stdout=b"task 0\n", files={"outputs/r.txt": b"0"})
    agents.exit(0)
    assert cp.client("alice").download(first, "outputs/r.txt") == b"0"
    with pytest.raises(NotFoundError):
        cp.client("alice").download(other, "outputs/r.txt")


def test_the_throttle_keeps_all_but_n_queued_with_array_task_limit(cp: TestControlPlane) -> None:
    alice = cp.client("alice")
    view = alice.submit_array(spec("0-5%2"))
    ids = view.task_ids()
    wait_for("two tasks start", lambda: len(active(cp, view.id)) == 2)
    started = {j.id for j in active(cp, view.id)}
    assert started == set(ids[:2])  # the lowest indices first
    waiting = alice.job(ids[5])
    wait_for("the reason", lambda: alice.job(ids[5]).wait_reason == ARRAY_TASK_LIMIT)
    waiting = alice.job(ids[5])
    assert "at most 2 task(s) at once (%2)" in (waiting.wait_detail or "")
    time.sleep(0.5)  # a few planning passes: the 8 free cores stay unused by this array
    assert len(active(cp, view.id)) == 2
    cp.run(ids[0])  # one ends: the next may start, and no more
    wait_for("the third starts", lambda: alice.job(ids[2]).state is not S.QUEUED)
    time.sleep(0.5)
    assert len(active(cp, view.id)) == 2
    # a plain job and an array without %N are not held back
    free = alice.submit_array(spec("0-3"))
    wait_for("all four start", lambda: len(active(cp, free.id)) == 4)


def test_throttle_is_pure_and_counts_every_state_between_queued_and_the_end() -> None:
    def job(i: int) -> Job:
        return Job(id=f"0123abcd_{i}", owner="a", spec=JobSpec(script="x"), state=S.QUEUED,
                   submitted_at=utcnow(), array_id="0123abcd", array_index=i)

    plain = Job(id="plain", owner="a", spec=JobSpec(script="x"), state=S.QUEUED,
                submitted_at=utcnow())
    queued = [job(i) for i in range(5)] + [plain]
    counts = {"0123abcd": {"QUEUED": 5, "SCHEDULED": 1, "RUNNING": 1, "SUCCEEDED": 7}}
    keep, held = throttle(queued, {"0123abcd": 3}, counts)
    assert [j.id for j in keep] == ["0123abcd_0", "plain"]
    assert sorted(held) == [f"0123abcd_{i}" for i in range(1, 5)]
    keep, held = throttle(queued, {"0123abcd": 2}, counts)
    assert [j.id for j in keep] == ["plain"]
    assert throttle(queued, {}, {}) == (queued, {})


def test_cancel_the_whole_array_or_one_task(cp: TestControlPlane,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    alice = cp.client("alice")
    view = alice.submit_array(spec("0-4%1"))
    one = alice.cancel(f"{view.id}_3")
    assert one.state is S.CANCELLED
    assert alice.job(f"{view.id}_4").state is not S.CANCELLED
    answer = alice.cancel_many([view.id])
    assert sorted(answer.cancelled) == sorted(f"{view.id}_{i}" for i in (0, 1, 2, 4))
    assert alice.array(view.id).counts == {S.CANCELLED: 5}
    # the CLI: one id that is an array's cancels every task of it, in one bulk call
    monkeypatch.setattr("skyport.cli.app.client_factory", lambda home, user: cp.client("alice"))
    again = alice.submit_array(spec("0-2"))
    result = CliRunner().invoke(cli, ["cancel", again.id])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("cancelled 3 job(s)")
    assert CliRunner().invoke(cli, ["cancel", "deadbeef"]).exit_code != 0


def test_another_users_array_is_not_found(cp: TestControlPlane,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    view = cp.client("alice").submit_array(spec("0-2"))
    bob = cp.client("bob")
    with pytest.raises(NotFoundError):
        bob.array(view.id)
    with pytest.raises(NotFoundError):
        bob.job(f"{view.id}_1")
    with pytest.raises(NotFoundError):
        bob.cancel(f"{view.id}_1")
    assert bob.cancel_many([view.id, f"{view.id}_0"]).not_found == [view.id, f"{view.id}_0"]
    monkeypatch.setattr("skyport.cli.app.client_factory", lambda home, user: cp.client("bob"))
    assert CliRunner().invoke(cli, ["cancel", view.id]).exit_code != 0
    assert CliRunner().invoke(cli, ["show", view.id]).exit_code != 0
    assert cp.client("alice").array(view.id).counts.get(S.CANCELLED) is None
    assert cp.client("admin").cancel_many([view.id]).cancelled  # an admin may


def test_jobs_shows_an_array_as_one_row_expand_shows_tasks(
        cp: TestControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = cp.client("alice")
    plain = alice.submit(JobSpec(name="plain", script=SCRIPT,
                                 resources=Resources(cpus_per_node=1)))
    view = alice.submit_array(spec("0-5%2"))
    alice.cancel(f"{view.id}_5")
    monkeypatch.setattr("skyport.cli.app.client_factory", lambda home, user: cp.client("alice"))
    result = CliRunner().invoke(cli, ["jobs"])
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[1:]
    assert len(rows) == 2 and rows[0].startswith(plain.id)
    assert rows[1].startswith(f"{view.id}_[0-5]") and "CANCELLED:1" in rows[1]
    result = CliRunner().invoke(cli, ["jobs", "--json"])
    listing = json.loads(result.stdout)
    array = listing[1]
    assert (array["id"], array["kind"], array["array"], array["task_count"]) == \
        (view.id, "array", "0-5%2", 6)
    assert sum(array["counts"].values()) == 6 and array["counts"]["CANCELLED"] == 1
    result = CliRunner().invoke(cli, ["jobs", "--expand", "--json"])
    assert [j["id"] for j in json.loads(result.stdout)] == [plain.id, *view.task_ids()]
    result = CliRunner().invoke(cli, ["show", view.id])
    assert result.exit_code == 0 and "0-5%2" in result.stdout
    result = CliRunner().invoke(cli, ["show", f"{view.id}_1"])
    assert result.exit_code == 0 and f"{view.id}_1" in result.stdout


def test_the_cli_submits_an_array_in_one_call(cp: TestControlPlane, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    alice = cp.client("alice")
    monkeypatch.setattr("skyport.cli.app.client_factory", lambda home, user: cp.client("alice"))
    script = tmp_path / "a.sh"
    script.write_text("#!/bin/bash\n#SKYPORT --array=0-3\n#SKYPORT --cpus-per-node=1\nrun\n")
    before = len(cp.requests)
    result = CliRunner().invoke(cli, ["submit", str(script), "--array", "0-99:2%5"])
    assert result.exit_code == 0, result.output
    assert [r.url.path for r in cp.requests[before:]] == ["/v1/arrays"]
    array_id = result.stdout.strip()
    assert alice.array(array_id).task_count == 50 and alice.array(array_id).throttle == 5
    result = CliRunner().invoke(cli, ["submit", str(script), "--array", "0-9%0"])
    assert result.exit_code != 0 and "--array" in result.output and "%0" in result.output


def square(x: int) -> int:
    return x * x


def test_map_submits_one_array_and_each_task_gets_its_own_argument(
        cp: TestControlPlane) -> None:
    fn = skyport.job(cpus=1, client=cp.client("alice"))(square)
    before = len(cp.requests)
    handles = fn.map([3, 1, 4, 1, 5], max_running=2)
    assert [r.url.path for r in cp.requests[before:]] == ["/v1/arrays"]
    array_id = handles[0].job().array_id
    assert [h.id for h in handles] == [f"{array_id}_{i}" for i in range(5)]
    view = cp.client("alice").array(array_id or "")
    assert view.throttle == 2
    for h in handles:  # the throttle lets them through two at a time
        cp.run_function(h.id)
    assert [h.result() for h in handles] == [9, 1, 16, 1, 25]
    assert fn.map([]) == []
    with pytest.raises(ValidationError, match="max_running"):
        fn.map([1], max_running=0)


def test_a_function_array_needs_one_payload_per_task(cp: TestControlPlane) -> None:
    fn = skyport.job(cpus=1)(square)
    with pytest.raises(ValidationError) as info:
        cp.client().submit_array(fn.spec.model_copy(update={"array": "0-2"}), [b"a"])
    assert info.value.field == "payloads_b64" and "3" in info.value.allowed
    with pytest.raises(ValidationError) as info:
        cp.client().call("POST", "/v1/arrays", ArrayView, json={
            "spec": json.loads(fn.spec.model_copy(update={"array": "0"}).model_dump_json()),
            "payloads_b64": ["not base64!"]})
    assert info.value.field == "payloads_b64[0]"
    assert cp.client().jobs() == []


def test_hostile_ids_and_values_reach_nothing(cp: TestControlPlane) -> None:
    alice = cp.client("alice")
    view = alice.submit_array(spec("0-1"))
    for bad in ("..", "../jobs", f"{view.id}/../x", f"{view.id}_-1", f"{view.id}_99",
                "%2e%2e", view.id[:-1], f" {view.id}", f"{view.id}_1_1"):
        with pytest.raises(NotFoundError):  # quoted whole: the route sees the id as sent
            alice.call("GET", "/v1/arrays/" + quote(bad, safe=""), ArrayView)
        assert alice.cancel_many([bad]).not_found == [bad]
    assert S.CANCELLED not in alice.array(view.id).counts
    huge = "0," * (600 * 1024)  # past the 1 MiB cap on the text
    with pytest.raises(ValidationError) as info:
        alice.call("POST", "/v1/arrays", ArrayView,
                   json={"spec": {"script": SCRIPT, "array": huge}})
    assert info.value.field == "spec.array" and "at most" in info.value.allowed
    assert len(alice.jobs()) == 2


def test_each_task_is_staged_its_own_payload_whatever_the_indices(cp: TestControlPlane) -> None:
    fn = skyport.job(cpus=1)(square)
    alice = cp.client("alice")
    view = alice.submit_array(fn.spec.model_copy(update={"array": "7,2"}),
                              [fn.payload(7), fn.payload(2)])
    cp.run_function(f"{view.id}_2")
    cp.run_function(f"{view.id}_7")
    handles = [skyport.decorator.JobHandle(alice, alice.job(f"{view.id}_{i}")) for i in (7, 2)]
    assert [h.result() for h in handles] == [49, 4]
    assert not cp.storage.exists(f"{view.id}_7", "payloads.bin")  # only its own call


def test_an_array_and_its_tasks_are_stored_in_one_transaction(tmp_path: Path) -> None:
    from skyport.store import ArrayRecord, JobStore

    store = JobStore(tmp_path / "jobs.db")
    record = ArrayRecord("0123abcd", "alice", spec("0-5"), 6, None, utcnow())
    store.add("0123abcd_3", "alice", JobSpec(script="x"))  # a clash half-way through
    with pytest.raises(ConflictError):
        store.add_array(record, range(6))
    with pytest.raises(NotFoundError):
        store.array("0123abcd")  # nothing of it was kept
    assert [j.id for j in store.list()] == ["0123abcd_3"]
    store.add_array(ArrayRecord("4567cdef", "alice", spec("0-5"), 6, 2, utcnow()), range(6))
    assert store.array("4567cdef").throttle == 2
    assert store.array_counts(["4567cdef"]) == {"4567cdef": {"QUEUED": 6}}
    assert store.array_throttles() == {"4567cdef": 2}
    store.close()
