"""Who may call what, over a real HTTPS server with mutual TLS.

The Core runs here as a plain ``CoreService`` (no Ray, no gate): these tests
are about the door, not the lifecycle.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from skyport import pki, tokens
from skyport.api.app import create_app
from skyport.api.tls import client_ssl_context, start_in_thread
from skyport.core.service import CoreService, CoreSettings
from skyport.models import JobSpec, JobState
from skyport.storage import JobStorage
from skyport.store import JobStore
from skyport.users import REGISTRY_FILE, UserRegistry

pytestmark = pytest.mark.timeout(60)


async def _no_plan(*_: Any) -> list:
    return []


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    pki_dir = tmp_path / "pki"
    pki.init_ca(pki_dir)
    pki.issue_server_cert(pki_dir, ["localhost"])
    for name, role in (("alice", "user"), ("bob", "user"), ("root", "admin")):
        pki.issue_user_cert(pki_dir, name, role=role)  # type: ignore[arg-type]
    store = JobStore(tmp_path / "jobs.db")
    storage = JobStorage((tmp_path / "storage").as_uri())
    core = CoreService(
        store, storage, gates={}, planner=_no_plan, settings=CoreSettings(control_url="", ca_pem="")
    )
    spec = JobSpec(script="#!/bin/bash\ntrue\n")
    jobs = {}
    for name in ("mine", "other"):
        job = store.add(f"job-{name}", "alice", spec)
        token = tokens.new_token()
        store.transition(job.id, JobState.SCHEDULED, "test")
        store.transition(job.id, JobState.PROVISIONING, "test", token_hash=tokens.hash_token(token))
        storage.put(job.id, "script.sh", spec.script.encode())
        jobs[name] = (job.id, token)
    audit = tmp_path / "logs" / "audit.jsonl"
    app = create_app(core, storage, users=UserRegistry(pki_dir), audit_log=audit)
    handle = start_in_thread(app, pki_dir=pki_dir)
    try:
        yield {"url": handle.url, "pki": pki_dir, "jobs": jobs, "store": store, "audit": audit}
    finally:
        handle.stop()
        store.close()


def _client(srv: dict[str, Any], user: str | None = None,
            cert: tuple[Path, Path] | None = None) -> httpx.Client:
    ca = srv["pki"] / "ca.crt"
    if cert is not None:
        ctx = client_ssl_context(ca, *cert)
    elif user is None:
        ctx = client_ssl_context(ca)
    else:
        ctx = client_ssl_context(ca, *pki.user_cert_paths(srv["pki"], user))
    return httpx.Client(base_url=srv["url"], verify=ctx, timeout=10)


def test_an_agent_token_reaches_its_own_job_only(server: dict[str, Any]) -> None:
    mine, token = server["jobs"]["mine"]
    other, _ = server["jobs"]["other"]
    auth = {"Authorization": f"Bearer {token}"}
    with _client(server) as agent:
        assert agent.get(f"/agent/v1/jobs/{mine}/files/script.sh", headers=auth).status_code == 200
        r = agent.get(f"/agent/v1/jobs/{other}/files/script.sh", headers=auth)
        assert r.status_code == 403 and r.json()["error"] == "PermissionDeniedError"
        r = agent.post(
            f"/agent/v1/jobs/{other}/nodes/0/hello", json={"node_name": "x"}, headers=auth
        )
        assert r.status_code == 403
        # a job token is no user credential
        assert agent.get("/v1/jobs", headers=auth).status_code == 401
        # agents write only outputs/ and checkpoints/, never outside the job's prefix
        for path in ("script.sh", "inputs/x", "outputs/../script.sh", "logs/stdout"):
            r = agent.put(f"/agent/v1/jobs/{mine}/files/{path}", content=b"x", headers=auth)
            assert r.status_code in (403, 404, 422), path
        assert (
            agent.put(
                f"/agent/v1/jobs/{mine}/files/outputs/a.txt", content=b"x", headers=auth
            ).status_code
            == 200
        )
        assert (
            agent.get(f"/agent/v1/jobs/{mine}/files/script.sh", headers=auth).content
            == b"#!/bin/bash\ntrue\n"
        )
    # nothing changed for the other job
    assert server["store"].get(other).state == JobState.PROVISIONING


def test_calls_without_credentials_are_refused(server: dict[str, Any]) -> None:
    mine, _ = server["jobs"]["mine"]
    with _client(server) as anonymous:
        r = anonymous.get("/v1/jobs")
        assert r.status_code == 401
        assert "certificate" in r.json()["message"]
        assert anonymous.post(f"/agent/v1/jobs/{mine}/nodes/0/heartbeat").status_code == 401
        r = anonymous.post(
            f"/agent/v1/jobs/{mine}/nodes/0/heartbeat", headers={"Authorization": "Bearer wrong"}
        )
        assert r.status_code == 403


def test_users_see_only_their_jobs_and_admins_all(server: dict[str, Any]) -> None:
    mine, _ = server["jobs"]["mine"]
    with (
        _client(server, "alice") as alice,
        _client(server, "bob") as bob,
        _client(server, "root") as root,
    ):
        assert {j["id"] for j in alice.get("/v1/jobs").json()} == {"job-mine", "job-other"}
        assert bob.get("/v1/jobs").json() == []
        assert bob.get(f"/v1/jobs/{mine}").status_code == 404
        assert bob.post(f"/v1/jobs/{mine}/cancel").status_code == 404
        assert bob.get("/v1/jobs", params={"all": "true"}).status_code == 403
        assert len(root.get("/v1/jobs", params={"all": "true"}).json()) == 2
        assert root.get(f"/v1/jobs/{mine}").json()["owner"] == "alice"


def test_bad_input_gets_a_clear_error_and_changes_nothing(server: dict[str, Any]) -> None:
    with _client(server, "alice") as alice:
        before = alice.get("/v1/jobs").json()
        r = alice.post("/v1/jobs", json={"spec": {"script": "true", "resources": {"nodes": 0}}})
        assert r.status_code == 422
        body = r.json()
        assert body["error"] == "ValidationError"
        assert "nodes" in body["message"] and "0" in body["message"]
        r = alice.post("/v1/jobs", json={"spec": {"script": "true", "outputs": ["../../etc"]}})
        assert r.status_code == 422 and "outputs" in r.json()["message"]
        r = alice.post(
            "/v1/jobs",
            content=b"x" * (97 * 1024 * 1024),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413
        r = alice.get("/v1/jobs", params={"state": "DANCING"})
        assert r.status_code == 422 and "DANCING" in r.json()["message"]
        assert alice.get("/v1/jobs").json() == before


# -- issue 10: the registry, the docs, the audit log, over real TLS -------------------------


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_docs_and_schema_need_a_user_certificate(server: dict[str, Any], path: str) -> None:
    with _client(server) as anonymous:
        answer = anonymous.get(path)
        assert answer.status_code == 401 and "paths" not in answer.text
    with _client(server, "alice") as alice:
        assert alice.get(path).status_code == 200


def test_revoking_a_user_refuses_their_next_call_without_a_restart(
        server: dict[str, Any]) -> None:
    with _client(server, "bob") as bob:
        assert bob.get("/v1/whoami").json()["username"] == "bob"
        UserRegistry(server["pki"]).revoke("bob")  # `skyport user revoke bob`
        # the same kept-alive connection: the check is per call, not per handshake
        answer = bob.post("/v1/jobs", json={"spec": {"script": "#!/bin/bash\ntrue\n"}})
        assert answer.status_code == 401 and "revoked" in answer.json()["message"]
    with _client(server, "bob") as again:
        assert again.get("/v1/whoami").status_code == 401
    assert server["store"].list(owner="bob") == []


def test_a_reissued_certificate_replaces_the_old_one(server: dict[str, Any],
                                                     tmp_path: Path) -> None:
    cert, key = pki.user_cert_paths(server["pki"], "alice")
    old = (tmp_path / "old.crt", tmp_path / "old.key")
    old[0].write_bytes(cert.read_bytes())
    old[1].write_bytes(key.read_bytes())
    pki.issue_user_cert(server["pki"], "alice", overwrite=True)  # `user add alice --force`
    with _client(server, cert=old) as thief:
        assert thief.get("/v1/jobs").status_code == 401
    with _client(server, "alice") as alice:
        assert alice.get("/v1/whoami").status_code == 200


def test_a_ca_signed_certificate_for_an_unregistered_name_is_refused(
        server: dict[str, Any]) -> None:
    registry = server["pki"] / REGISTRY_FILE
    saved = registry.read_bytes()
    pki.issue_user_cert(server["pki"], "mallory", role="admin")
    registry.write_bytes(saved)  # signed by our CA, never registered
    with _client(server, "mallory") as mallory:
        answer = mallory.get("/v1/jobs", params={"all": "true"})
        assert answer.status_code == 401 and "not registered" in answer.json()["message"]


def test_changing_calls_are_audited_with_who_and_result(server: dict[str, Any]) -> None:
    mine, token = server["jobs"]["mine"]
    with _client(server, "bob") as bob:
        assert bob.post(f"/v1/jobs/{mine}/cancel").status_code == 404
    with _client(server, "alice") as alice:
        assert alice.post(f"/v1/jobs/{mine}/cancel").status_code == 200
        alice.get("/v1/jobs")
    lines = [json.loads(x) for x in server["audit"].read_text().splitlines()]
    assert [(x["who"], x["path"], x["job_id"], x["status"], x["result"]) for x in lines] == [
        ("bob", f"/v1/jobs/{mine}/cancel", mine, 404, "NotFoundError"),
        ("alice", f"/v1/jobs/{mine}/cancel", mine, 200, "ok"),
    ]
