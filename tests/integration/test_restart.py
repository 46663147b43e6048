"""A control plane stopped or killed, then started again, loses nothing."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from skyport.controlplane import read_pid
from skyport.models import JobState
from skyport.script import build_spec

from .conftest import LOCAL_CPUS, processes_of_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

WHOLE_GATE = f"#!/bin/bash\n#SKYPORT --cpus-per-node={LOCAL_CPUS} --time=5m\n"


def _wait_state(client, job_id: str, state: JobState, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.job(job_id).state != state:
        assert time.monotonic() < deadline, client.job(job_id)
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["stop", "sigkill"])
def test_restart_keeps_queued_running_and_finished_jobs(fresh_controlplane, how: str) -> None:
    cp = fresh_controlplane()
    # the running job runs until the test says so, however slow a loaded machine is; the
    # payload runs as a user of its own, so the signal file is where that user can look
    signals = Path(tempfile.mkdtemp(prefix="sp-go-", dir="/var/tmp"))  # a node has its own /tmp
    signals.chmod(0o755)
    go_on = signals / "go-on"
    with cp.client() as c:
        done = c.submit(build_spec("#!/bin/bash\necho finished-before\n"))
        assert c.wait(done.id, timeout=60).state == JobState.SUCCEEDED
        history = [e.state for e in c.job(done.id).events]
        running = c.submit(build_spec(
            WHOLE_GATE + f"for i in $(seq 600); do [ -e {go_on} ] && break; sleep 0.2; done\n"))
        _wait_state(c, running.id, JobState.RUNNING)
        queued = c.submit(build_spec(WHOLE_GATE + "echo ran-after-restart\n"))
        time.sleep(0.5)
        assert c.job(queued.id).state == JobState.QUEUED
    if how == "stop":
        cp.stop()
    else:
        pid = read_pid(cp.state)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(1)
    # the running job's node processes outlive the control plane, like cloud VMs
    assert processes_of_job(running.id)
    cp.start()
    go_on.touch()
    with cp.client() as c:
        assert [e.state for e in c.job(done.id).events] == history
        assert c.logs(done.id).data == b"finished-before\n"
        first = c.wait(running.id, timeout=120)
        assert first.state == JobState.SUCCEEDED, first.events
        second = c.wait(queued.id, timeout=120)
        assert second.state == JobState.SUCCEEDED, second.events
        assert c.logs(queued.id).data == b"ran-after-restart\n"
        # one run each: the running job was adopted, not started again
        assert [e.state for e in first.events].count(JobState.RUNNING) == 1, [
            (e.state.value, e.reason) for e in first.events]
        assert second.started_at >= first.ended_at
    assert processes_of_job(running.id) == []
    shutil.rmtree(signals, ignore_errors=True)
