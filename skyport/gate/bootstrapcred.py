"""One-time bootstrap credentials: what a VM's user-data carries instead of the job token.

Cloud user-data stays readable for the VM's whole life (the metadata
service, the provider's console, ``/var/lib/cloud``), so it must not hold
the job token.  It holds a bootstrap credential instead: 256 random bits,
valid for ``ttl_s`` (15 minutes by default), exchanged once, by the node's
agent, for the job token (``POST /v1/bootstrap/exchange``, see
docs/SECURITY.md).  A credential read from user-data after the exchange, or
after it expired, is worth nothing.

The vault keeps, per credential, only its SHA-256 and the job token sealed
with a key stream derived from the credential itself: the vault file (0600,
in the gate's folder, so that a restarted gate can still serve exchanges)
gives no token to whoever reads it without the credential.

Credential text: ``spb.<gate name>.<secret>``; the gate name tells the
control plane which gate's vault to ask.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from skyport.errors import AuthenticationError

__all__ = ["DEFAULT_TTL_S", "PREFIX", "BootstrapVault", "Exchanged", "gate_of"]

PREFIX = "spb"
DEFAULT_TTL_S = 900.0


@dataclass(frozen=True)
class Exchanged:
    """What a valid credential is exchanged for."""

    job_id: str
    node_rank: int
    token: str


@dataclass(frozen=True)
class _Sealed:
    job_id: str
    node_rank: int
    sealed: str  # hex: token XOR shake_256(credential)
    expires_at: float


def gate_of(credential: str) -> str:
    """The gate that issued ``credential``; AuthenticationError when it is not one."""
    parts = credential.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise AuthenticationError("not a bootstrap credential")
    return parts[1]


def _hash(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def _stream(credential: str, n: int) -> bytes:
    return hashlib.shake_256(b"skyport-bootstrap-seal\0" + credential.encode()).digest(n)


class BootstrapVault:
    def __init__(self, gate: str, path: Path | None = None, ttl_s: float = DEFAULT_TTL_S) -> None:
        if not gate or "." in gate:
            raise ValueError(f"gate name {gate!r}: must be non-empty, without '.'")
        self.gate = gate
        self.path = path
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[str, _Sealed] = self._load()

    def issue(self, token: str, job_id: str, node_rank: int, now: float | None = None) -> str:
        """A fresh credential for (job, node), good for one exchange within ``ttl_s``."""
        credential = f"{PREFIX}.{self.gate}.{secrets.token_urlsafe(32)}"
        data = token.encode()
        sealed = bytes(a ^ b for a, b in zip(data, _stream(credential, len(data)), strict=True))
        at = time.time() if now is None else now
        with self._lock:
            self._prune(at)
            self._entries[_hash(credential)] = _Sealed(job_id, node_rank, sealed.hex(),
                                                       at + self.ttl_s)
            self._save()
        return credential

    def exchange(self, credential: str, now: float | None = None) -> Exchanged:
        """The job token for ``credential``, once; AuthenticationError otherwise (unknown,
        already used, expired, or another gate's)."""
        if gate_of(credential) != self.gate:
            raise AuthenticationError("bootstrap credential of another gate")
        at = time.time() if now is None else now
        with self._lock:
            entry = self._entries.pop(_hash(credential), None)  # single use, even when expired
            self._prune(at)
            self._save()
        if entry is None or entry.expires_at <= at:
            raise AuthenticationError("bootstrap credential unknown, used or expired")
        raw = bytes.fromhex(entry.sealed)
        token = bytes(a ^ b for a, b in zip(raw, _stream(credential, len(raw)), strict=True))
        return Exchanged(job_id=entry.job_id, node_rank=entry.node_rank, token=token.decode())

    def revoke_job(self, job_id: str) -> int:
        """Forget every unexchanged credential of ``job_id`` (its cluster is gone)."""
        with self._lock:
            gone = [h for h, e in self._entries.items() if e.job_id == job_id]
            for h in gone:
                del self._entries[h]
            self._save()
        return len(gone)

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self, now: float) -> None:
        for h in [h for h, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[h]

    def _load(self) -> dict[str, _Sealed]:
        if self.path is None:
            return {}
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}  # a torn file: the credentials in it are simply no longer valid
        return {h: _Sealed(**e) for h, e in raw.items()}

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({h: asdict(e) for h, e in self._entries.items()}, f)
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
