"""``python -m skyport.runtime.function``: a real subprocess, ok and error outcomes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest


def run_payload(tmp_path: Path, fn: Any, *args: Any, **kwargs: Any) -> tuple[int, Any, str]:
    payload = tmp_path / "skyport-payload.pkl"
    result = tmp_path / "skyport-result.pkl"
    payload.write_bytes(cloudpickle.dumps((fn, args, kwargs)))
    proc = subprocess.run(
        [sys.executable, "-m", "skyport.runtime.function", payload.name, result.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    outcome = cloudpickle.loads(result.read_bytes()) if result.exists() else None
    return proc.returncode, outcome, proc.stderr


def test_ok(tmp_path: Path) -> None:
    def power(x: int, *, exp: int) -> dict[str, int]:
        return {"value": x**exp}

    status, outcome, _ = run_payload(tmp_path, power, 3, exp=4)
    assert status == 0
    assert outcome == ("ok", {"value": 81})


def test_error(tmp_path: Path) -> None:
    def broken() -> None:
        raise KeyError("missing-key")

    status, outcome, stderr = run_payload(tmp_path, broken)
    assert status == 1
    kind, type_name, message, tb = outcome
    assert (kind, type_name, message) == ("error", "KeyError", "'missing-key'")
    assert ", in broken" in tb  # cloudpickle names by-value code '<dynamic-code>'
    assert "KeyError: 'missing-key'" in stderr


def test_unpicklable_return_value_is_an_error(tmp_path: Path) -> None:
    def gives_a_lock() -> Any:
        import threading

        return threading.Lock()

    status, outcome, _ = run_payload(tmp_path, gives_a_lock)
    assert status == 1 and outcome[0] == "error" and "lock" in outcome[2].lower()


def test_sys_exit_in_the_function_is_reported(tmp_path: Path) -> None:
    def quits() -> None:
        sys.exit(3)

    status, outcome, _ = run_payload(tmp_path, quits)
    assert status == 1 and outcome[:3] == ("error", "SystemExit", "3")


def test_bad_command_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "skyport.runtime.function", "only-one"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "usage:" in proc.stderr


def _ranks_payload(tmp_path: Path, fn: Any, *args: Any) -> list[str]:
    from skyport.launch.mpi import mpich_mpiexec

    mpiexec = mpich_mpiexec()
    if mpiexec is None:
        pytest.skip("MPICH is not installed")
    (tmp_path / "skyport-payload.pkl").write_bytes(cloudpickle.dumps((fn, args, {})))
    return [mpiexec, "-n", "3", sys.executable, "-m", "skyport.runtime.function",
            "skyport-payload.pkl", "results/"]


@pytest.mark.timeout(60)
def test_every_rank_writes_its_outcome(tmp_path: Path) -> None:
    def where() -> tuple[int, int, int]:
        import skyport

        ctx = skyport.context()
        return ctx.rank, ctx.size, ctx.comm.allreduce(ctx.rank)

    argv = _ranks_payload(tmp_path, where)
    env = {**os.environ, "SKYPORT_JOB_ID": "j1"}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = [cloudpickle.loads((tmp_path / "results" / f"skyport-result.{r}.pkl").read_bytes())
           for r in range(3)]
    assert got == [("ok", (r, 3, 3)) for r in range(3)]


@pytest.mark.timeout(60)
def test_a_rank_that_raises_aborts_the_others(tmp_path: Path) -> None:
    def wait_for_rank_1() -> int:
        import skyport

        ctx = skyport.context()
        if ctx.rank == 1:
            raise ValueError("rank 1 gives up")
        ctx.comm.barrier()  # would hang forever without the abort
        return 0

    argv = _ranks_payload(tmp_path, wait_for_rank_1)
    env = {**os.environ, "SKYPORT_JOB_ID": "j1"}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "rank 1 of 3 raised" in proc.stderr
    outcome = cloudpickle.loads((tmp_path / "results" / "skyport-result.1.pkl").read_bytes())
    assert outcome[:3] == ("error", "ValueError", "rank 1 gives up")


def test_an_upstream_result_takes_its_stand_ins_place(tmp_path: Path) -> None:
    from skyport.runtime.contract import upstream_input_name
    from skyport.runtime.upstream import UpstreamResult

    (tmp_path / upstream_input_name("up1")).write_bytes(cloudpickle.dumps(("ok", [1, 2])))

    def total(values: list[int], *, scale: Any) -> int:
        return sum(values) * scale

    (tmp_path / upstream_input_name("up2")).write_bytes(cloudpickle.dumps(("ok", 3)))
    status, outcome, _ = run_payload(tmp_path, total, UpstreamResult("up1"),
                                     scale=UpstreamResult("up2"))  # a keyword argument too
    assert (status, outcome) == (0, ("ok", 9))
    status, outcome, _ = run_payload(tmp_path, total, UpstreamResult("up1"), scale=10)
    assert (status, outcome) == (0, ("ok", 30))
    status, outcome, _ = run_payload(tmp_path, total, UpstreamResult("missing"), scale=1)
    assert status == 1 and outcome[1].endswith("UpstreamError")
    assert "upstream job missing: its result was not staged" in outcome[2]


@pytest.mark.timeout(60)
def test_every_rank_gets_the_upstream_value_read_on_rank_0(tmp_path: Path) -> None:
    from skyport.runtime.contract import upstream_input_name
    from skyport.runtime.upstream import UpstreamResult

    (tmp_path / upstream_input_name("up1")).write_bytes(cloudpickle.dumps(("ok", 7)))

    def plus_rank(x: int) -> int:
        import skyport

        return x + skyport.context().rank

    argv = _ranks_payload(tmp_path, plus_rank, UpstreamResult("up1"))
    env = {**os.environ, "SKYPORT_JOB_ID": "j1"}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = [cloudpickle.loads((tmp_path / "results" / f"skyport-result.{r}.pkl").read_bytes())
           for r in range(3)]
    assert got == [("ok", 7 + r) for r in range(3)]
