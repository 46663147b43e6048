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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from skyport.agent.isolation import Isolation
from skyport.errors import ConfigError

__all__ = ["Bootstrap"]


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
