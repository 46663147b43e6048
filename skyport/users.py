"""The user registry: who may call, with which certificate, in which role.

The CA's signature says a certificate is genuine; the registry says it is
still wanted.  ``pki/users.json`` holds, per user, the role and the serial
number of the one certificate that user may present now, and the serials
revoked so far.  The REST API (``skyport.api.deps.user``) checks every
presented certificate against it: a name that was never registered, a
revoked user, a serial that is not the current one (``user add --force``
re-issued the certificate) or a role other than the registered one answers
401, from the next call on, without a restart.

Why a file beside the CA, not a table in the job store: the Core is the job
store's only writer and lives in another process (a Ray actor); asking it on
every request would put a round trip in front of every call.  The file is
written only by ``skyport user ...`` on the control plane's machine (the
same rights that hold the state directory), atomically (``os.replace``),
under a lock file, and the API re-reads it when its size or mtime changes,
so a check costs one ``stat``.  Revoking and listing need no CA key; only
issuing does (``skyport.pki.issue_user_cert``), so the key can stay offline.
"""

from __future__ import annotations

import builtins
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from skyport.errors import ConfigError, NotFoundError

__all__ = ["REGISTRY_FILE", "RegisteredUser", "UserRegistry", "Verdict"]

REGISTRY_FILE = "users.json"


class RegisteredUser(BaseModel):
    """One user's entry in ``pki/users.json``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    role: Literal["user", "admin"]
    serial: str | None = None  # hex serial of the certificate this user may present now
    revoked: bool = False
    revoked_serials: list[str] = Field(default_factory=list)
    added_at: str = ""
    changed_at: str = ""


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    users: dict[str, RegisteredUser] = Field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The registry's answer for one certificate: ``ok``, or ``why`` it is refused."""

    ok: bool
    why: str = ""


def serial_hex(serial: int) -> str:
    return f"{serial:x}"


class UserRegistry:
    """``<pki_dir>/users.json``: read by the API on every call, written by ``skyport user``."""

    def __init__(self, pki_dir: Path) -> None:
        self.path = Path(pki_dir) / REGISTRY_FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._cache = _File()

    # -- reading (the API) ------------------------------------------------------------

    def _load(self) -> _File:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return _File()  # no registry: nobody is registered, every certificate is refused
        key = (st.st_ino, st.st_mtime_ns, st.st_size)  # os.replace: a new inode
        with self._lock:
            if key != self._seen:
                try:
                    self._cache = _File.model_validate_json(self.path.read_bytes())
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"the user registry {self.path} cannot be read: {exc}") \
                        from exc
                self._seen = key
            return self._cache

    def check(self, username: str, role: str, serial: int) -> Verdict:
        """May the certificate (CN ``username``, OU ``role``, ``serial``) call now?"""
        entry = self._load().users.get(username)
        if entry is None:
            return Verdict(False, f"user {username!r} is not registered here")
        if entry.revoked:
            return Verdict(False, f"user {username!r} is revoked")
        if entry.serial != serial_hex(serial):
            return Verdict(False, f"this certificate of {username!r} (serial "
                                  f"{serial_hex(serial)}) was replaced or revoked")
        if entry.role != role:
            return Verdict(False, f"this certificate says role {role!r}; {username!r} is "
                                  f"registered as {entry.role!r}")
        return Verdict(True)

    def list(self) -> list[RegisteredUser]:
        return sorted(self._load().users.values(), key=lambda u: u.name)

    # -- writing (skyport user ...; skyport.pki.issue_user_cert) ------------------------------

    @contextmanager
    def _editing(self) -> Iterator[_File]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the control plane's own files: readable by it alone, whoever's umask wrote them
        lock_fd = os.open(self.path.with_name(f".{REGISTRY_FILE}.lock"),
                          os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(lock_fd, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two `skyport user` at once: one after the other
            data = _File.model_validate_json(self.path.read_bytes()) \
                if self.path.exists() else _File()
            yield data
            tmp = self.path.with_name(f".{REGISTRY_FILE}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(data.model_dump_json(indent=1) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)

    def register(self, username: str, role: Literal["user", "admin"], serial: int) -> None:
        """``username`` now holds the certificate ``serial``; an earlier one is revoked."""
        now = _now()
        with self._editing() as data:
            old = data.users.get(username)
            revoked = list(old.revoked_serials) if old else []
            if old is not None and old.serial and old.serial != serial_hex(serial):
                revoked.append(old.serial)
            data.users[username] = RegisteredUser(
                name=username, role=role, serial=serial_hex(serial), revoked=False,
                revoked_serials=revoked, added_at=old.added_at if old else now, changed_at=now)

    def revoke(self, username: str) -> RegisteredUser:
        """Revoke ``username``: every certificate of theirs answers 401 from now on."""
        with self._editing() as data:
            old = data.users.get(username)
            if old is None:
                raise NotFoundError(f"no user {username!r} in {self.path}")
            revoked = list(old.revoked_serials) + ([old.serial] if old.serial else [])
            entry = old.model_copy(update={"revoked": True, "serial": None,
                                           "revoked_serials": revoked, "changed_at": _now()})
            data.users[username] = entry
            return entry

    def adopt_issued(self) -> builtins.list[str]:
        """A state directory from before the registry: register ``pki/users/*.crt`` once.

        Only when there is no registry file yet (the control plane calls this at
        start-up); afterwards the registry alone decides.  Returns the names adopted.
        """
        if self.path.exists():
            return []
        from cryptography import x509  # the registry itself never parses certificates

        found: builtins.list[tuple[str, Literal["user", "admin"], int]] = []
        for cert_path in sorted((self.path.parent / "users").glob("*.crt")):
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            names = {a.oid.dotted_string: str(a.value) for a in cert.subject}
            name, role = names.get("2.5.4.3", ""), names.get("2.5.4.11", "")
            if name == cert_path.stem and role in ("user", "admin"):
                found.append((name, role, cert.serial_number))  # type: ignore[arg-type]
        with self._editing():
            pass  # an empty registry, even when no certificate was found
        for name, role, serial in found:
            self.register(name, role, serial)
        return [name for name, _, _ in found]

    def summary(self) -> builtins.list[dict[str, Any]]:
        return [u.model_dump() for u in self.list()]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
