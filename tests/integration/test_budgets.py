"""Budgets on a real control plane (local Ray, the local gate priced at 360 per node-hour,
the REST API over mutual TLS): a job waits for budget, runs once an admin raises it,
``skyport cost`` shows the spend, and a restart keeps the accounting."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from skyport.cli import cli
from skyport.config import GateEntry
from skyport.errors import NotFoundError, PermissionDeniedError
from skyport.models import Job, JobState
from skyport.script import build_spec

from .conftest import LOCAL_CPUS, until_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
S = JobState
PER_SECOND = 0.1  # 360 per node-hour: a 1-minute limit on 1 node is a worst case of 6.00



def _spent(jobs: list[Job]) -> float:
    """What the jobs' RUNNING stretches cost, from their own events."""
    return sum(b - a for j in jobs for a, b in j.running_spans()) * PER_SECOND


def _cost(home: Path, *args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(cli, ["--home", str(home), "--user", "alice", "cost",
                                      "--json", *args])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_a_job_waits_for_budget_runs_when_raised_and_the_spend_survives_a_restart(
        fresh_controlplane) -> None:
    cp = fresh_controlplane(gates=[GateEntry(name="local", type="local", config={
        "cpus": LOCAL_CPUS, "price_per_hour": 360.0})])
    cp.add_user("alice")
    signals = Path(tempfile.mkdtemp(prefix="sp-go-", dir="/var/tmp"))  # a node has its own /tmp
    signals.chmod(0o755)  # the payload runs as a user of its own: it must see the file
    go_on = signals / "go-on"
    short = "#!/bin/bash\n#SKYPORT --time=1m\nsleep 1; echo done\n"
    with cp.client() as admin, cp.client("alice") as alice:
        admin.set_budget("alice", 10)
        with pytest.raises(PermissionDeniedError):
            alice.set_budget("alice", 1000)
        with pytest.raises(NotFoundError, match="no user 'nobody' is registered"):
            admin.set_budget("nobody", 5)  # the registry is the API's: checked there
        first = alice.submit(build_spec(short)).id
        assert alice.wait(first, timeout=120).state == S.SUCCEEDED
        assert alice.budget().spent > 0
        long = alice.submit(build_spec(
            "#!/bin/bash\n#SKYPORT --time=1m\n"
            f"for i in $(seq 250); do [ -e {go_on} ] && break; sleep 0.2; done\n")).id
        until_job(alice, long, lambda j: j.state == S.RUNNING, "the long job to run")
        # spent + 6.00 committed by the long job + 6.00 for this one > 10.00
        third = alice.submit(build_spec(short)).id
        job = until_job(alice, third, lambda j: j.wait_reason == "Budget", "the Budget reason")
        assert job.state == S.QUEUED
        assert job.wait_detail.startswith("needs 6.00, "), job.wait_detail
        assert job.wait_detail.endswith(" of 10.00 left this month"), job.wait_detail
        assert alice.budget().waiting == [third]

        admin.set_budget("alice", 100)
        assert alice.wait(third, timeout=120).state == S.SUCCEEDED
        before = alice.budget()
        assert before.limit == 100.0 and before.committed > 0  # the long job runs on

    cp.stop()  # the long job's node outlives the control plane
    cp.start()
    go_on.touch()
    with cp.client("alice") as alice:
        assert alice.wait(long, timeout=120).state == S.SUCCEEDED
        jobs = [alice.job(j) for j in (first, long, third)]
        after = alice.budget()
        assert (after.limit, after.period, after.committed) == (100.0, "month", 0.0)
        # every second each job ran, the long one's across the restart too, and no more
        assert after.spent == pytest.approx(_spent(jobs), rel=1e-9)
        assert after.spent >= before.spent
        assert [len(j.running_spans()) for j in jobs] == [1, 1, 1]
    report = _cost(cp.home)
    assert report["user"] == "alice" and report["by"] == "gate"
    (row,) = report["rows"]
    assert (row["key"], row["jobs"]) == ("local", 3)
    assert report["total"] == pytest.approx(after.spent, rel=1e-9)
    by_day = _cost(cp.home, "--by", "day", "--since", "2000-01-01")
    assert sum(r["cost"] for r in by_day["rows"]) == pytest.approx(after.spent, rel=1e-9)
    shutil.rmtree(signals, ignore_errors=True)
