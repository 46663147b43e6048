"""Serve the REST API over mutual TLS and tell the app who is calling.

Two kinds of callers reach the API (DESIGN.md, Trust):

* users, with a client certificate from Sky Port's CA (see :mod:`skyport.pki`);
* agents inside a job, with no certificate but a per-job bearer token
  (see :mod:`skyport.tokens`; the app checks the token).

So the server *requests* a client certificate and, if one is presented,
OpenSSL verifies it against our CA during the handshake (``CERT_OPTIONAL``): a
certificate from any other CA, or a non-user certificate, fails the handshake
and never reaches the app. A connection without a certificate does reach the
app, with :func:`peer_identity` returning ``None``; the app must then demand a
token or answer 401. Plain HTTP on the port is a failed handshake.

How the peer certificate reaches the app
----------------------------------------
uvicorn does not expose the peer certificate (its upstream issue #745 and the
never-merged PR #1119 for the ASGI TLS extension). We fill in the standard
ASGI "tls" extension ourselves::

    scope["extensions"]["tls"] = {"client_cert_chain": [PEM, ...], ...}

with a small subclass of uvicorn's httptools protocol (:class:`_PeerCertHttpProtocol`;
httptools, not h11: the C parser moves a streamed file body about twice as fast
as the pure-Python one, measured in ``benchmarks/data.py``).
asyncio builds one protocol object per connection and calls its
``connection_made`` only after the TLS handshake, so the subclass reads the
verified certificate from the transport's ``ssl_object`` there and wraps the
app *for that connection only*. The certificate thus comes from the
connection itself, never from anything the client sends in a request, and
there is no shared table to mix connections up.

Alternatives rejected: a table keyed by the client's (ip, port) is shared state
and breaks as soon as anything rewrites ``scope["client"]`` (uvicorn's
proxy-headers middleware does, from a header the client controls); a
contextvar set in ``connection_made`` is not reliably inherited by the request
task (uvicorn may run it in a fresh context). The subclass leans on one uvicorn
detail, that ``HttpToolsProtocol`` dispatches each request to ``self.app``; should a
future uvicorn change that, the extension is simply missing, every request
looks certificate-less and is refused: it fails closed, and the integration
test ``tests/integration/test_tls.py`` catches it. Because :func:`peer_identity`
reads only the standard extension, the app also works under any ASGI server
that implements it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from starlette.requests import HTTPConnection
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from skyport.client.tls import client_ssl_context  # the client's, without uvicorn
from skyport.errors import ControlPlaneError, PkiError, SkyportError
from skyport.pki import Identity, ca_cert_path, identity_from_cert, server_cert_paths

__all__ = [
    "ServerHandle",
    "client_ssl_context",
    "peer_certificate",
    "peer_identity",
    "serve",
    "start_in_thread",
]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]

# TLS protocol numbers as the ASGI TLS extension reports them (0x0303 = TLS 1.2).
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


# --------------------------------------------------------------------------- app side


def peer_certificate(request: HTTPConnection) -> x509.Certificate | None:
    """The verified client certificate of ``request``'s connection, if it presented one."""
    tls = (request.scope.get("extensions") or {}).get("tls")
    chain = (tls or {}).get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return x509.load_pem_x509_certificate(chain[0].encode("ascii"))
    except ValueError as exc:
        logger.warning("client certificate cannot be read: %s", exc)
        return None


def peer_identity(request: HTTPConnection) -> Identity | None:
    """The verified user behind ``request``, or ``None`` if it has no user certificate.

    ``None`` means "not authenticated by certificate": the caller may still
    carry a job token; otherwise the app answers 401. A certificate that
    passed the handshake but is not a user certificate (wrong EKU, missing OU)
    also gives ``None``, with a warning logged, rather than an error: to the
    app it is the same as no certificate.
    """
    cert = peer_certificate(request)
    if cert is None:
        return None
    try:
        return identity_from_cert(cert)
    except (PkiError, ValueError) as exc:
        logger.warning("client certificate is not a Sky Port user certificate: %s", exc)
        return None


