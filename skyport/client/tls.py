"""The client's TLS policy: trust only the control plane's CA, present a user certificate.

Standard library only, so that a `skyport` command builds its context without
loading the server's stack (uvicorn, cryptography): ``skyport.api.tls``
re-exports it.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from skyport.errors import PkiError

__all__ = ["NO_DELAY", "client_ssl_context"]

# httpx's socket options for every connection to the API: a request's headers and body
# are separate writes, and Nagle would hold the body until the server's delayed ACK
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def client_ssl_context(
    ca_path: Path, cert_path: Path | None = None, key_path: Path | None = None
) -> ssl.SSLContext:
    """An SSL context for httpx: trust only our CA, present the user certificate if given.

    Hostname checking stays on: the server certificate carries 127.0.0.1,
    localhost and the hostnames given to ``issue_server_cert``. Use it as
    ``httpx.Client(verify=client_ssl_context(...))``.
    """
    if key_path is not None and cert_path is None:
        raise PkiError(f"key_path {key_path} given without cert_path (give both, or neither)")
    try:
        # cafile only: the system's trust store must not vouch for our server.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_path))
        if cert_path is not None:
            ctx.load_cert_chain(str(cert_path), str(key_path) if key_path is not None else None)
    except FileNotFoundError as exc:
        raise PkiError(f"cannot build TLS client context: {exc.filename} is missing") from exc
    except ssl.SSLError as exc:
        raise PkiError(
            f"cannot build TLS client context from {ca_path}, {cert_path}: {exc}"
        ) from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
