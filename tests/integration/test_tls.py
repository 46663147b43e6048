"""The REST security layer over a real socket: mutual TLS plus job tokens.

A tiny FastAPI app, served by ``start_in_thread`` on 127.0.0.1 (port 0),
reports who the caller is; the tests call it the way users, agents and
attackers would. Every network wait has a timeout.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from starlette.requests import Request as StarletteRequest

from skyport import tokens
from skyport.api.tls import ServerHandle, client_ssl_context, peer_identity, start_in_thread
from skyport.pki import Identity, ca_cert_path, init_ca, issue_server_cert, issue_user_cert

pytestmark = pytest.mark.timeout(60)

TIMEOUT_S = 5.0


@dataclass
class Setup:
    pki_dir: Path
    other_pki_dir: Path
    server: ServerHandle
    ready_file: Path
    hits: list[str]  # paths the app saw: proves a refused request never reached it
    job_token: str

    @property
    def ca(self) -> Path:
        return ca_cert_path(self.pki_dir)

    def port(self) -> int:
        return int(self.server.url.rsplit(":", 1)[1])


def _make_app(hits: list[str], token_hash: str) -> FastAPI:
    app = FastAPI()

    @app.get("/whoami")
    def whoami(
        request: Request, identity: Annotated[Identity | None, Depends(peer_identity)]
    ) -> dict[str, str]:
        hits.append(request.url.path)
        if identity is not None:
            return {"kind": "user", "username": identity.username, "role": identity.role}
        # No certificate: the only other way in is a job token.
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and tokens.token_matches(token, token_hash):
            return {"kind": "agent"}
        raise HTTPException(status_code=401, detail="no client certificate or job token")

    return app


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("tls")
    pki_dir, other = root / "pki", root / "other-pki"
    init_ca(pki_dir)
    issue_server_cert(pki_dir, ["head.example.org"])
    issue_user_cert(pki_dir, "alice", role="user")
    issue_user_cert(pki_dir, "root-admin", role="admin")
    # A second, unrelated CA with a look-alike user: same name, wrong issuer.
    init_ca(other, common_name="Sky Port CA")
    issue_server_cert(other, [])
    issue_user_cert(other, "alice", role="admin")

    hits: list[str] = []
    job_token = tokens.new_token()
    ready_file = root / "ready.json"
    server = start_in_thread(
        _make_app(hits, tokens.hash_token(job_token)),
        pki_dir=pki_dir,
        host="127.0.0.1",
        port=0,
        ready_file=ready_file,
        startup_timeout_s=TIMEOUT_S,
    )
    try:
        yield Setup(pki_dir, other, server, ready_file, hits, job_token)
    finally:
        server.stop(timeout_s=TIMEOUT_S)


def _get(setup: Setup, ctx: ssl.SSLContext, **kwargs: object) -> httpx.Response:
    with httpx.Client(verify=ctx, timeout=TIMEOUT_S) as client:
        return client.get(f"{setup.server.url}/whoami", **kwargs)  # type: ignore[arg-type]


def _user_ctx(pki_dir: Path, username: str, ca: Path) -> ssl.SSLContext:
    users = pki_dir / "users"
    return client_ssl_context(ca, users / f"{username}.crt", users / f"{username}.key")


# --------------------------------------------------------------------------- startup


def test_ready_file_names_the_listening_url(setup: Setup) -> None:
    assert json.loads(setup.ready_file.read_text()) == {"url": setup.server.url}
    assert setup.server.url.startswith("https://127.0.0.1:")
    assert setup.port() > 0


# --------------------------------------------------------------------------- users


@pytest.mark.parametrize(("username", "role"), [("alice", "user"), ("root-admin", "admin")])
def test_user_certificate_is_identified_with_name_and_role(
    setup: Setup, username: str, role: str
) -> None:
    response = _get(setup, _user_ctx(setup.pki_dir, username, setup.ca))

    assert response.status_code == 200
    assert response.json() == {"kind": "user", "username": username, "role": role}


def test_no_certificate_reaches_the_app_unidentified(setup: Setup) -> None:
    before = len(setup.hits)

    response = _get(setup, client_ssl_context(setup.ca))

    assert len(setup.hits) == before + 1  # the app saw it, and refused it itself
    assert response.status_code == 401


def test_agent_with_job_token_and_no_certificate_gets_in(setup: Setup) -> None:
    ctx = client_ssl_context(setup.ca)

    good = _get(setup, ctx, headers={"Authorization": f"Bearer {setup.job_token}"})
    bad = _get(setup, ctx, headers={"Authorization": f"Bearer {tokens.new_token()}"})

    assert (good.status_code, good.json()) == (200, {"kind": "agent"})
    assert bad.status_code == 401


# --------------------------------------------------------------------------- refusals


def test_certificate_from_another_ca_fails_the_handshake(setup: Setup) -> None:
    before = len(setup.hits)
    ctx = _user_ctx(setup.other_pki_dir, "alice", setup.ca)

    with pytest.raises(httpx.TransportError):
        _get(setup, ctx)
    # At the TLS layer itself: the handshake does not complete, whereas the
    # same handshake with our CA's "alice" does.
    assert _tls12_handshake(setup.port(), _user_ctx(setup.pki_dir, "alice", setup.ca))
    with pytest.raises(ssl.SSLError):
        _tls12_handshake(setup.port(), ctx)
    assert len(setup.hits) == before


def test_server_certificate_cannot_pose_as_a_user(setup: Setup) -> None:
    # Signed by the right CA, but for serverAuth only: OpenSSL refuses it.
    before = len(setup.hits)
    ctx = client_ssl_context(setup.ca, setup.pki_dir / "server.crt", setup.pki_dir / "server.key")

    with pytest.raises(httpx.TransportError):
        _get(setup, ctx)
    assert len(setup.hits) == before


def test_plain_http_is_refused(setup: Setup) -> None:
    before = len(setup.hits)

    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{setup.port()}/whoami", timeout=TIMEOUT_S)
    assert len(setup.hits) == before


# --------------------------------------------------------------------------- server side


def test_server_certificate_verifies_against_our_ca_for_127_0_0_1(setup: Setup) -> None:
    ctx = ssl.create_default_context(cafile=str(setup.ca))  # checks the hostname too

    with socket.create_connection(("127.0.0.1", setup.port()), timeout=TIMEOUT_S) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            peer = tls.getpeercert()

    assert peer is not None
    san = peer["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in san
    assert ("DNS", "head.example.org") in san


def test_client_refuses_a_server_vouched_for_by_another_ca(setup: Setup) -> None:
    ctx = client_ssl_context(ca_cert_path(setup.other_pki_dir))

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(setup, ctx)


def test_peer_identity_without_tls_extension_is_none() -> None:
    # E.g. the app under a test client or a server without the "tls" extension:
    # no evidence of a certificate must mean no identity, never a default one.
    request = StarletteRequest({"type": "http", "headers": [], "extensions": {}})
    assert peer_identity(request) is None


def test_stop_removes_the_ready_file(tmp_path: Path, setup: Setup) -> None:
    ready_file = tmp_path / "ready.json"
    server = start_in_thread(
        FastAPI(), pki_dir=setup.pki_dir, ready_file=ready_file, startup_timeout_s=TIMEOUT_S
    )
    assert ready_file.exists()

    server.stop(timeout_s=TIMEOUT_S)

    assert not ready_file.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=1)


def _tls12_handshake(port: int, ctx: ssl.SSLContext) -> str:
    """Do only a TLS handshake, capped at TLS 1.2; return the protocol version.

    The cap makes the client-certificate verdict visible in the handshake:
    under TLS 1.3 the client finishes its side before the server has judged
    its certificate, and the refusal only shows on the first read.
    """
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version() or ""
