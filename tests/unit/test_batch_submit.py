"""`POST /v1/jobs/batch` (Client.submit_many): several jobs in one call and one
transaction, all or none, through the real routes and Core."""

from __future__ import annotations

import pytest

from skyport.client.testing import TestControlPlane
from skyport.errors import ValidationError
from skyport.models import JobSpec, JobState

TRUE = JobSpec.model_validate({"script": "#!/bin/bash\ntrue\n", "name": "b"})


def test_a_batch_is_stored_and_each_job_is_queued_as_its_owners() -> None:
    with TestControlPlane() as cp:
        client = cp.client("alice")
        jobs = client.submit_many([TRUE, TRUE.model_copy(update={"name": "c"}), TRUE])
        assert [j.name for j in jobs] == ["b", "c", "b"]
        assert len({j.id for j in jobs}) == 3
        for job in jobs:
            stored = cp.store.get(job.id)
            assert stored.owner == "alice"
            assert stored.state is not JobState.CANCELLED
            assert cp.storage.read_from(job.id, "script.sh", 0) == TRUE.script.encode()


def test_one_refused_job_refuses_the_batch_and_names_it() -> None:
    with TestControlPlane() as cp:
        client = cp.client("alice")
        bad = TRUE.model_copy(update={"gate": "nowhere"})
        with pytest.raises(ValidationError) as refused:
            client.submit_many([TRUE, bad])
        assert refused.value.field == "jobs[1].gate"
        assert "nowhere" in refused.value.message
        assert cp.store.list() == []  # nothing stored


def test_a_batch_body_is_bounded() -> None:
    with TestControlPlane() as cp:
        client = cp.client("alice")
        with pytest.raises(ValidationError) as empty:
            client.submit_many([])
        assert empty.value.field == "specs"
        # the server refuses it too, whoever calls
        with pytest.raises(ValidationError) as raw:
            client.call("POST", "/v1/jobs/batch", list, json={"jobs": []})
        assert "jobs" in raw.value.message