def _tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI "tls" extension for one connection; ``None`` if it is not TLS."""
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    # With CERT_OPTIONAL a certificate is only here if it verified against
    # our CA; a bad one would have aborted the handshake already. Python
    # before 3.13 gives the leaf only, not the chain: our CA signs leaves
    # directly, so the leaf is all there is.
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der:
        chain.append(ssl.DER_cert_to_PEM_cert(der))
        with contextlib.suppress(ValueError):
            name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version or ""),
        "cipher_suite": None,  # Python does not expose the IANA number
    }


class _WithTlsExtension:
    """Wrap an ASGI app so every request on one connection carries its "tls" extension."""

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self._app = app
        self._tls = tls

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            extensions = dict(scope.get("extensions") or {})
            # A fresh copy per request: the app may mutate what it is given.
            chain = list(self._tls["client_cert_chain"])
            extensions["tls"] = {**self._tls, "client_cert_chain": chain}
            scope["extensions"] = extensions
        await self._app(scope, receive, send)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY on the connection's socket.

    asyncio sets it only on sockets whose ``proto`` is IPPROTO_TCP, and a socket
    from ``socket.create_server`` (``_prepare``) and the connections it accepts
    have ``proto`` 0: uvicorn writes an answer's headers and body separately,
    and Nagle then held the body until the client's delayed ACK, 40 ms on Linux,
    on every call.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PeerCertHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the ASGI "tls" extension (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _no_delay(transport)
        super().connection_made(transport)
        tls = _tls_extension(transport)
        if tls is not None:
            self.app = _WithTlsExtension(self.app, tls)


class _PeerCertWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, plus the ASGI "tls" extension.

    The HTTP protocol hands an upgraded connection (the relay's sockets, ``skyport.relay``) to a
    fresh protocol object built from the config, whose app would otherwise lack
    the extension; the same per-connection wrapping as for HTTP closes that gap.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _no_delay(transport)
        super().connection_made(transport)
        tls = _tls_extension(transport)
        if tls is not None:
            self.app = _WithTlsExtension(self.app, tls)


# --------------------------------------------------------------------------- server side


@dataclass
class ServerHandle:
    """A server running in a background thread (tests, embedding)."""

    url: str
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop serving and wait for the thread; forces exit if it lingers."""
        self._server.should_exit = True
        self._thread.join(timeout_s / 2)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout_s / 2)
        if self._thread.is_alive():
            raise ControlPlaneError(f"REST server at {self.url} did not stop within {timeout_s} s")


def serve(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    pki_dir: Path,
    ready_file: Path | None = None,
    log_level: str = "info",
    extra: dict[str, Any] | None = None,
) -> None:
    """Serve ``app`` over mutual TLS until SIGINT/SIGTERM (blocking).

    ``port=0`` picks a free port. Once the server is listening, ``ready_file``
    (if given) holds ``{"url": "https://HOST:PORT"}``; it is written atomically,
    so a reader polling for it never sees half a file, and removed on exit, so
    it never points at a server that is gone.
    """
    server, sock, url = _prepare(
        app, host=host, port=port, pki_dir=Path(pki_dir), log_level=log_level
    )
    # uvicorn handles SIGINT/SIGTERM itself and, once stopped, re-raises the
    # signal to the handler that was there before it. With the default
    # handler that kills the process before _run could remove ready_file, so
    # hold the signals here and re-raise them only after cleaning up.
    held: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: held.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        asyncio.run(_run(server, sock, url, ready_file, started=None, extra=extra))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for signum in held:
        signal.raise_signal(signum)


