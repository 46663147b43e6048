"""One typed command per call into the Core, and the one path that runs it.

A REST route builds a command (a frozen dataclass naming the ``CoreService``
method that handles it, its fields being that method's arguments) and hands
it to the Core port: ``await core.execute(command)``.  In the control plane
the port is an ``ActorProxy`` around ``CoreActor``, whose single ``execute``
method runs the command on its service; in tests and in the test double
(``skyport.client.testing``) it is a ``LocalCore`` around a ``CoreService``.
Either way ``Command.run`` does the call, so there are no forwarders to write:
a new call is a command here, a route, and the handler on ``CoreService``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from skyport.models import JobSpec, JobState
from skyport.pki import Identity

if TYPE_CHECKING:
    from skyport.core.service import CoreService

__all__ = ["Command", "CorePort", "LocalCore"]


@dataclass(frozen=True)
class Command:
    """Base of every command: ``handler`` names the ``CoreService`` coroutine method."""

    handler: ClassVar[str]

    def args(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    async def run(self, service: Any) -> Any:
        return await getattr(service, self.handler)(**self.args())


class CorePort(Protocol):
    """What the REST API needs of the Core: one coroutine that runs a command."""

    async def execute(self, command: Command) -> Any: ...


class LocalCore:
    """A ``CoreService`` of this process as a ``CorePort`` (tests, the test double)."""

    def __init__(self, service: CoreService) -> None:
        self.service = service

    async def execute(self, command: Command) -> Any:
        return await command.run(self.service)


# -- users --------------------------------------------------------------------------


@dataclass(frozen=True)
class Submit(Command):
    handler = "submit"
    who: Identity
    spec: JobSpec
    payload_b64: str | None


@dataclass(frozen=True)
class SubmitMany(Command):
    handler = "submit_many"
    who: Identity
    jobs: list[tuple[JobSpec, str | None]]


@dataclass(frozen=True)
class SubmitArray(Command):
    handler = "submit_array"
    who: Identity
    spec: JobSpec
    payloads_b64: list[str] | None


@dataclass(frozen=True)
class GetArray(Command):
    handler = "array"
    who: Identity
    array_id: str


@dataclass(frozen=True)
class GetJob(Command):
    handler = "get"
    who: Identity
    job_id: str


@dataclass(frozen=True)
class WaitJob(Command):
    """Until the job is terminal or no longer in ``since``, at most ``timeout_s`` (pushed)."""

    handler = "wait_job"
    who: Identity
    job_id: str
    timeout_s: float
    since: JobState | None = None


@dataclass(frozen=True)
class ListJobs(Command):
    handler = "jobs"
    who: Identity
    all_users: bool
    states: list[JobState] | None
    after: str | None = None
    limit: int | None = None
    newest: bool = False  # newest first (``after``: then the jobs submitted before it)


@dataclass(frozen=True)
class Cancel(Command):
    handler = "cancel"
    who: Identity
    job_id: str


@dataclass(frozen=True)
class CancelMany(Command):
    handler = "cancel_many"
    who: Identity
    job_ids: list[str]
    states: list[JobState] | None
    name: str | None
    all_mine: bool


@dataclass(frozen=True)
class BootstrapExchange(Command):
    handler = "bootstrap_exchange"
    credential: str
    job_id: str
    node_rank: int


@dataclass(frozen=True)
class Hold(Command):
    handler = "hold"
    who: Identity
    job_id: str


@dataclass(frozen=True)
class Release(Command):
    handler = "release"
    who: Identity
    job_id: str


@dataclass(frozen=True)
class Status(Command):
    handler = "status"
    who: Identity


@dataclass(frozen=True)
class GateInfo(Command):
    handler = "gate_info"


@dataclass(frozen=True)
class Timetable(Command):
    handler = "timetable"
    who: Identity


@dataclass(frozen=True)
class Clusters(Command):
    handler = "clusters"
    who: Identity


@dataclass(frozen=True)
class UserCheckpoint(Command):
    handler = "user_checkpoint"
    who: Identity
    job_id: str


@dataclass(frozen=True)
class Checkpoints(Command):
    handler = "checkpoints"
    who: Identity
    job_id: str


@dataclass(frozen=True)
class Requeue(Command):
    handler = "requeue"
    who: Identity
    job_id: str


@dataclass(frozen=True)
class CancelAfterCheckpoint(Command):
    handler = "cancel_after_checkpoint"
    who: Identity
    job_id: str


@dataclass(frozen=True)
class DebugKillNode(Command):
    handler = "debug_kill_node"
    who: Identity
    job_id: str
    node: int | None


@dataclass(frozen=True)
class DebugPreempt(Command):
    handler = "debug_preempt"
    who: Identity
    job_id: str
    notice_s: float


# -- budgets and costs: handled by the Core's budget desk (skyport.core.budget_desk) -------


@dataclass(frozen=True)
class BudgetCommand(Command):
    """``handler`` names a ``BudgetDesk`` coroutine method (``CoreService.budgets``)."""

    async def run(self, service: Any) -> Any:
        return await getattr(service.budgets, self.handler)(**self.args())


@dataclass(frozen=True)
class SetBudget(BudgetCommand):
    handler = "set_budget"
    who: Identity
    user: str
    limit: float
    period: str


@dataclass(frozen=True)
class GetBudget(BudgetCommand):
    handler = "budget_view"
    who: Identity
    user: str | None


@dataclass(frozen=True)
class CostReport(BudgetCommand):
    handler = "cost_report"
    who: Identity
    user: str | None
    since: str | None
    by: Literal["gate", "user", "day"]


# -- agents (the job's bearer token) ---------------------------------------------------


@dataclass(frozen=True)
class AgentAuth(Command):
    handler = "agent_auth"
    job_id: str
    token: str = dataclasses.field(repr=False)


@dataclass(frozen=True)
class AgentHello(Command):
    handler = "agent_hello"
    job_id: str
    token: str = dataclasses.field(repr=False)
    rank: int
    node_name: str
    facts: Any = None  # skyport.protocol.NodeFacts, when the agent sent them


@dataclass(frozen=True)
class AgentHeartbeat(Command):
    handler = "agent_heartbeat"
    job_id: str
    token: str = dataclasses.field(repr=False)
    rank: int


@dataclass(frozen=True)
class AgentState(Command):
    handler = "agent_state"
    job_id: str
    token: str = dataclasses.field(repr=False)
    state: JobState
    reason: str


@dataclass(frozen=True)
class AgentExit(Command):
    handler = "agent_exit"
    job_id: str
    token: str = dataclasses.field(repr=False)
    exit_code: int
    timed_out: bool
    reason: str
    output_problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentResultStored(Command):
    handler = "agent_result_stored"
    job_id: str
    token: str = dataclasses.field(repr=False)
    path: str
    sha256: str


@dataclass(frozen=True)
class DirectUploadOpened(Command):
    """A multipart upload opened for the live attempt: recorded, so it is aborted if left."""
    handler = "direct_upload_opened"
    job_id: str
    token: str = dataclasses.field(repr=False)
    path: str
    upload_id: str


@dataclass(frozen=True)
class DirectUploadClosed(Command):
    handler = "direct_upload_closed"
    job_id: str
    token: str = dataclasses.field(repr=False)
    upload_id: str


@dataclass(frozen=True)
class AgentCheckpointRequest(Command):
    handler = "agent_checkpoint_request"
    job_id: str
    token: str = dataclasses.field(repr=False)
    reason: str


@dataclass(frozen=True)
class AgentCheckpointPart(Command):
    handler = "agent_checkpoint_part"
    job_id: str
    token: str = dataclasses.field(repr=False)
    version: int
    ck_id: str
    rank: int
    files: list[dict[str, Any]]


@dataclass(frozen=True)
class AgentCheckpointLatest(Command):
    handler = "agent_checkpoint_latest"
    job_id: str
    token: str = dataclasses.field(repr=False)


@dataclass(frozen=True)
class AgentIdleNext(Command):
    handler = "agent_idle_next"
    cluster_id: str
    credential: str = dataclasses.field(repr=False)
    rank: int
    wait_s: float


# -- launches (skyport.core.launch_calls) ----------------------------------------------------


@dataclass(frozen=True)
class LaunchNodes(Command):
    handler = "agent_launch_nodes"
    job_id: str
    token: str = dataclasses.field(repr=False)


@dataclass(frozen=True)
class LaunchCreate(Command):
    handler = "agent_launch_create"
    job_id: str
    token: str = dataclasses.field(repr=False)
    node: int
    argv: list[str]
    env: dict[str, str]
    cwd: str
    op: str = "run"


@dataclass(frozen=True)
class LaunchPollCmd(Command):
    handler = "agent_launch_poll"
    job_id: str
    token: str = dataclasses.field(repr=False)
    node: int
    wait_s: float


@dataclass(frozen=True)
class LaunchOutput(Command):
    handler = "agent_launch_output"
    job_id: str
    token: str = dataclasses.field(repr=False)
    launch_id: str
    node: int
    stream: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class LaunchExit(Command):
    handler = "agent_launch_exit"
    job_id: str
    token: str = dataclasses.field(repr=False)
    launch_id: str
    node: int
    exit_code: int


@dataclass(frozen=True)
class LaunchReadCmd(Command):
    handler = "agent_launch_read"
    job_id: str
    token: str = dataclasses.field(repr=False)
    launch_id: str
    offsets: dict[str, int]
    wait_s: float


@dataclass(frozen=True)
class LaunchCancel(Command):
    handler = "agent_launch_cancel"
    job_id: str
    token: str = dataclasses.field(repr=False)
    launch_id: str
