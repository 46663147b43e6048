"""The bootstrap file: everything a node agent needs to start, in one 0600 JSON file.

The gate writes it next to the node's working directory and passes only its
path on the agent's command line, so the job token never shows up in ``ps``
or in an environment.  The agent reads it once and removes it, so that the
payload (which runs in the same directory, as the same user) does not find
the token lying around.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from skyport.agent.isolation import Isolation
from skyport.errors import ConfigError

__all__ = ["EXCHANGE_PATH", "Bootstrap", "exchange_credential"]


@dataclass(frozen=True)
class Bootstrap:
    control_url: str
    ca_pem: str
    token: str = field(repr=False)
    job_id: str = ""
    cluster_id: str = ""
    node_rank: int = 0
    node_name: str = ""
    num_nodes: int = 1
    workdir: str = ""
    cpus_per_node: int = 1
    cores: tuple[int, ...] = ()
    gpus: tuple[str, ...] = ()
    # how the payload is kept from the agent and the machine (skyport.agent.isolation)
    isolation: str = "none"
    payload_uid: int = -1
    payload_gid: int = -1
    hide: tuple[str, ...] = ()
    # the node's interface to the other nodes, when it has a network of its own (MPI binds it)
    net_iface: str = ""
    # instead of ``token`` (cloud user-data): exchanged once for it (``exchange_credential``)
    bootstrap_credential: str = field(default="", repr=False)

    def payload_isolation(self) -> Isolation:
        if self.isolation not in ("none", "user", "sandbox"):
            raise ConfigError(f"bootstrap isolation {self.isolation!r}: "
                              "not one of 'none', 'user', 'sandbox'")
        try:
            return Isolation(mode=self.isolation, uid=self.payload_uid,  # type: ignore[arg-type]
                             gid=self.payload_gid, hide=self.hide)
        except ValueError as exc:
            raise ConfigError(f"bootstrap: {exc}") from exc

    def write(self, path: Path) -> None:
        """Write atomically, readable by the owner only."""
        data = json.dumps(asdict(self), indent=2).encode()
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> Bootstrap:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
            raw["cores"] = tuple(int(c) for c in raw.get("cores", ()))
            raw["gpus"] = tuple(str(g) for g in raw.get("gpus", ()))
            raw["hide"] = tuple(str(h) for h in raw.get("hide", ()))
            return cls(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"bad agent bootstrap file {path}: {exc}") from exc


EXCHANGE_PATH = "/v1/bootstrap/exchange"


def exchange_credential(boot: Bootstrap, *, retry_for_s: float = 600.0,
                        transport: httpx.BaseTransport | None = None) -> Bootstrap:
    """``boot`` with its job token, got once for its bootstrap credential.

    ``POST /v1/bootstrap/exchange`` ``{"credential", "job_id", "node_rank"}``
    answers ``{"job_id", "node_rank", "token"}``; a refused credential
    (used, expired, unknown) is final, an unreachable control plane is retried
    for ``retry_for_s`` (a VM may boot before the network is up).
    """
    if boot.token or not boot.bootstrap_credential:
        return boot
    verify: ssl.SSLContext | bool = ssl.create_default_context(cadata=boot.ca_pem) \
        if boot.ca_pem else True
    body = {"credential": boot.bootstrap_credential, "job_id": boot.job_id,
            "node_rank": boot.node_rank}
    deadline = time.monotonic() + retry_for_s
    with httpx.Client(base_url=boot.control_url.rstrip("/"), verify=verify, timeout=30.0,
                      transport=transport) as http:
        while True:
            try:
                r = http.post(EXCHANGE_PATH, json=body)
                break
            except httpx.TransportError as exc:
                if time.monotonic() >= deadline:
                    raise ConfigError(f"cannot reach {boot.control_url} to exchange the "
                                      f"bootstrap credential: {exc}") from exc
                time.sleep(2.0)
    if r.status_code != 200:
        raise ConfigError(f"the bootstrap credential was refused ({r.status_code}): "
                          f"{r.text[:200]}")
    got = r.json()
    if got.get("job_id") != boot.job_id or int(got.get("node_rank", -1)) != boot.node_rank \
            or not got.get("token"):
        raise ConfigError("the bootstrap exchange answered for another job or node")
    return replace(boot, token=str(got["token"]), bootstrap_credential="")
