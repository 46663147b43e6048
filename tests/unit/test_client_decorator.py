"""``@skyport.job``: spec building, argument checks, results and remote errors."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

import skyport
from skyport.client.testing import TestControlPlane
from skyport.decorator import FUNCTION_SCRIPT, RANKS_SCRIPT, JobHandle, rank_result_path
from skyport.errors import ValidationError
from skyport.models import JobState


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    with TestControlPlane(tmp_path / "cp") as cp:
        yield cp


def test_public_api() -> None:
    assert skyport.__version__ == "0.1.0"
    for name in ("job", "context", "connect", "Client", "JobHandle", "JobFailedError",
                 "SkyportError"):
        assert hasattr(skyport, name)
    assert issubclass(skyport.JobFailedError, skyport.SkyportError)


def test_spec_of_a_decorated_function() -> None:
    @skyport.job(
        cpus=2,
        time="10m",
        nodes=3,
        gpus=1,
        mem="2G",
        ranks_per_node=2,
        env={"OMP_PLACES": "cores"},
        gate="local",
    )
    def square(x: int) -> int:
        return x * x

    spec = square.spec
    assert spec.kind == "function" and spec.name == "square"
    assert (
        spec.resources.cpus_per_node,
        spec.resources.nodes,
        spec.resources.gpus_per_node,
        spec.resources.mem_mb,
        spec.resources.time_limit_s,
    ) == (2, 3, 1, 2048, 600)
    assert spec.layout.ranks_per_node == 2 and spec.gate == "local"
    assert spec.env == {"OMP_PLACES": "cores"}
    assert spec.outputs == ("skyport-results",)  # 3 nodes x 2 ranks: one file per rank
    assert spec.script == RANKS_SCRIPT
    assert square(7) == 49  # still a plain function when called
    assert square.__name__ == "square"


def test_function_script_golden() -> None:
    assert FUNCTION_SCRIPT == (
        "#!/bin/bash\n"
        "# Sky Port function job: call the pickled function, store its outcome.\n"
        'exec "${SKYPORT_PYTHON:-python3}" -m skyport.runtime.function '
        "skyport-payload.pkl skyport-result.pkl\n"
    )


def test_ranks_script_golden() -> None:
    assert RANKS_SCRIPT == (
        "#!/bin/bash\n"
        "# Sky Port function job: call the pickled function on every rank, store each "
        "outcome.\n"
        'exec "$SKYPORT_MPIEXEC" "${SKYPORT_PYTHON:-python3}" -m skyport.runtime.function \\\n'
        "    skyport-payload.pkl skyport-results/\n"
    )


def test_single_rank_spec_keeps_one_result_file() -> None:
    spec = skyport.job(cpus=4, threads_per_rank=4)(lambda: 1).spec
    assert spec.script == FUNCTION_SCRIPT and spec.outputs == ("skyport-result.pkl",)


def _finish_ranks(cp: TestControlPlane, job_id: str, outcomes: dict[int, tuple]) -> None:
    agents = cp.start(job_id)
    agents.write(files={rank_result_path(rank): cloudpickle.dumps(outcome)
                        for rank, outcome in outcomes.items()})
    failed = any(o[0] == "error" for o in outcomes.values())
    agents.exit(1 if failed else 0)


def test_multi_rank_results_in_rank_order(cp: TestControlPlane) -> None:
    @skyport.job(nodes=2, ranks_per_node=2, client=cp.client())
    def f() -> int:
        return 0

    handle = f.submit()
    assert handle.ranks == 4
    _finish_ranks(cp, handle.id, {r: ("ok", r * 10) for r in (3, 1, 0, 2)})
    assert handle.results() == [0, 10, 20, 30]
    assert handle.result() == 0


def test_a_rank_that_raised_is_named(cp: TestControlPlane) -> None:
    @skyport.job(nodes=2, ranks_per_node=2, client=cp.client())
    def f() -> int:
        return 0

    handle = f.submit()
    _finish_ranks(cp, handle.id, {0: ("ok", 0), 2: ("error", "KeyError", "'k'", "tb\n")})
    for call in (handle.result, handle.results):
        with pytest.raises(skyport.JobFailedError, match="failed on rank 2 of 4: KeyError") \
                as info:
            call()
        assert info.value.remote_type == "KeyError"


def test_missing_ranks_are_named(cp: TestControlPlane) -> None:
    @skyport.job(nodes=2, ranks_per_node=2, client=cp.client())
    def f() -> int:
        return 0

    handle = f.submit()
    agents = cp.start(handle.id)
    agents.write(files={rank_result_path(0): cloudpickle.dumps(("ok", 0))})
    agents.exit(137, timed_out=True, reason="time limit reached")
    with pytest.raises(skyport.JobFailedError, match="TIMEOUT without a result from ranks 1, 2, 3"):
        handle.results()


def test_context_outside_and_inside_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SKYPORT_JOB_ID", raising=False)
    with pytest.raises(skyport.SkyportError, match="only inside a Sky Port job"):
        skyport.context()
    ctx = skyport.context({"SKYPORT_JOB_ID": "j1", "PMI_RANK": "3", "PMI_SIZE": "4",
                           "SKYPORT_LOCAL_RANK": "1", "SKYPORT_NODE_NAME": "n1",
                           "SKYPORT_NODE_RANK": "1", "SKYPORT_NUM_NODES": "2",
                           "SKYPORT_THREADS_PER_RANK": "2"})
    assert (ctx.rank, ctx.size, ctx.local_rank, ctx.node_name, ctx.node_rank, ctx.num_nodes,
            ctx.threads) == (3, 4, 1, "n1", 1, 2, 2)
    with pytest.raises(AttributeError):
        ctx.rank = 0  # type: ignore[misc]


def test_bare_decorator_and_name_of_a_lambda() -> None:
    @skyport.job
    def f() -> None:
        return None

    assert (f.spec.resources.cpus_per_node, f.spec.resources.time_limit_s) == (2, 600)
    assert skyport.job(lambda: 1).spec.name == "lambda"


def test_checkpoint_every_and_max_restarts_map_to_the_spec() -> None:
    @skyport.job(checkpoint_every="5m", max_restarts=2)
    def step() -> int:
        return 1

    assert (step.spec.checkpoint_every_s, step.spec.max_restarts) == (300, 2)
    assert skyport.job(checkpoint_every=90, max_restarts=0)(step.fn).spec.checkpoint_every_s == 90
    assert skyport.job(max_restarts=0)(step.fn).spec.max_restarts == 0  # 0: never restart
    plain = skyport.job(step.fn).spec  # unset: no periodic checkpoint, the control plane's limit
    assert (plain.checkpoint_every_s, plain.max_restarts) == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "field", "shown"),
    [
        ({"cpus": 0}, "cpus", "0"),
        ({"time": "soon"}, "time", "'soon'"),
        ({"time": -5}, "time", "-5"),
        ({"mem": "lots"}, "mem", "'lots'"),
        ({"nodes": 0}, "nodes", "0"),
        ({"gpus": -1}, "gpus", "-1"),
        ({"name": "bad name!"}, "name", "'bad name!'"),
        ({"env": {"SKYPORT_X": "1"}}, "env", "SKYPORT_X"),
        ({"ranks_per_node": 4}, "ranks_per_node/threads_per_rank", "(4, None)"),
        ({"checkpoint_every": "often"}, "checkpoint_every", "'often'"),
        ({"checkpoint_every": 0}, "checkpoint_every", "at least 1 second"),
        ({"checkpoint_every": "0s"}, "checkpoint_every", "'0s'"),
        ({"checkpoint_every": 2.5}, "checkpoint_every", "2.5"),
        ({"checkpoint_every": True}, "checkpoint_every", "True"),
        ({"checkpoint_every": "1000d"}, "checkpoint_every", "'1000d'"),
        ({"max_restarts": -1}, "max_restarts", "-1"),
        ({"max_restarts": 5000}, "max_restarts", "5000"),
        ({"max_restarts": "3"}, "max_restarts", "'3'"),
        ({"max_restarts": True}, "max_restarts", "True"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, field: str, shown: str) -> None:
    with pytest.raises(ValidationError) as info:
        skyport.job(**kwargs)(lambda: None)
    assert info.value.field == field
    assert info.value.message.startswith(f"invalid {field}: ")
    assert shown in info.value.message


def test_submit_builds_a_function_job_and_returns_its_value(cp: TestControlPlane) -> None:
    @skyport.job(cpus=2, time="10m", client=cp.client())
    def square(x: int) -> int:
        return x * x

    handle = square.submit(7)
    assert isinstance(handle, JobHandle)
    assert not handle.state.is_terminal()
    fn, args, kwargs = cloudpickle.loads(cp.storage.get(handle.id, "inputs/skyport-payload.pkl"))
    assert (args, kwargs) == ((7,), {}) and fn(3) == 9
    cp.run_function(handle.id)
    assert handle.result(timeout=5) == 49
    assert handle.state is JobState.SUCCEEDED


def test_remote_exception_becomes_job_failed_error(cp: TestControlPlane) -> None:
    @skyport.job(client=cp.client())
    def divide(a: int, b: int) -> float:
        return a / b

    handle = divide.submit(1, b=0)
    cp.run_function(handle.id)
    with pytest.raises(skyport.JobFailedError) as info:
        handle.result()
    err = info.value
    assert err.remote_type == "ZeroDivisionError"
    assert err.remote_message == "division by zero"
    assert ", in divide" in err.remote_traceback
    assert err.state == "FAILED" and err.job_id == handle.id
    assert "ZeroDivisionError: division by zero" in str(err)
    assert ", in divide" in str(err)


@pytest.mark.parametrize(
    ("state", "pattern"),
    [
        (JobState.CANCELLED, "ended CANCELLED without a result: cancelled by admin"),
        (JobState.TIMEOUT, "ended TIMEOUT without a result: time limit reached"),
        (JobState.FAILED, r"ended FAILED without a result: exit code 127"),
    ],
)
def test_job_without_result(cp: TestControlPlane, state: JobState, pattern: str) -> None:
    @skyport.job(client=cp.client())
    def f() -> int:
        return 1

    handle = f.submit()
    if state is JobState.CANCELLED:
        cp.client().cancel(handle.id)
    else:
        cp.run(handle.id, 127, timed_out=state is JobState.TIMEOUT)
    with pytest.raises(skyport.JobFailedError, match=pattern) as info:
        handle.result()
    assert info.value.state == state.value and info.value.remote_type == ""


def test_handle_cancel_and_logs(cp: TestControlPlane) -> None:
    @skyport.job(client=cp.client())
    def f() -> int:
        return 1

    handle = f.submit()
    cp.agents(handle.id).write(stdout=b"step 1\n")
    assert handle.logs() == "step 1\n"
    assert handle.cancel().state is JobState.CANCELLED
    assert handle.state is JobState.CANCELLED


def test_result_waits_for_the_job(cp: TestControlPlane) -> None:
    @skyport.job(client=cp.client())
    def f() -> str:
        return "done"

    handle = f.submit()
    asked = len(cp.requests)
    polled = threading.Event()

    def run_once_polled() -> None:  # the job runs while result() is waiting for it
        while len(cp.requests) <= asked:
            polled.wait(0.005)
        cp.run_function(handle.id)

    runner = threading.Thread(target=run_once_polled)
    runner.start()
    assert handle.result() == "done"
    runner.join()


def test_job_function_pickles_without_its_connection(cp: TestControlPlane) -> None:
    @skyport.job(cpus=2, client=cp.client())
    def f(x: int) -> int:
        return x + 1

    copy = cloudpickle.loads(cloudpickle.dumps(f))
    assert copy(1) == 2 and copy.spec == f.spec and copy._client is None
    with pytest.raises(ValidationError, match="arguments"):
        f.submit(_Unpicklable())  # type: ignore[arg-type]


class _Unpicklable:
    def __reduce__(self) -> tuple:
        raise pickle.PicklingError("no")
