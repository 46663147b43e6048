"""Choosing a gate by price and time, on a real control plane (local Ray, the REST API over
mutual TLS) with two local gates: ``cheap`` (0.10 per node-hour, 10 minutes to boot) and
``fast`` (1.00 per node-hour, 5 seconds). The local gate only advertises its boot time; the
planner reads it, and that is what is tested here."""

from __future__ import annotations

import pytest

from skyport.config import GateEntry
from skyport.errors import ValidationError
from skyport.models import JobState
from skyport.script import build_spec

from .conftest import until_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
S = JobState

CHEAP = GateEntry(name="cheap", type="local",
                  config={"cpus": 4, "price_per_hour": 0.10, "boot_s": 600})
FAST = GateEntry(name="fast", type="local",
                 config={"cpus": 4, "price_per_hour": 1.00, "boot_s": 5})


def _script(directives: str, body: str = "echo ok") -> str:
    # 10 minutes: on cheap a job needs 600 s of boot + 600 s; on fast 5 s + 600 s
    return f"#!/bin/bash\n#SKYPORT --time=10m {directives}\n{body}\n"



def test_price_cap_cost_preference_deadlines_and_refusals(fresh_controlplane) -> None:
    cp = fresh_controlplane(gates=[CHEAP, FAST])
    with cp.client() as c:
        # --max-price excludes the expensive gate: with cheap full, a capped job waits for
        # it although fast has free cores, and an uncapped job takes fast at once
        blocker = c.submit(build_spec(_script(
            "--gate=cheap --cpus-per-node=4", "for i in $(seq 600); do sleep 0.2; done"))).id
        until_job(c, blocker, lambda j: j.state == S.RUNNING, "the blocker to run")
        capped = c.submit(build_spec(_script("--max-price=0.50"))).id
        free = c.submit(build_spec(_script(""))).id
        assert c.wait(free, timeout=120).gate == "fast"
        job = until_job(c, capped, lambda j: j.wait_reason == "Resources", "capped to wait")
        assert job.state == S.QUEUED and "on cheap" in (job.wait_detail or "")
        entry = next(e for e in c.timetable().entries if e.job_id == capped)
        assert (entry.gate, entry.flavor) == ("cheap", "local")
        assert entry.est_cost == pytest.approx(1 * 0.10 * 600 / 3600)  # nodes x price x hours
        c.cancel(blocker)
        done = c.wait(capped, timeout=120)
        assert (done.state, done.gate) == (S.SUCCEEDED, "cheap"), done.events

        # --prefer=cost with a loose deadline: the cheap gate, though it boots slowly
        loose = c.submit(build_spec(_script("--prefer=cost --deadline=+2h")))
        assert loose.spec.deadline is not None and not loose.spec.deadline.startswith("+")
        done = c.wait(loose.id, timeout=120)
        assert (done.state, done.gate) == (S.SUCCEEDED, "cheap"), done.events

        # a deadline only the fast gate can meet (cheap needs 1,200 s, fast 605 s)
        tight = c.submit(build_spec(_script("--prefer=cost --deadline=+15m"))).id
        done = c.wait(tight, timeout=120)
        assert (done.state, done.gate) == (S.SUCCEEDED, "fast"), done.events

        # impossible combinations are refused, saying which field, what and why
        before = len(c.jobs())
        with pytest.raises(ValidationError) as info:
            c.submit(build_spec(_script("--max-price=0.50 --deadline=+15m")))
        assert info.value.field == "deadline"
        assert "the fastest gate within --max-price, cheap, needs 600 s to boot plus the " \
               "time limit 600 s" in info.value.allowed
        with pytest.raises(ValidationError) as info:
            c.submit(build_spec(_script("--max-price=0.05")))
        assert (info.value.field, info.value.value) == ("max_price_per_hour", 0.05)
        assert "at least 0.1 per node-hour" in info.value.allowed
        with pytest.raises(ValidationError) as info:
            c.submit(build_spec(_script("--deadline=2020-01-01T00:00")))
        assert info.value.field == "deadline" and "in the future" in info.value.allowed
        assert len(c.jobs()) == before  # nothing queued
