"""Durable records of the local gate's clusters: one JSON file per cluster.

A record holds what a later gate process needs to find, describe and kill a
cluster (ids, pids with their start times, the cores and GPUs it holds); it
never holds the job token.  Records are written atomically (temp file, fsync,
rename), so a crash leaves the old record or the new one, never half of one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from skyport.gate.records import RecordStore as GenericRecordStore

RecordState = Literal["creating", "running"]


@dataclass(frozen=True)
class NodeRecord:
    rank: int
    name: str
    workdir: str
    vcores: tuple[int, ...]
    cores: tuple[int, ...]
    gpus: tuple[str, ...]
    pid: int | None = None
    start_time: int | None = None


@dataclass(frozen=True)
class ClusterRecord:
    cluster_id: str
    job_id: str
    owner: str
    flavor: str
    created_at: float
    mem_mb: int
    state: RecordState
    nodes: tuple[NodeRecord, ...]
    # the cluster's payload user (isolation "user"), deleted with the cluster
    payload_user: str = ""
    payload_uid: int = -1
    payload_gid: int = -1
    # network = "namespace": the cluster's namespaces exist, and its forwarder's session
    network: str = "host"
    forwarder_pid: int | None = None
    forwarder_start_time: int | None = None

    def with_node(self, node: NodeRecord) -> ClusterRecord:
        nodes = tuple(node if n.rank == node.rank else n for n in self.nodes)
        return replace(self, nodes=nodes)

    @property
    def vcores(self) -> set[int]:
        return {c for n in self.nodes for c in n.vcores}

    @property
    def gpus(self) -> set[str]:
        return {g for n in self.nodes for g in n.gpus}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterRecord:
        raw: dict[str, Any] = json.loads(text)
        nodes = tuple(
            NodeRecord(**{**n, "vcores": tuple(n["vcores"]), "cores": tuple(n["cores"]),
                          "gpus": tuple(n["gpus"])})
            for n in raw.pop("nodes")
        )
        return cls(**raw, nodes=nodes)


class RecordStore(GenericRecordStore[ClusterRecord]):
    """The ``clusters/`` folder of one gate's directory."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, ClusterRecord.from_json)
