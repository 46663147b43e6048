"""The agent's payload runner: process groups, exit codes, time limits, affinity, log pump."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from skyport.agent.payload import LogPump, Payload
from skyport.agent.procfs import is_alive, members

pytestmark = pytest.mark.timeout(60)


def payload(tmp_path: Path, script: str, cores: set[int] | None = None) -> Payload:
    (tmp_path / "script.sh").write_text(script)
    return Payload(["bash", "script.sh"], cwd=tmp_path, env=dict(os.environ),
                   stdout_path=tmp_path / "stdout.log", stderr_path=tmp_path / "stderr.log",
                   cores=cores)


def wait_for(path: Path) -> str:
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text()


@pytest.mark.parametrize(("script", "code"), [
    ("exit 0", 0),
    ("exit 3", 3),
    ("echo out; echo err >&2; exit 7", 7),
    ("kill -USR1 $$", 128 + 10),
    ("kill -9 $$", 128 + 9),
])
def test_exit_codes(tmp_path: Path, script: str, code: int) -> None:
    result = payload(tmp_path, script + "\n").run(time_limit_s=30)
    assert (result.exit_code, result.timed_out, result.stopped) == (code, False, False)


def test_time_limit_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    # bash and its children ignore SIGTERM; one child is in the background
    p = payload(tmp_path, "trap '' TERM\nsleep 120 &\necho $! > child.pid\nsleep 120\n")
    p.start()
    child = int(wait_for(tmp_path / "child.pid"))
    result = p.run(time_limit_s=0.5, grace_s=0.5)
    assert result.timed_out and not result.stopped
    # killed, not waited for: the `sleep 120` would have ended with 0
    assert result.exit_code == 128 + 9  # SIGTERM was ignored, SIGKILL was not
    assert members(pgrp=p.pid) == []
    assert not is_alive(child) and not is_alive(p.pid)


def test_leftover_background_processes_are_killed_when_the_leader_exits(
        tmp_path: Path) -> None:
    p = payload(tmp_path, "sleep 120 &\necho $! > child.pid\nexit 0\n")
    result = p.run(time_limit_s=30, grace_s=0.5)
    assert result.exit_code == 0
    assert not is_alive(int((tmp_path / "child.pid").read_text()))


def test_stop_request_kills_the_payload(tmp_path: Path) -> None:
    p = payload(tmp_path, "sleep 120\n")
    t0 = time.monotonic()
    result = p.run(time_limit_s=60, grace_s=1,
                   should_stop=lambda: time.monotonic() - t0 > 0.3)
    assert result.stopped and not result.timed_out
    assert result.exit_code == 128 + 15
    assert members(pgrp=p.pid) == []


def test_payload_runs_in_its_own_process_group(tmp_path: Path) -> None:
    p = payload(tmp_path, "ps -o pgid= -p $$ > pgid\n")
    p.run(time_limit_s=30)
    assert int((tmp_path / "pgid").read_text()) == p.pid != os.getpgrp()


def test_affinity_is_applied_to_the_payload_and_its_children(tmp_path: Path) -> None:
    core = max(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    p = payload(tmp_path, "grep Cpus_allowed_list /proc/self/status\n", cores={core})
    assert p.run(time_limit_s=30).exit_code == 0
    line = (tmp_path / "stdout.log").read_text().split()
    assert line == ["Cpus_allowed_list:", str(core)]
    assert os.sched_getaffinity(0) == before  # the agent itself is not pinned


def test_log_pump_delivers_every_byte_in_order_despite_a_failing_sink(
        tmp_path: Path) -> None:
    got: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    calls = {"n": 0}

    def sink(stream: str, offset: int, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise ConnectionError("control plane away")
        assert offset == len(got[stream]), "a chunk arrived out of order or twice"
        got[stream] += data

    p = payload(tmp_path, "for i in $(seq 1 3000); do echo \"line $i\"; echo \"e$i\" >&2;"
                          " [ $((i % 500)) = 0 ] && sleep 0.1; done; exit 0\n")
    pump = LogPump({"stdout": p.stdout_path, "stderr": p.stderr_path}, sink,
                   interval_s=0.05, max_chunk=4096)
    p.start()
    pump.start()
    assert p.run(time_limit_s=30).exit_code == 0
    assert pump.stop(flush_timeout_s=10)
    assert bytes(got["stdout"]) == p.stdout_path.read_bytes()
    assert bytes(got["stderr"]) == p.stderr_path.read_bytes()
    assert got["stdout"].splitlines()[-1] == b"line 3000"
    assert calls["n"] > 4  # it really sent in several chunks and rounds
