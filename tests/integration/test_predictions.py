"""The house policy in the product: runtime history is kept across restarts, ETAs are marked."""

from __future__ import annotations

import json
import time

import pytest

from skyport.models import JobState
from skyport.scheduler import HISTORY_FILE
from skyport.script import build_spec

from .conftest import LOCAL_CPUS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

WHOLE_GATE = f"#!/bin/bash\n#SKYPORT --cpus-per-node={LOCAL_CPUS} --time=10m\n"


def _history(path, timeout: float = 60) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.2)
    return json.loads(path.read_text())


def test_sky_keeps_runtime_history_across_a_restart_and_marks_predicted_etas(
    fresh_controlplane,
) -> None:
    cp = fresh_controlplane(policy="sky")
    with cp.client() as c:
        first = c.submit(build_spec(WHOLE_GATE + "echo short\n"))
        assert c.wait(first.id, timeout=60).state == JobState.SUCCEEDED
        # the end is charged at the Scheduler's next pass: give it one
        second = c.submit(build_spec(WHOLE_GATE + "echo again\n"))
        assert c.wait(second.id, timeout=60).state == JobState.SUCCEEDED
    saved = _history(cp.home / HISTORY_FILE)
    (runtime_s, requested_s), *_ = saved["owners"]["admin"]
    assert requested_s == 600.0 and 0.0 <= runtime_s < 600.0
    cp.stop()
    cp.start()
    with cp.client() as c:
        running = c.submit(build_spec(WHOLE_GATE + "sleep 20\n"))
        deadline = time.monotonic() + 60
        while c.job(running.id).state != JobState.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        queued = c.submit(build_spec(WHOLE_GATE + "echo after\n"))
        deadline = time.monotonic() + 30
        while (job := c.job(queued.id)).planned_start_at is None:
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job.state == JobState.QUEUED and job.planned_start_predicted
        c.cancel(running.id)
        c.cancel(queued.id)
    # the restarted Scheduler read the history back and kept it
    assert _history(cp.home / HISTORY_FILE)["owners"]["admin"][0] == [runtime_s, requested_s]
