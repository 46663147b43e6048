"""A gate's "this shape can ever run here" is remembered, so a submission costs no gate call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from skyport.core import intake as intake_module
from skyport.core.intake import JobIntake
from skyport.errors import ValidationError
from skyport.models import JobSpec
from skyport.pki import Identity
from skyport.storage import JobStorage
from skyport.store import JobStore

ALICE = Identity("alice", "user")


class CountingGate:
    def __init__(self, max_cpus: int = 4) -> None:
        self.max_cpus = max_cpus
        self.asked: list[tuple[object, ...]] = []

    async def can_ever_fit(self, nodes: int, cpus_per_node: int, gpus_per_node: int,
                           mem_mb: int | None, flavor: str | None) -> str | None:
        self.asked.append((nodes, cpus_per_node))
        return None if cpus_per_node <= self.max_cpus else f"at most {self.max_cpus} cpus"


def spec(cpus: int) -> JobSpec:
    return JobSpec.model_validate({"script": "#!/bin/bash\ntrue\n",
                                   "resources": {"cpus_per_node": cpus}})


def test_a_fitting_shape_is_asked_once_and_a_refusal_every_time(tmp_path: Path) -> None:
    gate = CountingGate()
    intake = JobIntake(JobStore(tmp_path / "jobs.db"),
                       JobStorage((tmp_path / "storage").as_uri()), {"g": gate})

    async def scenario() -> None:
        for _ in range(3):
            await intake.submit(ALICE, spec(2))
        await intake.submit(ALICE, spec(1))
        for _ in range(2):
            with pytest.raises(ValidationError, match="at most 4 cpus"):
                await intake.submit(ALICE, spec(8))

    asyncio.run(scenario())
    assert gate.asked == [(1, 2), (1, 1), (1, 8), (1, 8)]
    assert len(intake.store.list()) == 4  # the refused ones left nothing


def test_the_memory_expires_and_stays_bounded(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    gate = CountingGate(max_cpus=64)
    intake = JobIntake(JobStore(tmp_path / "jobs.db"),
                       JobStorage((tmp_path / "storage").as_uri()), {"g": gate})
    monkeypatch.setattr(intake_module, "FIT_MEMORY_MAX", 3)

    async def scenario() -> None:
        for cpus in range(1, 9):  # a user trying many shapes cannot grow it without end
            await intake.submit(ALICE, spec(cpus))
            assert len(intake._fits_at) <= 3
        monkeypatch.setattr(intake_module, "FIT_MEMORY_S", 0.0)  # forgotten at once
        await intake.submit(ALICE, spec(8))

    asyncio.run(scenario())
    assert gate.asked == [(1, c) for c in range(1, 9)] + [(1, 8)]
