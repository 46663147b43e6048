"""Zero trust on the REST side (issue 10, part B): each test is an attack that must fail.

Each test plays the attacker, then checks that the attack was refused AND
changed nothing (no job, no file, no stored result).  Routes run through the
real app: ``TestControlPlane`` (real Core, memory gate) for job calls, and
the app with the real certificate dependency, fed a certificate the way the
TLS server feeds it (``skyport.api.tls._WithTlsExtension``), for the registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from skyport.api.app import create_app
from skyport.api.tls import _WithTlsExtension
from skyport.cli import app as cli_app
from skyport.cli.render import safe
from skyport.client.testing import BASE_URL, TestControlPlane
from skyport.config import SubmitLimits
from skyport.core.intake import JobIntake
from skyport.decorator import job as job_decorator
from skyport.errors import ConflictError, JobFailedError, PermissionDeniedError
from skyport.models import MAX_SCRIPT_BYTES, JobSpec, JobState
from skyport.pki import Identity, init_ca, issue_user_cert
from skyport.runtime.contract import RESULT_STORED_AS
from skyport.storage import JobStorage
from skyport.store import JobStore
from skyport.users import REGISTRY_FILE, UserRegistry

SCRIPT = "#!/bin/bash\necho hi\n"


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[TestControlPlane]:
    with TestControlPlane(tmp_path / "cp", audit_log=tmp_path / "logs" / "audit.jsonl") as cp:
        yield cp


def _raw(cp: TestControlPlane, user: str = "alice") -> httpx.Client:
    """An httpx client on the test transport: requests a typed Client would never send."""
    return httpx.Client(base_url=BASE_URL, transport=cp.client(user)._http._transport)


def _job_dirs(cp: TestControlPlane) -> set[str]:
    root = cp.root / "storage" / "jobs"
    return {p.name for p in root.iterdir()} if root.exists() else set()


# -- finding 7: the docs and the schema need a certificate ------------------------------


class _NoCore:
    async def execute(self, command: Any) -> Any:
        raise AssertionError(f"no Core call expected, got {command!r}")


def _pki(tmp_path: Path) -> Path:
    pki = tmp_path / "pki"
    init_ca(pki)
    return pki


def _call(app: Any, path: str, cert: Path | None) -> httpx.Response:
    """GET ``path`` as the TLS server would hand it to the app, with ``cert`` (or none)."""
    if cert is not None:
        app = _WithTlsExtension(app, {"client_cert_chain": [cert.read_text()],
                                      "server_cert": None, "client_cert_name": None,
                                      "client_cert_error": None, "tls_version": 0x0304,
                                      "cipher_suite": None})

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url=BASE_URL) as client:
            return await client.get(path)

    return asyncio.run(go())


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc"])
def test_docs_and_schema_refuse_a_caller_without_certificate(tmp_path: Path, path: str) -> None:
    pki = _pki(tmp_path)
    cert, _ = issue_user_cert(pki, "alice")
    app = create_app(_NoCore(), JobStorage((tmp_path / "s").as_uri()), users=UserRegistry(pki))
    refused = _call(app, path, None)
    assert refused.status_code == 401
    assert "paths" not in refused.text and "swagger" not in refused.text.lower()
    assert _call(app, path, cert).status_code == 200


# -- finding 5: the user registry ----------------------------------------------------------


def test_a_certificate_the_ca_signed_for_an_unregistered_name_is_refused(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    issue_user_cert(pki, "alice")
    registry = (pki / REGISTRY_FILE).read_bytes()
    # the attacker got the CA to sign "mallory" (or signed it with a stolen key) without
    # registering it: the CA's signature alone must not open the door
    mallory, _ = issue_user_cert(pki, "mallory", role="admin")
    (pki / REGISTRY_FILE).write_bytes(registry)
    app = create_app(_NoCore(), JobStorage((tmp_path / "s").as_uri()), users=UserRegistry(pki))
    answer = _call(app, "/v1/whoami", mallory)
    assert answer.status_code == 401
    assert "not registered" in answer.json()["message"]
    assert [u.name for u in UserRegistry(pki).list()] == ["alice"]


def test_a_revoked_user_is_refused_at_once_without_a_restart(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    cert, _ = issue_user_cert(pki, "bob")
    app = create_app(_NoCore(), JobStorage((tmp_path / "s").as_uri()), users=UserRegistry(pki))
    assert _call(app, "/v1/whoami", cert).json()["username"] == "bob"
    # the operator revokes bob in another process, without the CA key: the same app refuses
    (pki / "ca.key").rename(tmp_path / "ca.key.offline")
    UserRegistry(pki).revoke("bob")
    answer = _call(app, "/v1/whoami", cert)
    assert answer.status_code == 401 and "revoked" in answer.json()["message"]


def test_reissuing_a_certificate_revokes_the_old_one(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    old, _ = issue_user_cert(pki, "bob")
    stolen = tmp_path / "stolen.crt"
    shutil.copy(old, stolen)
    app = create_app(_NoCore(), JobStorage((tmp_path / "s").as_uri()), users=UserRegistry(pki))
    assert _call(app, "/v1/whoami", stolen).status_code == 200
    new, _ = issue_user_cert(pki, "bob", overwrite=True)  # `skyport user add bob --force`
    assert _call(app, "/v1/whoami", stolen).status_code == 401
    assert _call(app, "/v1/whoami", new).status_code == 200


def test_a_certificate_whose_role_differs_from_the_registry_is_refused(tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    admin_cert, _ = issue_user_cert(pki, "carol", role="admin")
    saved = (tmp_path / "carol-admin.crt")
    shutil.copy(admin_cert, saved)
    entry = UserRegistry(pki).list()[0]
    # carol is demoted in the registry while she keeps the admin certificate
    data = json.loads((pki / REGISTRY_FILE).read_text())
    data["users"]["carol"]["role"] = "user"
    (pki / REGISTRY_FILE).write_text(json.dumps(data))
    app = create_app(_NoCore(), JobStorage((tmp_path / "s").as_uri()), users=UserRegistry(pki))
    assert entry.role == "admin"
    assert _call(app, "/v1/whoami", saved).status_code == 401


def test_init_registers_the_admin(tmp_path: Path) -> None:
    from skyport.config import StateDir
    from skyport.controlplane import init_state

    state = StateDir(tmp_path / "home")
    init_state(state, local_cpus=1)
    assert [(u.name, u.role, u.revoked) for u in UserRegistry(state.pki).list()] == [
        ("admin", "admin", False)]


def test_a_state_directory_from_before_the_registry_adopts_its_certificates_once(
        tmp_path: Path) -> None:
    pki = _pki(tmp_path)
    issue_user_cert(pki, "admin", role="admin")
    issue_user_cert(pki, "alice")
    (pki / REGISTRY_FILE).unlink()  # as an earlier version left it
    registry = UserRegistry(pki)
    assert registry.adopt_issued() == ["admin", "alice"]
    assert {u.name: u.role for u in registry.list()} == {"admin": "admin", "alice": "user"}
    registry.revoke("alice")
    assert registry.adopt_issued() == []  # once: a revoked user is not adopted again
    assert registry.check("alice", "user", 1).ok is False


def test_user_list_and_revoke_from_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pki = home / "pki"
    init_ca(pki)
    issue_user_cert(pki, "admin", role="admin")
    runner = CliRunner()
    added = runner.invoke(cli_app.cli, ["--home", str(home), "user", "add", "dave", "--json"])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(cli_app.cli, ["--home", str(home), "user", "list", "--json"])
    assert [u["name"] for u in json.loads(listed.output)] == ["admin", "dave"]
    revoked = runner.invoke(cli_app.cli, ["--home", str(home), "user", "revoke", "dave"])
    assert revoked.exit_code == 0, revoked.output
    assert {u.name: u.revoked for u in UserRegistry(pki).list()} == {"admin": False,
                                                                    "dave": True}
    unknown = runner.invoke(cli_app.cli, ["--home", str(home), "user", "revoke", "erin"])
    assert unknown.exit_code == 1 and "no user 'erin'" in unknown.output


# -- finding 6: other users' jobs are anonymous busy capacity -------------------------------


def test_a_user_cannot_read_others_jobs_from_timetable_status_or_clusters(
        cp: TestControlPlane) -> None:
    whole = {"nodes": 8}  # the memory gate's every node
    secret = cp.client("alice").submit(JobSpec(name="secret-project", script=SCRIPT,
                                               resources=whole))
    cp.start(secret.id)
    mine = cp.client("bob").submit(JobSpec(name="bobs", script=SCRIPT,
                                           resources=whole))  # queued behind alice's
    cp.wait_planned(mine.id)
    bob = cp.client("bob")
    text = json.dumps([bob.timetable().model_dump(mode="json"),
                       bob.status().model_dump(mode="json"),
                       [c.model_dump(mode="json") for c in bob.clusters()]])
    for leak in (secret.id, "secret-project", "alice"):
        assert leak not in text
    entries = bob.timetable().entries
    assert {(e.job_id, e.owner) for e in entries} == {("", ""), (mine.id, "bob")}
    assert sum(bob.status().counts.values()) == 1
    # an admin still sees everything
    assert secret.id in {e.job_id for e in cp.client().timetable().entries}


# -- finding 8: bad input is refused with one clear line, and leaves nothing -------------------


@pytest.mark.parametrize("offset", [2**63, 2**64, 9223372036854775808 * 4])
def test_a_huge_log_offset_is_refused_not_a_500(cp: TestControlPlane, offset: int) -> None:
    job = cp.client("alice").submit(JobSpec(script=SCRIPT))
    answer = _raw(cp).get(f"/v1/jobs/{job.id}/logs/stdout", params={"offset": str(offset)})
    assert answer.status_code == 422
    assert answer.json()["field"].endswith("offset")
    # the largest offset a file can have is past the end: nothing to read, not an error
    last = _raw(cp).get(f"/v1/jobs/{job.id}/logs/stdout", params={"offset": str(2**63 - 1)})
    assert (last.status_code, last.content) == (200, b"")


BAD_SPECS = [
    ("lone surrogate in the script", {"script": "#!/bin/bash\necho \ud800\n"}),
    ("lone surrogate in an env value", {"script": SCRIPT, "env": {"A": "\udfff"}}),
    ("NUL in an env value", {"script": SCRIPT, "env": {"A": "x\x00y"}}),
    ("escape in an env value", {"script": SCRIPT, "env": {"A": "\x1b]0;pwn\x07"}}),
    ("NUL in the script", {"script": "#!/bin/bash\n\x00\n"}),
    ("control character in an input", {"script": SCRIPT, "inputs": ["https://x/\x1b[2J"]}),
    ("control character in an output", {"script": SCRIPT, "outputs": ["a\x07b"]}),
    ("a script over 1 MiB", {"script": "#" * (MAX_SCRIPT_BYTES + 1)}),
    ("an env over its cap", {"script": SCRIPT, "env": {f"V{i}": "x" * 1024 for i in range(200)}}),
    ("too many inputs", {"script": SCRIPT, "inputs": [f"upload:{i}" for i in range(300)]}),
    ("resources not a mapping, with a layout",
     {"script": SCRIPT, "resources": [["a", 1]], "layout": {"ranks_per_node": 2}}),
]


@pytest.mark.parametrize(("what", "spec"), BAD_SPECS, ids=[w for w, _ in BAD_SPECS])
def test_bad_specs_are_refused_in_one_line_and_leave_nothing(
        cp: TestControlPlane, what: str, spec: dict[str, Any]) -> None:
    before_files, before_jobs = _job_dirs(cp), cp.store.count()
    # surrogates cannot be sent as UTF-8: JSON's \ud800 escape carries them, as an attacker would
    body = json.dumps({"spec": spec}, ensure_ascii=True)
    answer = _raw(cp).post("/v1/jobs", content=body,
                           headers={"content-type": "application/json"})
    assert answer.status_code == 422, (what, answer.status_code, answer.text[:300])
    error = answer.json()
    assert error["error"] == "ValidationError" and "\n" not in error["message"]
    assert (_job_dirs(cp), cp.store.count()) == (before_files, before_jobs)


@pytest.mark.parametrize("price", ["1e999", "-1e999", "NaN", "Infinity"])
def test_an_infinite_max_price_is_refused(cp: TestControlPlane, price: str) -> None:
    body = '{"spec": {"script": "#!/bin/bash\\ntrue\\n", "max_price_per_hour": ' + price + "}}"
    answer = _raw(cp).post("/v1/jobs", content=body,
                           headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert cp.store.count() == 0


def test_a_non_utf8_script_is_one_line_from_the_cli(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "job.sh"
    script.write_bytes(b"#!/bin/bash\necho \xff\xfe\n")
    submitted: list[Any] = []
    monkeypatch.setattr(cli_app, "client_factory", lambda *_: submitted.append(1))
    result = CliRunner().invoke(cli_app.cli, ["submit", str(script)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: invalid script")
    assert "UTF-8" in result.output and "Traceback" not in result.output
    assert submitted == []


def test_the_per_user_queue_limit_refuses_a_flood(tmp_path: Path) -> None:
    class Gate:
        async def can_ever_fit(self, *args: Any) -> None:
            return None

    store = JobStore(tmp_path / "jobs.db")
    storage = JobStorage((tmp_path / "storage").as_uri())
    intake = JobIntake(store, storage, {"g": Gate()},
                       limits=SubmitLimits(max_queued_per_user=3))
    alice, bob = Identity("alice", "user"), Identity("bob", "user")
    spec = JobSpec(script=SCRIPT)
    for _ in range(3):
        asyncio.run(intake.submit(alice, spec))
    with pytest.raises(ConflictError, match="3 queued jobs: at most 3"):
        asyncio.run(intake.submit(alice, spec))
    assert store.count(owner="alice") == 3
    asyncio.run(intake.submit(bob, spec))  # one user's limit is theirs alone
    assert store.count() == 4
    store.close()


def test_job_listings_carry_no_scripts_and_page(cp: TestControlPlane) -> None:
    alice = cp.client("alice")
    big = "#!/bin/bash\n" + "# " + "x" * 500_000 + "\n"
    ids = [alice.submit(JobSpec(script=big)).id for _ in range(3)]
    first = _raw(cp).get("/v1/jobs", params={"limit": "2"})
    assert [j["id"] for j in first.json()] == ids[:2]
    assert len(first.content) < 10_000  # not 1 MB: no scripts
    after = first.headers["x-skyport-next-after"]
    rest = _raw(cp).get("/v1/jobs", params={"limit": "2", "after": after})
    assert [j["id"] for j in rest.json()] == ids[2:]
    assert "x-skyport-next-after" not in rest.headers
    assert [j.id for j in alice.jobs()] == ids  # the client pages through
    assert alice.job(ids[0]).spec.script == big  # one job's own answer keeps it


def test_job_listings_page_newest_first(cp: TestControlPlane) -> None:
    alice = cp.client("alice")
    ids = [alice.submit(JobSpec(script=SCRIPT)).id for _ in range(5)]
    cp.client("bob").submit(JobSpec(script=SCRIPT))  # never in alice's pages
    first = _raw(cp).get("/v1/jobs", params={"limit": "2", "order": "newest"})
    assert [j["id"] for j in first.json()] == [ids[4], ids[3]]
    after = first.headers["x-skyport-next-after"]
    rest = _raw(cp).get("/v1/jobs", params={"limit": "3", "order": "newest", "after": after})
    assert [j["id"] for j in rest.json()] == [ids[2], ids[1], ids[0]]
    assert [j.id for j in alice.jobs(newest=True)] == ids[::-1]
    assert [j.id for j in alice.jobs(newest=True, limit=4)] == ids[:0:-1]
    assert [j.id for j in alice.jobs(limit=2)] == ids[:2]  # the oldest 2 without newest
    bad = _raw(cp).get("/v1/jobs", params={"order": "random"})
    assert bad.status_code == 422 and "order" in bad.text


def test_control_characters_in_an_agent_reason_never_reach_a_terminal(
        cp: TestControlPlane) -> None:
    job = cp.client("alice").submit(JobSpec(script=SCRIPT))
    agents = cp.start(job.id)
    agents.exit(3, reason="\x1b]0;owned\x07\x1b[2Jbye\u202e")
    ended = cp.client("alice").job(job.id)
    shown = json.dumps(ended.model_dump(mode="json"))
    assert "\x1b" not in ended.reason and "\u202e" not in ended.reason
    assert "\\x1b]0;owned" in ended.reason  # kept as text: the owner sees what was sent
    assert "\x1b" not in safe(f"error: {shown}\x1b[31m") and "\x07" not in safe("\x07")
    assert safe("line one\n\ttwo") == "line one\n\ttwo"


def test_show_and_wait_print_no_control_character_a_job_sent(
        cp: TestControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    job = cp.client("alice").submit(JobSpec(script=SCRIPT))
    agents = cp.start(job.id)
    # even were it stored raw (a store from before the escaping), the terminal gets text
    agents.exit(1, reason="bye")
    cp.store.update(job.id, reason="\x1b]0;owned\x07\x9b2J")
    monkeypatch.setattr(cli_app, "client_factory", lambda *_: cp.client("alice"))
    for args in (["show", job.id], ["wait", job.id]):
        result = CliRunner().invoke(cli_app.cli, args)
        printed = result.output
        assert "owned" in printed, printed
        assert not any(ch in printed for ch in "\x1b\x07\x9b"), printed


# -- finding 4: result() unpickles only what the live attempt stored --------------------------


def test_a_token_of_an_ended_job_cannot_store_a_result(cp: TestControlPlane) -> None:
    job = cp.client("alice").submit(JobSpec(script=SCRIPT, outputs=("skyport-result.pkl",)))
    agents = cp.start(job.id)
    agents.write(files={RESULT_STORED_AS: pickle.dumps(("ok", 1))})
    agents.exit(0)
    before = cp.storage.get(job.id, RESULT_STORED_AS)
    digests = cp.store.get(job.id).result_digests
    evil = pickle.dumps(("ok", "owned"))
    with httpx.Client(base_url=BASE_URL, transport=cp.agent(job.id, agents.token)
                      ._http._transport) as raw:
        answer = raw.put(f"/agent/v1/jobs/{job.id}/files/{RESULT_STORED_AS}", content=evil,
                         headers={"authorization": f"Bearer {agents.token}"})
    assert answer.status_code == 403
    assert cp.storage.get(job.id, RESULT_STORED_AS) == before
    assert cp.store.get(job.id).result_digests == digests
    assert digests == {RESULT_STORED_AS: hashlib.sha256(before).hexdigest()}


class _Boom:
    def __reduce__(self) -> Any:
        return (exec, ("import builtins; builtins.SKYPORT_OWNED = True",))


def test_result_refuses_bytes_written_outside_the_live_attempt(cp: TestControlPlane) -> None:
    @job_decorator(client=cp.client("alice"))
    def square(x: int) -> int:
        return x * x

    handle = square.submit(4)
    cp.run_function(handle.id)
    assert handle.result() == 16
    # someone writes straight into storage afterwards (a stolen storage credential, a
    # compromised node's leftover write): the bytes differ from the recorded digest
    cp.storage.put(handle.id, RESULT_STORED_AS, pickle.dumps(_Boom()))
    import builtins

    with pytest.raises(JobFailedError, match="refusing to load"):
        handle.result()
    assert not hasattr(builtins, "SKYPORT_OWNED")


def test_a_result_without_a_recorded_digest_is_never_unpickled(cp: TestControlPlane) -> None:
    @job_decorator(client=cp.client("alice"))
    def one() -> int:
        return 1

    handle = one.submit()
    agents = cp.start(handle.id)
    cp.storage.put(handle.id, RESULT_STORED_AS, pickle.dumps(_Boom()))  # not through the route
    agents.exit(0)
    import builtins

    with pytest.raises(JobFailedError, match="no digest was recorded"):
        handle.result()
    assert not hasattr(builtins, "SKYPORT_OWNED")


def test_the_machine_refuses_a_result_of_a_job_that_holds_no_cluster(
        cp: TestControlPlane) -> None:
    job = cp.client("alice").submit(JobSpec(script=SCRIPT))
    cp.run(job.id)
    from skyport.core.messages import ResultStored

    ended = cp.store.get(job.id)
    assert ended.state is JobState.SUCCEEDED
    with pytest.raises(PermissionDeniedError):
        cp.service.machine.handle(ResultStored(ended, RESULT_STORED_AS, "0"), 0.0)


# -- finding 10: the audit log -----------------------------------------------------------------


def test_every_changing_call_is_one_audit_line(cp: TestControlPlane, tmp_path: Path) -> None:
    alice = cp.client("alice")
    job = alice.submit(JobSpec(script=SCRIPT))
    alice.cancel(job.id)
    refused = _raw(cp, "bob").post(f"/v1/jobs/{job.id}/cancel")
    assert refused.status_code == 404
    anonymous = httpx.Client(base_url=BASE_URL, transport=cp.agent(job.id, "x")._http._transport)
    assert anonymous.post("/v1/jobs", json={"spec": {"script": SCRIPT}}).status_code == 401
    alice.jobs()  # a read: not logged
    lines = [json.loads(x) for x in
             (tmp_path / "logs" / "audit.jsonl").read_text().splitlines()]
    assert [(x["who"], x["method"], x["path"], x["job_id"], x["status"], x["result"])
            for x in lines] == [
        ("alice", "POST", "/v1/jobs", job.id, 201, "ok"),
        ("alice", "POST", f"/v1/jobs/{job.id}/cancel", job.id, 200, "ok"),
        ("bob", "POST", f"/v1/jobs/{job.id}/cancel", job.id, 404, "NotFoundError"),
        (None, "POST", "/v1/jobs", None, 401, "AuthenticationError"),
    ]
