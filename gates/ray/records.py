"""Durable records of the ray gate's clusters: one JSON file per cluster in the gate dir.

A record is written before anything is asked of Ray and removed only once
the cluster is deleted, so a control plane killed halfway still knows every
placement group it may have left.  It holds what a later gate needs to
describe and delete the cluster when its node actors are gone (the Ray node,
the agent's pid and start time); never the job token.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from skyport.gate.records import RecordStore as GenericRecordStore


@dataclass(frozen=True)
class NodeRecord:
    rank: int
    name: str
    node_id: str = ""
    host: str = ""
    pid: int | None = None
    start_time: int | None = None
    workdir: str = ""


@dataclass(frozen=True)
class ClusterRecord:
    cluster_id: str
    job_id: str
    owner: str
    flavor: str
    created_at: float
    strategy: str
    nodes: tuple[NodeRecord, ...]
    state: str = "creating"  # "creating" until every agent has started, then "running"
    network: str = "host"  # or "namespace" (skyport.gate.netns)
    forwarder_pid: int | None = None
    forwarder_start_time: int | None = None

    def with_node(self, node: NodeRecord) -> ClusterRecord:
        return replace(self, nodes=tuple(node if n.rank == node.rank else n
                                         for n in self.nodes))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterRecord:
        raw: dict[str, Any] = json.loads(text)
        return cls(**{**raw, "nodes": tuple(NodeRecord(**n) for n in raw["nodes"])})


class RecordStore(GenericRecordStore[ClusterRecord]):
    """The ``clusters/`` folder of one ray gate's directory."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, ClusterRecord.from_json)
