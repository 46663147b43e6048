"""The job machine's vocabulary: events (what happened) and instructions (what to do).

Small frozen records, no behaviour.  ``skyport.core.machine`` turns events into
instructions; ``skyport.core.service`` reads the facts an event carries and
executes the instructions (store first, then I/O).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from skyport.core.checkpoints import OpenCheckpoint
from skyport.gate import ClusterInfo, ClusterRequest
from skyport.models import Job, JobState
from skyport.protocol import NodeFacts
from skyport.store import WarmCluster

# -- events: what happened ----------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The control plane (re)started: every job that is not over, and what the gates say."""

    jobs: tuple[Job, ...]
    alive: frozenset[str]  # ids of jobs whose clusters are up with every node alive
    warm: tuple[WarmCluster, ...] = ()
    open_checkpoints: tuple[OpenCheckpoint, ...] = ()
    gates: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Planned:
    """The scheduler's answer: ``(job, gate)`` for every job that may start now."""

    starts: tuple[tuple[Job, str], ...]


@dataclass(frozen=True)
class Unplaced:
    """The queued jobs the scheduler did not start this pass, in its order.

    ``jobs``: each with the gates it may use (() means any).  ``room``: per gate,
    the cores not held by a job's cluster (parked warm clusters count as room:
    whether to reuse or evict them is the machine's decision).
    """

    jobs: tuple[tuple[Job, tuple[str, ...]], ...]
    room: Mapping[str, int]


@dataclass(frozen=True)
class ProvisionReady:
    """Inputs are staged; ``usable``: each warm candidate probed, None or why not."""

    job: Job
    gate: str
    usable: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class ClusterCreated:
    job_id: str
    cluster_id: str
    flavor: str | None
    price_per_hour: float | None


@dataclass(frozen=True)
class CreateFailed:
    job: Job  # as it is now
    gate: str
    kind: Literal["capacity", "gate", "storage", "error"]
    reason: str
    gates: frozenset[str] = frozenset()  # every configured gate


@dataclass(frozen=True)
class AgentHello:
    job: Job
    rank: int
    node_name: str
    facts: NodeFacts | None = None  # what the node offers (None: an older agent)


@dataclass(frozen=True)
class ResultStored:
    """The live attempt's agent stored a function outcome at ``path`` with this digest."""

    job: Job
    path: str
    sha256: str


@dataclass(frozen=True)
class Heartbeat:
    job: Job
    rank: int


@dataclass(frozen=True)
class AgentState:
    job: Job
    state: JobState
    reason: str


@dataclass(frozen=True)
class AgentExited:
    job: Job
    exit_code: int
    timed_out: bool
    reason: str
    cluster: ClusterInfo | None = None  # looked at when ``exit_needs_cluster`` said so
    output_problems: tuple[str, ...] = ()  # missing or unsaved outputs: the job FAILED


@dataclass(frozen=True)
class CancelAsked:
    job: Job
    by: str


@dataclass(frozen=True)
class CheckpointAsked:
    job: Job
    reason: str


@dataclass(frozen=True)
class CheckpointPart:
    job: Job
    version: int
    ck_id: str
    rank: int
    files: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class RequeueAsked:
    job: Job
    by: str
    wait_s: float = 60.0


@dataclass(frozen=True)
class CancelAfterCheckpoint:
    job: Job
    by: str
    wait_s: float = 60.0


@dataclass(frozen=True)
class Preempted:
    job: Job
    notice_s: float


@dataclass(frozen=True)
class HoldAsked:
    """``skyport hold`` (``held=True``) or ``skyport release`` (``held=False``)."""

    job: Job
    by: str
    held: bool


@dataclass(frozen=True)
class Impossible:
    """The scheduler finds that no configured gate could ever run the job."""

    job: Job
    reason: str


@dataclass(frozen=True)
class OverBudget:
    """The owner's budget can never hold the queued job (``skyport.core.budgets``)."""

    job: Job
    reason: str


@dataclass(frozen=True)
class UpstreamChanged:
    """Queued jobs with a ``--dependency`` whose upstream jobs changed (ended, mostly).

    ``upstream``: every job their dependencies name, as it is now; an id
    missing from it names a job that no longer exists.
    """

    jobs: tuple[Job, ...]
    upstream: Mapping[str, Any]  # job id -> skyport.core.dependencies.Upstream


@dataclass(frozen=True)
class IdleNext:
    cluster_id: str
    credential: str = field(repr=False)
    rank: int


@dataclass(frozen=True)
class Tick:
    """About once a second: the jobs that hold clusters, those running, what gates list.

    ``listed``: every cluster of the gates that answered a listing this time
    (None when no listing was asked for).  ``jobs`` are the jobs in states
    that hold a cluster.
    """

    jobs: tuple[Job, ...]
    listed: dict[str, ClusterInfo] | None = None
    listed_gates: frozenset[str] = frozenset()


# -- instructions: what to do ----------------------------------------------------


@dataclass(frozen=True)
class Transition:
    job_id: str
    state: JobState
    reason: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    job_id: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Note:
    """An event in the job's history that changes nothing (e.g. staging progress)."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class PutWarm:
    row: WarmCluster


@dataclass(frozen=True)
class DropWarm:
    cluster_id: str


@dataclass(frozen=True)
class SaveCheckpoint:
    """Persist the job's open checkpoint (None: it is closed)."""

    job_id: str
    checkpoint: OpenCheckpoint | None


@dataclass(frozen=True)
class WriteLatest:
    job_id: str
    record: dict[str, Any]


@dataclass(frozen=True)
class PruneCheckpoint:
    job_id: str
    version: int


@dataclass(frozen=True)
class Provision:
    """Stage the job's inputs and probe these warm clusters, then say ``ProvisionReady``."""

    job_id: str
    gate: str
    warm_candidates: tuple[str, ...]


@dataclass(frozen=True)
class CreateCluster:
    gate: str
    request: ClusterRequest


@dataclass(frozen=True)
class DeleteCluster:
    gate: str
    cluster_id: str


@dataclass(frozen=True)
class Released:
    """The job no longer holds its cluster: charge its use (from the job as it was)."""

    job: Job


@dataclass(frozen=True)
class WakeIdle:
    cluster_id: str


@dataclass(frozen=True)
class Replan:
    pass


@dataclass(frozen=True)
class Reply:
    answer: Any


Instruction = (Transition | Update | Note | PutWarm | DropWarm | SaveCheckpoint | WriteLatest
               | PruneCheckpoint | Provision | CreateCluster | DeleteCluster | Released
               | WakeIdle | Replan | Reply)
Event = (Started | Planned | Unplaced | ProvisionReady | ClusterCreated | CreateFailed | AgentHello
         | Heartbeat | AgentState | AgentExited | CancelAsked | CheckpointAsked
         | CheckpointPart | RequeueAsked | CancelAfterCheckpoint | Preempted | IdleNext | Tick
         | HoldAsked | Impossible | ResultStored | OverBudget | UpstreamChanged)
