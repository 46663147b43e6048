"""Jobs' secrets (``skyport.relay.secrets``): kept across an API restart, 0600, end with the job."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from skyport.api import deps
from skyport.api.app import create_app
from skyport.client.testing import TestControlPlane, _named_user
from skyport.errors import ConflictError, NotFoundError, ValidationError
from skyport.models import JobSpec, JobState
from skyport.protocol import Empty, SecretBody
from skyport.relay.secrets import MAX_SECRETS_PER_JOB, JobSecrets

TOKEN = "hub-token-" + "s3cr3t" * 4


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_round_trip_through_files_only_their_owner_reads(tmp_path: Path) -> None:
    where = tmp_path / "secrets"
    kept = JobSecrets(where)
    kept.put("ab12cd34", "env", TOKEN)
    kept.put("ab12cd34", "other", "x")
    assert _mode(where) == 0o700 and _mode(where / "ab12cd34.json") == 0o600
    assert [p.name for p in where.iterdir()] == ["ab12cd34.json"]  # no temporary left
    again = JobSecrets(where)  # a restarted control plane
    assert again.get("ab12cd34", "env") == TOKEN and again.held() == ["ab12cd34"]
    assert again.get("ab12cd34", "none") is None and again.get("ffff0000", "env") is None
    again.forget("ab12cd34")
    assert again.get("ab12cd34", "env") is None and list(where.iterdir()) == []
    again.forget("ab12cd34")  # twice: nothing to do


def test_a_job_id_that_is_a_path_and_too_many_secrets_are_refused(tmp_path: Path) -> None:
    kept = JobSecrets(tmp_path / "secrets")
    for bad in ("../evil", "..", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(ValidationError, match="job_id"):
            kept.put(bad, "env", "v")
    assert list(tmp_path.rglob("*evil*")) == [] and kept.held() == []
    for i in range(MAX_SECRETS_PER_JOB):
        kept.put("ab12cd34", f"s{i}", "v")
    with pytest.raises(ConflictError, match="secrets"):
        kept.put("ab12cd34", "one-more", "v")
    kept.put("ab12cd34", "s0", "replaced")  # an existing name may be put again
    assert kept.get("ab12cd34", "s0") == "replaced"


def _spec() -> JobSpec:
    return JobSpec(name="nb", script="#!/bin/bash\nsleep 1000\n")


def _wait_gone(path: Path) -> None:
    deadline = time.monotonic() + 30
    while path.exists():
        assert time.monotonic() < deadline, f"{path} is still there"
        time.sleep(0.01)


def test_a_secret_survives_an_api_restart_and_is_removed_when_the_job_ends() -> None:
    with TestControlPlane() as cp:
        alice, bob = cp.client("alice"), cp.client("bob")
        job = alice.submit(_spec())
        other = alice.submit(_spec())
        body = SecretBody(value=TOKEN)
        with pytest.raises(NotFoundError):  # another user's job: as if there were none
            bob.call("PUT", f"/v1/jobs/{job.id}/secrets/jupyter-env", Empty, body=body)
        for bad in ("-x", "a.b", "a%2F..%2Fb", "A" * 40):
            with pytest.raises((ValidationError, NotFoundError)):
                alice.call("PUT", f"/v1/jobs/{job.id}/secrets/{bad}", Empty, body=body)
        alice.call("PUT", f"/v1/jobs/{job.id}/secrets/jupyter-env", Empty, body=body)
        kept = cp.root / "secrets" / f"{job.id}.json"
        assert _mode(kept) == 0o600 and _mode(kept.parent) == 0o700
        assert sorted(p.name for p in kept.parent.iterdir()) == [kept.name]

        # the API process restarts (its memory and its sweeper are gone) before the server
        # starts; the new one finds the secret
        cp._run(cp.app.state.relay.secrets.close())
        cp.app = create_app(cp.service, cp.storage, secrets_dir=cp.root / "secrets")
        cp.app.state.relay.secrets.sweep_s = 0.05
        cp.app.dependency_overrides[deps.user] = _named_user
        lifespan = cp.app.router.lifespan_context(cp.app)
        cp._run(lifespan.__aenter__())
        alice, bob = cp.client("alice"), cp.client("bob")
        agents = cp.start(job.id)
        assert agents[0].secret("jupyter-env") == TOKEN
        other_agents = cp.start(other.id)
        with pytest.raises(NotFoundError):  # its own job has no such secret
            other_agents[0].secret("jupyter-env")
        with pytest.raises(Exception, match="token"):  # another job's token reaches nothing
            cp.agent(job.id, other_agents.token).secret("jupyter-env")

        # never in the job's storage prefix, its record or its logs
        stored = b"".join(p.read_bytes() for p in (cp.root / "storage").rglob("*")
                          if p.is_file())
        assert TOKEN.encode() not in stored
        assert TOKEN not in alice.job(job.id).model_dump_json()
        assert TOKEN not in alice.logs(job.id).data.decode()

        alice.cancel(job.id)
        assert cp.wait_state(job.id, JobState.CANCELLED)
        _wait_gone(kept)
        with pytest.raises(Exception, match="token"):  # the ended job's token reads nothing
            agents[0].secret("jupyter-env")
        with pytest.raises(Exception, match="CANCELLED"):  # and it takes none
            alice.call("PUT", f"/v1/jobs/{job.id}/secrets/jupyter-env", Empty, body=body)
        assert not kept.exists()
        cp._run(lifespan.__aexit__(None, None, None))


def test_secrets_of_a_job_that_ended_while_the_api_was_down_are_removed_at_start() -> None:
    with TestControlPlane() as cp:
        alice = cp.client("alice")
        job = alice.submit(_spec())
        alice.call("PUT", f"/v1/jobs/{job.id}/secrets/env", Empty, body=SecretBody(value="v"))
        kept = cp.root / "secrets" / f"{job.id}.json"
        cp._run(cp.app.state.relay.secrets.close())  # the API process is down...
        alice.cancel(job.id)  # ...and the job ends meanwhile
        cp.wait_state(job.id, JobState.CANCELLED)
        assert kept.exists()
        (kept.parent / "0badf00d.json").write_text('{"env": "of a job never known"}')
        app = create_app(cp.service, cp.storage, secrets_dir=cp.root / "secrets")
        app.state.relay.secrets.sweep_s = 0.05
        lifespan = app.router.lifespan_context(app)
        cp._run(lifespan.__aenter__())
        _wait_gone(kept)
        _wait_gone(kept.parent / "0badf00d.json")
        cp._run(lifespan.__aexit__(None, None, None))
