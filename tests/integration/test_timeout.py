"""--time is enforced on every node: a 2-node MPI job past its limit ends TIMEOUT with
nothing of it left anywhere."""

from __future__ import annotations

import time

import pytest

from skyport.models import JobState
from skyport.script import build_spec

from .conftest import processes_of_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SCRIPT = """#!/bin/bash
#SKYPORT --name=overrun --nodes=2 --cpus-per-node=2 --ranks-per-node=1 --time=00:00:06
trap '' TERM
$SKYPORT_MPIEXEC bash -c 'trap "" TERM; echo "rank on $SKYPORT_NODE_NAME"; sleep 300'
"""


def test_job_past_its_time_ends_timeout_with_no_process_left(admin) -> None:
    job = admin.submit(build_spec(SCRIPT))
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.update(processes_of_job(job.id))
        if admin.logs(job.id).data.count(b"rank on") == 2:
            break
        time.sleep(0.3)
    out = admin.logs(job.id).data.decode()
    assert out.count("rank on") == 2, out  # ranks really ran on both nodes
    seen.update(processes_of_job(job.id))
    done = admin.wait(job.id, timeout=60)
    assert done.state == JobState.TIMEOUT, done.reason
    assert {line.split()[-1] for line in out.splitlines()} == set(done.node_names)
    assert len(seen) > 4  # script, mpiexec, proxies and ranks on both nodes
    for _ in range(20):  # the cluster is deleted right after the job ends
        if not processes_of_job(job.id):
            break
        time.sleep(0.5)
    assert processes_of_job(job.id) == []
