"""The state directory and the control plane's configuration.

``SKYPORT_HOME`` (default ``~/.skyport``) holds everything one control plane
owns; several can run side by side.  Layout::

    config.json          ControlPlaneConfig
    pki/                 ca.crt ca.key server.crt server.key users/<name>.crt|key
    jobs.db              the job store (SQLite, WAL)
    storage/             the default file:// storage root
    run/                 pid and address files of the running control plane, logs
    gates/<name>/        each gate's own durable state (e.g. the local gate's clusters)
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from skyport.errors import ConfigError

DEFAULT_HOME = "~/.skyport"


def home_dir(explicit: str | Path | None = None) -> Path:
    raw = explicit or os.environ.get("SKYPORT_HOME") or DEFAULT_HOME
    return Path(raw).expanduser().resolve()


class GateEntry(BaseModel):
    """One configured gate: its plugin type and that plugin's own config."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: str
    config: dict[str, Any] = Field(default_factory=dict)


class InputPolicy(BaseModel):
    """``inputs`` in config.json."""

    model_config = ConfigDict(extra="forbid")

    file_roots: dict[str, list[str]] = Field(
        default_factory=dict,
        description="user name (or '*' for everyone) -> directories of this machine that "
        "user's file:// inputs may come from; none by default: clients upload local files")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="host names an admin allows for http(s) inputs although they resolve "
        "to private or local addresses")


class SubmitLimits(BaseModel):
    """``limits`` in config.json: what one user may hold in the queue."""

    model_config = ConfigDict(extra="forbid")

    # an array's tasks count one by one; 20,000 lets a user queue a 10,000-task array
    # twice, while a task row holds no script (the array's record does)
    max_queued_per_user: int = Field(
        20_000, ge=1,
        description="QUEUED jobs one user may have at once; a submission past it is refused")


class ControlPlaneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_host: str = "127.0.0.1"
    api_port: int = Field(0, ge=0, le=65535)
    storage_url: str = ""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    policy: str = "fcfs"
    policy_config: dict[str, Any] = Field(default_factory=dict)
    gates: list[GateEntry] = Field(default_factory=list)
    heartbeat_timeout_s: float = Field(60.0, gt=0)
    inputs: InputPolicy = Field(default_factory=InputPolicy)
    limits: SubmitLimits = Field(default_factory=SubmitLimits)
    ray_num_cpus: int = Field(4, ge=1)
    ray_memory_mb: int = Field(2048, ge=256)
    ray_object_store_mb: int = Field(128, ge=78)


class StateDir:
    """Paths inside one state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def find(cls, explicit: str | Path | None = None) -> StateDir:
        return cls(home_dir(explicit))

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def db_path(self) -> Path:
        return self.root / "jobs.db"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def secrets(self) -> Path:
        """Jobs' secrets until they end (``skyport.relay.secrets``): 0700, files 0600."""
        return self.root / "secrets"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def pid_path(self) -> Path:
        return self.run / "controlplane.pid"

    @property
    def address_path(self) -> Path:
        return self.run / "controlplane.json"

    @property
    def log_path(self) -> Path:
        return self.run / "controlplane.log"

    def gate_dir(self, name: str) -> Path:
        return self.root / "gates" / name

    def exists(self) -> bool:
        return self.config_path.exists()

    def load_config(self) -> ControlPlaneConfig:
        if not self.config_path.exists():
            raise ConfigError(
                f"no Sky Port state directory at {self.root} (run 'skyport init' first,"
                " or set SKYPORT_HOME)"
            )
        try:
            return ControlPlaneConfig.model_validate_json(self.config_path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{self.config_path} is not a valid config: {exc}") from exc

    def save_config(self, config: ControlPlaneConfig) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
        os.replace(tmp, self.config_path)

    def user_cert(self, username: str) -> tuple[Path, Path]:
        return self.pki / "users" / f"{username}.crt", self.pki / "users" / f"{username}.key"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
