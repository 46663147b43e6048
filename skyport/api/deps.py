"""Who is calling: the FastAPI dependencies every router shares.

Users prove themselves with a client certificate from this Sky Port's CA
(``skyport.api.tls.peer_identity``); agents and idle nodes with a bearer
secret (a job token, an idle credential) that the Core checks per call.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from skyport.api.tls import peer_identity
from skyport.errors import AuthenticationError
from skyport.pki import Identity

__all__ = ["Bearer", "User", "bearer", "user"]


def user(request: Request) -> Identity:
    who = peer_identity(request)
    if who is None:
        raise AuthenticationError("a client certificate issued by this Sky Port's CA is required")
    return who


def bearer(request: Request) -> str:
    """The bearer secret of an agent's call: its job token (or an idle credential)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("an agent call needs 'Authorization: Bearer <job token>' "
                                  "(an idle node's: 'Bearer <idle credential>')")
    return token.strip()


User = Annotated[Identity, Depends(user)]
Bearer = Annotated[str, Depends(bearer)]
