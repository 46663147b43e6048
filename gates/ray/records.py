"""Durable records of the ray gate's clusters: one JSON file per cluster in the gate dir.

A record is written before anything is asked of Ray and removed only once
the cluster is deleted, so a control plane killed halfway still knows every
placement group it may have left.  It holds what a later gate needs to
describe and delete the cluster when its node actors are gone (the Ray node,
the agent's pid and start time); never the job token.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any


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

    def with_node(self, node: NodeRecord) -> ClusterRecord:
        return replace(self, nodes=tuple(node if n.rank == node.rank else n
                                         for n in self.nodes))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterRecord:
        raw: dict[str, Any] = json.loads(text)
        return cls(**{**raw, "nodes": tuple(NodeRecord(**n) for n in raw["nodes"])})


class RecordStore:
    """The ``clusters/`` folder of one ray gate's directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, cluster_id: str) -> Path:
        return self.root / f"{cluster_id}.json"

    def get(self, cluster_id: str) -> ClusterRecord | None:
        try:
            return ClusterRecord.from_json(self._path(cluster_id).read_text())
        except FileNotFoundError:
            return None

    def all(self) -> list[ClusterRecord]:
        out = []
        for p in sorted(self.root.glob("*.json")):
            try:
                out.append(ClusterRecord.from_json(p.read_text()))
            except FileNotFoundError:
                continue
        return out

    def put(self, record: ClusterRecord) -> None:
        path = self._path(record.cluster_id)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def remove(self, cluster_id: str) -> None:
        self._path(cluster_id).unlink(missing_ok=True)
