"""Every waiting job says why, and a job that can never run is refused or ended: on a real
control plane (local Ray, the local gate with 8 cores, the REST API over mutual TLS)."""

from __future__ import annotations

import pytest

from skyport.errors import ValidationError
from skyport.models import JobState
from skyport.script import build_spec

from .conftest import LOCAL_CPUS, until_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
S = JobState


def _script(directives: str, body: str = "true") -> str:
    return f"#!/bin/bash\n#SKYPORT {directives} --time=10m\n{body}\n"


@pytest.mark.parametrize(("nodes", "cpus", "named"), [
    (9, 1, f"invalid nodes: 9 (at most {LOCAL_CPUS};"),  # more nodes than the gate has
    (5, 2, f"invalid nodes x cpus_per_node: 10 (at most {LOCAL_CPUS} cpus in all)"),
    (3, 3, f"invalid nodes x cpus_per_node: 9 (at most {LOCAL_CPUS} cpus in all)"),
])
def test_requests_larger_than_the_gate_in_all_are_refused(admin, nodes: int, cpus: int,
                                                          named: str) -> None:
    before = len(admin.jobs())
    with pytest.raises(ValidationError) as info:
        admin.submit(build_spec(_script(f"--nodes={nodes} --cpus-per-node={cpus}")))
    # the message names the total asked for and the gate's total
    assert named in str(info.value), str(info.value)
    assert len(admin.jobs()) == before  # nothing queued



def test_reasons_hold_release_and_a_gate_removed(fresh_controlplane) -> None:
    cp = fresh_controlplane(policy="fcfs")  # "Priority" below is FCFS keeping cores for "wide"
    with cp.client() as c:
        blocker = c.submit(build_spec(_script(
            "--cpus-per-node=6", "for i in $(seq 600); do sleep 0.2; done"))).id
        until_job(c, blocker, lambda j: j.state == S.RUNNING, "the blocker to run")
        wide = c.submit(build_spec(_script(f"--cpus-per-node={LOCAL_CPUS} --gate=local"))).id
        small = c.submit(build_spec(_script("--cpus-per-node=1"))).id
        job = until_job(c, wide, lambda j: j.wait_reason == "Resources", "Resources")
        assert job.planned_start_at is not None
        assert f"needs {LOCAL_CPUS} cores, 2 free now; planned start in" in (job.wait_detail or "")
        # 2 cores are free, but fcfs keeps them for the wider job ahead of it
        until_job(c, small, lambda j: j.wait_reason == "Priority", "Priority")

        assert c.hold(small).held
        until_job(c, small, lambda j: j.wait_reason == "Held", "Held")
        c.release(small)
        until_job(c, small, lambda j: j.wait_reason == "Priority", "Priority again")

        c.hold(wide)
        c.cancel(blocker)
        # the held job stays out of planning: the small one takes the free cores
        assert c.wait(small, timeout=120).state == S.SUCCEEDED
        assert c.job(wide).state == S.QUEUED and c.job(wide).wait_reason == "Held"

    cp.stop()
    config = cp.state.load_config()
    config.gates[0].name = "renamed"  # the job's gate is gone from the configuration
    cp.state.save_config(config)
    cp.start()
    with cp.client() as c:
        ended = until_job(c, wide, lambda j: j.state.is_terminal(), "the job to be ended")
        assert ended.state == S.CANCELLED
        assert ended.reason == "can never run: gate local is no longer configured"