def start_in_thread(
    app: ASGIApp,
    *,
    pki_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: Path | None = None,
    startup_timeout_s: float = 10.0,
    log_level: str = "warning",
) -> ServerHandle:
    """Start :func:`serve` in a daemon thread; return once it listens.

    Raises ControlPlaneError if the server has not started within
    ``startup_timeout_s`` (or failed while starting, e.g. in the app's lifespan).
    """
    server, sock, url = _prepare(
        app, host=host, port=port, pki_dir=Path(pki_dir), log_level=log_level
    )
    started = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(_run(server, sock, url, ready_file, started=started))
        except Exception as exc:
            # Before startup the starting thread reports it; after, only the log can.
            failure.append(exc)
            if started.is_set():
                logger.error("REST server at %s stopped: %s", url, exc)
        finally:
            started.set()  # wake the starting thread at once if we failed

    thread = threading.Thread(target=target, name=f"skyport-tls-{url}", daemon=True)
    thread.start()
    started.wait(startup_timeout_s)
    if not server.started:
        server.should_exit = True
        thread.join(startup_timeout_s)
        if failure and isinstance(failure[0], SkyportError):
            raise failure[0]
        why = f": {failure[0]!r}" if failure else f" within {startup_timeout_s} s"
        raise ControlPlaneError(f"REST server at {url} did not start{why}")
    return ServerHandle(url=url, _server=server, _thread=thread)


def _prepare(
    app: ASGIApp, *, host: str, port: int, pki_dir: Path, log_level: str
) -> tuple[uvicorn.Server, socket.socket, str]:
    """Check the PKI files, bind the socket and build the uvicorn server."""
    cert_path, key_path = server_cert_paths(pki_dir)
    ca_path = ca_cert_path(pki_dir)
    missing = [str(p) for p in (ca_path, cert_path, key_path) if not p.is_file()]
    if missing:
        raise PkiError(
            f"cannot serve over TLS, missing {', '.join(missing)} "
            "(run init_ca and issue_server_cert first)"
        )

    # Binding here, not in uvicorn, tells us the real port at once when
    # port=0, before anything is written to ready_file.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ControlPlaneError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    bound_port = sock.getsockname()[1]

    config = uvicorn.Config(
        app,
        http=_PeerCertHttpProtocol,
        ssl_certfile=str(cert_path),
        ssl_keyfile=str(key_path),
        ssl_ca_certs=str(ca_path),
        # OPTIONAL, not REQUIRED: agents carry a token, not a certificate. A
        # certificate that is presented must still verify, or the handshake fails.
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        # Zero trust: never take the client address from X-Forwarded-For.
        proxy_headers=False,
        # uvicorn's own WebSocket classes would bypass the "tls" extension; ours adds it
        ws=_PeerCertWebSocketProtocol,
        server_header=False,
        log_level=log_level,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config), sock, _url_for(host, bound_port)


async def _run(
    server: uvicorn.Server,
    sock: socket.socket,
    url: str,
    ready_file: Path | None,
    *,
    started: threading.Event | None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Run ``server`` on ``sock``; announce readiness once it is listening."""
    if ready_file is not None:
        ready_file = Path(ready_file)
        ready_file.unlink(missing_ok=True)  # a stale file would point at a dead server
    announcer = asyncio.create_task(_announce(server, url, ready_file, started, extra))
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:
        # uvicorn calls sys.exit() when the app's lifespan startup fails. Left
        # alone, SystemExit escapes the event loop mid-task (and, in a thread,
        # says nothing); a SkyportError tells the caller what happened.
        raise ControlPlaneError(
            f"REST server at {url} failed to start (uvicorn exit status {exc.code}; "
            "the app's startup error is logged above)"
        ) from None
    finally:
        announcer.cancel()
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
        sock.close()


async def _announce(
    server: uvicorn.Server,
    url: str,
    ready_file: Path | None,
    started: threading.Event | None,
    extra: dict[str, Any] | None = None,
) -> None:
    # uvicorn has no "started" callback; it sets .started once it listens.
    while not server.started:
        await asyncio.sleep(0.02)
    if ready_file is not None:
        _write_json_atomically(ready_file, {**(extra or {}), "url": url})
    if started is not None:
        started.set()


def _url_for(host: str, port: int) -> str:
    # A wildcard address is not something a client can connect to.
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- client side
