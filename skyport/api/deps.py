"""Who is calling: the FastAPI dependencies every router shares.

Users prove themselves with a client certificate from this Sky Port's CA
(``skyport.api.tls.peer_identity``) that the user registry still holds
(``skyport.users``: a revoked, replaced or never-registered certificate
answers 401 although the CA signed it); agents and idle nodes with a bearer
secret (a job token, an idle credential) that the Core checks per call.
Both record who called in ``request.state.who`` for the audit log
(``skyport.api.audit``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from skyport.api.tls import peer_certificate, peer_identity
from skyport.errors import AuthenticationError
from skyport.pki import Identity
from skyport.users import UserRegistry

__all__ = ["Bearer", "User", "bearer", "user"]


def user(request: HTTPConnection) -> Identity:
    who = peer_identity(request)
    if who is None:
        raise AuthenticationError("a client certificate issued by this Sky Port's CA is required")
    registry: UserRegistry | None = getattr(request.app.state, "users", None)
    if registry is not None:
        cert = peer_certificate(request)
        verdict = registry.check(who.username, who.role,
                                 cert.serial_number if cert is not None else -1)
        if not verdict.ok:
            request.state.who = f"refused:{who.username}"
            raise AuthenticationError(f"certificate refused: {verdict.why}")
    request.state.who = who.username
    return who


def bearer(request: HTTPConnection) -> str:
    """The bearer secret of an agent's call or relay socket: its job token (or idle credential)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("an agent call needs 'Authorization: Bearer <job token>' "
                                  "(an idle node's: 'Bearer <idle credential>')")
    request.state.who = "agent"  # which job's: the path names it, the Core checks it
    return token.strip()


User = Annotated[Identity, Depends(user)]
Bearer = Annotated[str, Depends(bearer)]
