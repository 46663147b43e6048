"""Configuration of the ray gate."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from skyport.gate import GateConfig

Strategy = Literal["auto", "STRICT_SPREAD", "SPREAD", "PACK", "STRICT_PACK"]


class RayGateConfig(GateConfig):
    """Where and how the ray gate places a job's nodes.

    ``address`` is the Ray cluster to use when the gate process is not yet
    connected to Ray (a gate made outside a control plane, e.g. by a script);
    inside a control plane the gate uses the control plane's own Ray (start
    the control plane with ``--address`` to join the cluster you mean), and an
    ``address`` naming another cluster is refused.

    The flavor is the largest node of the Ray cluster as it is now; on an
    autoscaling cluster whose workers are not up yet, declare the worker shape
    with ``node_cpus`` / ``node_mem_mb`` / ``node_gpus``; the gate's capacity is then
    at least ``max_nodes`` such workers (the autoscaler brings them).  ``strategy``
    ``auto`` asks for STRICT_SPREAD (one bundle per Ray node) when the cluster
    has as many nodes that can each hold one bundle, else SPREAD.
    """

    address: str | None = Field(None, description="Ray address; None: the control plane's Ray")
    namespace: str = Field("skyport", min_length=1, max_length=64)
    max_nodes: int = Field(8, ge=1, le=1024)
    ready_timeout_s: float = Field(120.0, gt=0, le=86400,
                                   description="how long a placement group may wait for room")
    strategy: Strategy = "auto"
    price_per_hour: float = Field(0.0, ge=0, description="price of one node per hour")
    boot_s: float = Field(5.0, ge=0)
    node_cpus: int | None = Field(None, ge=1)
    node_mem_mb: int | None = Field(None, ge=1)
    node_gpus: int | None = Field(None, ge=0)
    workdir_root: str | None = Field(
        None, description="node working directories on each Ray node; default "
        "<the node's temp dir>/skyport-ray")
    kill_grace_s: float = Field(3.0, ge=0, le=60)
    network: Literal["host", "namespace"] = Field(
        "host", description="'host' (default): agents and payloads use their Ray node's "
        "network; 'namespace' (needs root and iproute2; valid only when every Ray node is on "
        "the gate's host, i.e. a multi-node Ray cluster emulated on one machine, and refused "
        "otherwise): each node gets a network namespace of its own on a private bridge with "
        "its cluster's other nodes, and reaches only the control plane (skyport.gate.netns)")
    call_timeout_s: float = Field(30.0, gt=0, le=600,
                                  description="limit on one call to a node actor")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"namespace {v!r} must be letters, digits, '_', '.', '-'")
        return v
