"""Configuration of the libcloud gate, and resolving its credentials and prices.

Example (``config.json``, one entry of ``gates``)::

    {"name": "aws", "type": "libcloud", "config": {
        "provider": "ec2", "region": "eu-central-1",
        "credentials_env": {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY"},
        "image": "ami-0123456789abcdef0", "flavors": ["c6i.large", "c6i.4xlarge"],
        "price_file": "/etc/skyport/aws-prices.json", "max_nodes": 16, "boot_s": 90,
        "create_args": {"ex_keyname": "ops", "ex_security_groups": ["skyport-nodes"]}}}

Credentials are a reference (a file or environment variable names), resolved
on the control plane when the gate starts; their values are never put in a
config, a log, an error message, a node's user-data or environment.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from gates.libcloud.userdata import DEFAULT_INSTALL
from skyport.errors import ConfigError
from skyport.gate import GateConfig

__all__ = ["LibcloudGateConfig", "driver_class", "load_prices", "resolve_credentials"]


class LibcloudGateConfig(GateConfig):
    provider: str = Field(description="a libcloud compute Provider name ('ec2', 'GCE', ...) "
                          "or 'package.module:Class' / 'package.module.Class' of a NodeDriver")
    driver_args: dict[str, Any] = Field(default_factory=dict,
                                        description="keyword arguments of the driver "
                                        "(host, port, secure, project, ...); no secrets")
    credentials_file: str | None = Field(None, description="JSON file with 'key', 'secret' "
                                         "(and any other secret driver keyword arguments)")
    credentials_env: dict[str, str] | None = Field(
        None, description="driver keyword -> environment variable name, "
        "e.g. {'key': 'AWS_ACCESS_KEY_ID', 'secret': 'AWS_SECRET_ACCESS_KEY'}")
    region: str | None = None
    image: str = Field(min_length=1, description="image id for every node")
    flavors: list[str] = Field(min_length=1, description="size ids this gate may use")
    max_nodes: int = Field(8, ge=1, le=10000, description="nodes alive at once, all clusters")
    prices: dict[str, float] = Field(default_factory=dict,
                                     description="size id -> price per hour (overrides the file)")
    price_file: str | None = Field(None, description="JSON file: size id -> price per hour")
    boot_s: float = Field(60.0, ge=0, description="expected time for a node to come up")
    create_timeout_s: float = Field(600.0, gt=0, description="until every node is RUNNING")
    delete_timeout_s: float = Field(120.0, gt=0, description="until no node is left")
    poll_s: float = Field(2.0, gt=0)
    create_args: dict[str, Any] = Field(default_factory=dict,
                                        description="extra create_node keyword arguments")
    tags_arg: str | None = Field("ex_metadata", description="create_node keyword for tags")
    userdata_arg: str = Field("ex_userdata", description="create_node keyword for user-data")
    userdata_secret: Literal["token", "exchange"] = Field(
        "exchange", description="what user-data carries: 'exchange', a one-time bootstrap "
        "credential the agent exchanges for the job token (POST /v1/bootstrap/exchange; "
        "needs a control plane that serves it), or 'token', the job token itself")
    bootstrap_ttl_s: float = Field(900.0, gt=0, le=86400,
                                   description="how long a bootstrap credential is valid")
    install_command: str = Field(DEFAULT_INSTALL, min_length=1,
                                 description="run on a node whose Python lacks Sky Port")
    name_prefix: str = Field("skyport", pattern=r"^[a-z][a-z0-9-]{0,20}$")

    @model_validator(mode="after")
    def _one_credentials_source(self) -> LibcloudGateConfig:
        if self.credentials_file and self.credentials_env:
            raise ValueError("give credentials_file or credentials_env, not both")
        for key in ("key", "secret", "password", "token"):
            if key in self.driver_args:
                raise ValueError(f"driver_args must not hold {key!r}: use credentials_file "
                                 "or credentials_env")
        return self


def driver_class(provider: str) -> type:
    """A NodeDriver class from a Provider name or a dotted path."""
    if ":" in provider or "." in provider:
        module_name, sep, attr = provider.partition(":")
        if not sep:
            module_name, _, attr = provider.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"libcloud gate: cannot load driver {provider!r}: {exc}") from exc
    from libcloud.compute.providers import get_driver
    from libcloud.compute.types import Provider

    value = getattr(Provider, provider.upper(), provider.lower())
    try:
        return get_driver(value)
    except AttributeError as exc:
        raise ConfigError(f"libcloud gate: unknown provider {provider!r} (a libcloud "
                          "compute Provider name, or a dotted path to a NodeDriver class)"
                          ) from exc


def resolve_credentials(cfg: LibcloudGateConfig) -> dict[str, Any]:
    """Driver keyword arguments holding secrets; errors name the source, never a value."""
    if cfg.credentials_file:
        path = Path(cfg.credentials_file).expanduser()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"libcloud gate: cannot read credentials_file {path}: "
                              f"{type(exc).__name__}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"libcloud gate: credentials_file {path} must hold a JSON object")
        return raw
    if cfg.credentials_env:
        out = {}
        for arg, var in cfg.credentials_env.items():
            if var not in os.environ:
                raise ConfigError(f"libcloud gate: environment variable {var} (for {arg!r}) "
                                  "is not set on the control plane")
            out[arg] = os.environ[var]
        return out
    return {}


def load_prices(cfg: LibcloudGateConfig) -> dict[str, float]:
    prices: dict[str, float] = {}
    if cfg.price_file:
        try:
            raw = json.loads(Path(cfg.price_file).expanduser().read_text())
            prices.update({str(k): float(v) for k, v in raw.items()})
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise ConfigError(f"libcloud gate: bad price_file {cfg.price_file}: {exc} "
                              "(a JSON object: size id -> price per hour)") from exc
    prices.update(cfg.prices)
    return prices
