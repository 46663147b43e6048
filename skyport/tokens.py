"""Per-job bearer tokens: how an agent inside a job authenticates to the REST API.

Agents carry no certificate (DESIGN.md, Trust). When a job starts, the control
plane makes a token with :func:`new_token`, hands it to that job's agent, and
stores only :func:`hash_token` of it: a leaked job store gives no usable
tokens. A request's token is checked with :func:`token_matches`, which
compares in constant time so response timing says nothing about how much of
a guess was right.

A plain SHA-256 (no salt, no slow KDF) is enough here, unlike for passwords:
a token is 256 random bits, so there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["TOKEN_BYTES", "hash_token", "new_token", "token_matches", "tokens_equal"]

TOKEN_BYTES = 32


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """SHA-256 of the token, hex: what the store keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    """Compare two secrets in constant time.

    Encoded to bytes first: ``hmac.compare_digest`` refuses non-ASCII ``str``,
    and a client-supplied token may contain anything.
    """
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def token_matches(token: str, stored_hash: str) -> bool:
    """Whether ``token`` is the one whose hash the store holds."""
    return tokens_equal(hash_token(token), stored_hash)
