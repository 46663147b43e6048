"""Group commit: submissions that are ready together are stored in one transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from skyport.core.intake import JobIntake
from skyport.errors import ConflictError
from skyport.models import JobSpec, JobState
from skyport.pki import Identity
from skyport.storage import JobStorage
from skyport.store import JobStore

ALICE = Identity("alice", "user")
SPEC = JobSpec.model_validate({"script": "#!/bin/bash\ntrue\n"})


class Gate:
    async def can_ever_fit(self, *_: object) -> str | None:
        return None


def intake_at(tmp_path: Path) -> JobIntake:
    return JobIntake(JobStore(tmp_path / "jobs.db"),
                     JobStorage((tmp_path / "storage").as_uri()), {"g": Gate()})


def test_concurrent_submissions_share_one_commit_and_each_is_stored(tmp_path: Path) -> None:
    intake = intake_at(tmp_path)

    async def scenario() -> list[str]:
        await intake.submit(ALICE, SPEC)  # the gate's answer is remembered from here on
        before = intake.commits.commits
        jobs = await asyncio.gather(*(intake.submit(ALICE, SPEC) for _ in range(8)))
        assert intake.commits.commits == before + 1
        return [j.id for j in jobs]

    ids = asyncio.run(scenario())
    store = JobStore(tmp_path / "jobs.db")  # what another connection reads: committed
    for job_id in ids:
        job = store.get(job_id)
        assert job.state is JobState.QUEUED
        assert [e.state for e in job.events] == [JobState.QUEUED]
        assert intake.storage.read_from(job_id, "script.sh", 0) == SPEC.script.encode()
    assert len({store.get(i).submitted_at for i in ids}) == 1  # one transaction
    assert [j.id for j in store.list()][1:] == ids  # in the order they were taken


def test_a_row_that_fails_does_not_refuse_the_others_of_its_group(tmp_path: Path) -> None:
    intake = intake_at(tmp_path)
    intake.store.add("taken", "alice", SPEC)

    async def scenario() -> list[object]:
        group = intake.commits
        return await asyncio.gather(group.add("a1", "alice", SPEC),
                                    group.add("taken", "alice", SPEC),
                                    group.add("a2", "alice", SPEC), return_exceptions=True)

    a1, taken, a2 = asyncio.run(scenario())
    assert isinstance(taken, ConflictError)
    assert {intake.store.get("a1").id, intake.store.get("a2").id} == {"a1", "a2"}
    assert getattr(a1, "id", None) == "a1" and getattr(a2, "id", None) == "a2"


def test_add_many_is_all_or_nothing(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db")
    store.add("taken", "alice", SPEC)
    with pytest.raises(ConflictError):
        store.add_many([("b1", "alice", SPEC), ("taken", "alice", SPEC)])
    assert [j.id for j in store.list()] == ["taken"]
