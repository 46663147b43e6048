"""Every body that crosses the REST API, as one pydantic model each: the source of truth.

The routes (``skyport.api``) declare these as their request bodies and return
types, the Python client (``skyport.client``) and the agent's client
(``skyport.agent.client``) parse every answer into them, so the two sides
cannot drift apart: a key added on one side is a field here.  ``ROUTES.md``
and ``skyport/agent/PROTOCOL.md`` describe the calls; the shapes are here.

Answers are read leniently (unknown keys are ignored, so a newer server does
not break an older client); request bodies are strict (``extra="forbid"``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from skyport.models import Job, JobSpec, JobState, SubmitRequest, escape_controls

__all__ = [
    "MAX_BATCH",
    "MAX_BUDGET",
    "BudgetBody",
    "BudgetView",
    "CostRowView",
    "CostView",
    "ArraySubmitRequest",
    "BatchSubmitRequest",
    "ArrayView",
    "CapacityView",
    "CheckpointFile",
    "CheckpointOpened",
    "CheckpointOrder",
    "CheckpointRecord",
    "CheckpointsView",
    "DirectDoneBody",
    "DirectReadAnswer",
    "DirectReadBody",
    "DirectWriteAnswer",
    "DirectWriteBody",
    "ClusterView",
    "Empty",
    "ErrorBody",
    "ExitBody",
    "FileEntry",
    "FlavorView",
    "GateView",
    "HeartbeatAnswer",
    "HelloAnswer",
    "HelloBody",
    "GpuFact",
    "LaunchOp",
    "NodeFacts",
    "IdleGrant",
    "IdleNext",
    "Job",
    "JobSpec",
    "KillNodeAnswer",
    "LatestAnswer",
    "LaunchBody",
    "LaunchCreated",
    "LaunchExitBody",
    "LaunchOrder",
    "LaunchPoll",
    "LaunchRead",
    "NodeNames",
    "PartAnswer",
    "PartBody",
    "PartFile",
    "PreemptAnswer",
    "RelayFailure",
    "RelayOrder",
    "RelayReady",
    "SecretAnswer",
    "SecretBody",
    "RequestBody",
    "SizeAnswer",
    "StateBody",
    "StatusView",
    "SubmitRequest",
    "TimetableEntry",
    "TimetableView",
    "WhoAmI",
]


class Answer(BaseModel):
    """Base of every answer: unknown keys from a newer server are ignored."""

    model_config = ConfigDict(extra="ignore")


class Body(BaseModel):
    """Base of every request body: an unknown key is a mistake (422 naming it)."""

    model_config = ConfigDict(extra="forbid")


class Empty(Answer):
    """An answer with nothing in it (``{}``)."""


class SizeAnswer(Answer):
    """A write's answer: the size of what was written (a file) or of the whole log."""

    size: int
    sha256: str | None = None  # of a file written whole: what the control plane stored


# -- errors ------------------------------------------------------------------------


class ErrorBody(Answer):
    """Every error answer; ``skyport.errors`` writes and reads it, field for field.

    ``error`` names the class; the other fields are those of the class that
    has them (``ValidationError``: field, value, allowed; ``ScriptError`` also
    line; ``JobFailedError``: job_id ... remote_traceback), absent otherwise.
    """

    error: str
    message: str
    field: str | None = None
    value: Any = None
    allowed: str | None = None
    line: int | None = None
    job_id: str | None = None
    state: str | None = None
    exit_code: int | None = None
    remote_type: str | None = None
    remote_message: str | None = None
    remote_traceback: str | None = None
    gate: str | None = None  # NeverFitsError, UnsupportedFeatureError
    type_name: str | None = None
    feature: str | None = None
    reason: str | None = None


# -- users: /v1 ---------------------------------------------------------------------


class WhoAmI(Answer):
    username: str
    role: str


class FileEntry(Answer):
    """One stored file of a job."""

    path: str
    size: int
    sha256: str | None = None  # recorded by the control plane when it wrote the file


class FlavorView(Answer):
    """A node shape a gate offers (``skyport.gate.Flavor``)."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int = 0
    price_per_hour: float = 0.0
    boot_s: float = 0.0
    max_nodes: int = 1


class CapacityView(Answer):
    """A gate's cores and GPUs (``skyport.gate.Capacity``)."""

    total_cpus: int
    free_cpus: int
    total_gpus: int = 0
    free_gpus: int = 0


class GateView(Answer):
    """One configured gate, as ``skyport gates`` shows it; a sick one has ``error``."""

    name: str
    type: str
    healthy: bool
    flavors: list[FlavorView] = Field(default_factory=list)
    capacity: CapacityView | None = None
    clusters: int = 0
    error: str = ""


class StatusView(Answer):
    version: str
    policy: str
    started_at: str
    storage_url: str
    counts: dict[str, int] = Field(default_factory=dict)
    passes: int = 0
    gates: list[GateView] = Field(default_factory=list)


class ClusterView(Answer):
    """One cluster of some gate, with its job and its cost so far."""

    cluster_id: str
    gate: str
    job_id: str
    owner: str | None = None
    job_state: JobState | None = None
    state: str
    flavor: str
    nodes: int
    age_s: float
    price_per_hour: float
    cost: float
    reason: str = ""


class TimetableEntry(Answer):
    """One job's bar in the plan: start and end in epoch seconds."""

    job_id: str
    name: str
    owner: str
    state: JobState
    start: float
    end: float
    gate: str | None = None
    nodes: int
    procs: int
    reason: str | None = None  # why a queued job waits (``Job.wait_reason``)
    flavor: str | None = None  # the flavor its gate gives (or gave) it
    est_cost: float | None = None  # nodes x price per node-hour x time limit in hours
    prefer: str | None = None  # "time" or "cost" (own jobs)
    deadline: str | None = None  # when it must have ended, ISO (own jobs)


class TimetableView(Answer):
    now: float
    policy: str
    entries: list[TimetableEntry] = Field(default_factory=list)


class CheckpointFile(Answer):
    path: str
    size: int


class CheckpointRecord(Answer):
    """``checkpoints/latest.json``: the latest complete checkpoint of a job."""

    version: int
    time: str
    reason: str = ""
    attempt: int = 0
    files: list[CheckpointFile] = Field(default_factory=list)
    bytes: int = 0
    took_s: float = 0.0


class CheckpointOpened(Answer):
    """The checkpoint opened (or already open) by a request: its version and id."""

    version: int
    id: str


class CheckpointsView(Answer):
    latest: CheckpointRecord | None = None
    pending: int | None = None


class KillNodeAnswer(Answer):
    job_id: str
    cluster_id: str | None
    node: int
    killed: bool


class PreemptAnswer(Answer):
    job_id: str
    cluster_id: str | None
    notice_s: float


# -- agents: /agent/v1/jobs/{job_id} -------------------------------------------------


class GpuFact(Body):
    model_config = ConfigDict(extra="ignore")
    model: str = Field("", max_length=200)
    memory_mb: int = Field(0, ge=0)


class NodeFacts(Body):
    """What a node offers, as its agent found it at hello (``skyport.agent.facts``).

    ``mpi`` maps an implementation (``mpich``, ``openmpi``) to the version the
    node has, or to ``None`` when it has none: the Core decides from these, not
    from its own host, whether the job's layout can run (``core.machine``).
    """

    model_config = ConfigDict(extra="ignore")  # a newer agent may report more
    cores: int = Field(0, ge=0, le=1 << 20)
    mem_mb: int = Field(0, ge=0)
    gpus: list[GpuFact] = Field(default_factory=list, max_length=1024)
    mpi: dict[Annotated[str, Field(max_length=40)],
              Annotated[str, Field(max_length=200)] | None] = Field(
        default_factory=dict, max_length=16)
    python: str = Field("", max_length=100)
    skyport: str = Field("", max_length=100)


class HelloBody(Body):
    model_config = ConfigDict(extra="ignore")  # older agents send more; none is needed
    node_name: str = Field(min_length=1, max_length=200)
    hostname: str = ""
    pid: int = 0
    facts: NodeFacts | None = None  # older agents send none: the Core then checks nothing


class HelloAnswer(Answer):
    job: Job
    num_nodes: int
    restart_count: int = 0


class IdleGrant(Answer):
    """A node's idle credential for its warm cluster (``skyport.core.warm``)."""

    cluster_id: str
    credential: str = Field(repr=False)


class CheckpointOrder(Answer):
    """Upload this node's part of checkpoint ``version`` (``id`` names the attempt)."""

    version: int
    id: str


class HeartbeatAnswer(Answer):
    """The one answer to a node's heartbeat; the Core builds it, the agent obeys it."""

    state: JobState
    action: Literal["wait", "run", "stop", "idle"]
    warm: bool = False  # node 0 waits for its idle answer after the exit
    idle: IdleGrant | None = None
    checkpoint: CheckpointOrder | None = None
    notice: str | None = None  # "preempt"
    signal: str | None = None  # e.g. "SIGUSR1"


class StateBody(Body):
    state: JobState
    reason: str = Field("", max_length=2000)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        return escape_controls(v)


class ExitBody(Body):
    exit_code: int = Field(ge=-(2**31), le=2**31 - 1)
    timed_out: bool = False
    reason: str = Field("", max_length=4000)
    # outputs that were declared but missing, or could not be saved: the Core then ends
    # the job FAILED whatever the exit code (a lost result is never a success)
    output_problems: list[Annotated[str, Field(max_length=2000)]] = Field(
        default_factory=list, max_length=1000)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        # escaped, not refused: an exit that does not count would leave the job to the
        # node-loss path; the reason then reaches no terminal as anything but text
        return escape_controls(v)


# -- launches: node 0 runs commands on node k ---------------------------------------------


LaunchOp = Literal["run", "stage_in", "stage_out", "fetch"]
"""What node k's agent does with a launch: ``run`` its argv as the payload's user; or,
itself, with the job token: ``stage_in`` the script and inputs, ``stage_out`` its
outputs (under ``outputs/nodes/<k>/``), ``fetch`` broadcast files (argv: ``MODE:PATH``
each, read from ``bcast/PATH``).  Node 0's agent alone asks for the last three."""


class LaunchBody(Body):
    node: int = Field(ge=0)
    argv: list[str] = Field(min_length=1, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict)
    # relative: inside the node's own working directory (each node resolves it in its own)
    cwd: str = Field("", max_length=4096)
    op: LaunchOp = "run"


class LaunchExitBody(Body):
    node: int = Field(ge=0)
    exit_code: int


class NodeNames(Answer):
    node_names: list[str]


class LaunchCreated(Answer):
    launch_id: str


class LaunchOrder(Answer):
    """What node k's agent needs to start a launch."""

    launch_id: str
    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str = ""
    op: LaunchOp = "run"


class LaunchPoll(Answer):
    """Node k's long-poll: launches to start, launch ids to kill, or stop polling."""

    start: list[LaunchOrder] = Field(default_factory=list)
    cancel: list[str] = Field(default_factory=list)
    stop: bool = False


class LaunchRead(Answer):
    """Output past the reader's offsets (base64) and, once all is read, the exit code."""

    state: str
    stdout: str = ""
    stderr: str = ""
    stdout_offset: int = 0
    stderr_offset: int = 0
    exit_code: int | None = None


# -- checkpoints (agents) ------------------------------------------------------------------


class RequestBody(Body):
    reason: str = Field("", max_length=500)


class PartFile(Body):
    path: str = Field(min_length=1, max_length=4096)
    size: int = Field(ge=0)


class PartBody(Body):
    id: str = Field(min_length=1, max_length=64)
    files: list[PartFile] = Field(default_factory=list, max_length=100_000)


class PartAnswer(Answer):
    committed: bool
    version: int
    latest: CheckpointRecord | None = None


class LatestAnswer(Answer):
    latest: CheckpointRecord | None = None
    pending: int | None = None
    log_sizes: dict[str, int] = Field(default_factory=dict)


# -- idle nodes: /agent/v1/idle/{cluster_id} --------------------------------------------------


class IdleNext(Answer):
    """An idle node's next step: ``assign`` (with the job's id and token), ``wait``, ``stop``."""

    action: Literal["wait", "stop", "assign"]
    job_id: str | None = None
    token: str | None = Field(None, repr=False)


class UploadAnswer(BaseModel):
    """``PUT /v1/uploads/{sha256}/{name}``: the input URL that names the stored file."""

    url: str
    size: int


class CancelRequest(Body):
    """``POST /v1/jobs/cancel``: scancel's selectors; ids and filters narrow each other."""

    job_ids: list[str] = Field(default_factory=list, max_length=100_000)
    states: list[JobState] | None = None
    name: str | None = Field(None, max_length=200)  # a shell-style pattern: "sweep-*"
    all: bool = False  # every job of yours that is not over


class CancelAnswer(Answer):
    cancelled: list[str]
    already_ended: list[str] = Field(default_factory=list)
    not_found: list[str] = Field(default_factory=list)


MAX_BATCH = 1000  # jobs in one POST /v1/jobs/batch


class BatchSubmitRequest(Body):
    """``POST /v1/jobs/batch``: several jobs, checked one by one, stored in one transaction
    (or none of them: the error names the first refused job as ``jobs[i]``)."""

    jobs: list[SubmitRequest] = Field(min_length=1, max_length=MAX_BATCH)


class ArraySubmitRequest(Body):
    """``POST /v1/arrays``: one job array (``spec.array`` says which indices).

    A function array (``fn.map``) carries one cloudpickled call per task, in
    index order; the Core stores them as one file and stages task i's alone.
    """

    spec: JobSpec
    payloads_b64: list[Annotated[str, Field(max_length=64 * 1024 * 1024)]] | None = Field(
        None, max_length=100_000)


class ArrayView(Answer):
    """One job array: its tasks are the jobs ``{id}_{index}``; ``counts`` per state."""

    id: str
    owner: str
    name: str
    array: str  # the indices as submitted, with %N: "0-99:2%10"
    task_count: int
    throttle: int | None = None
    submitted_at: str
    counts: dict[JobState, int] = Field(default_factory=dict)
    indices: list[int] = Field(default_factory=list)  # in order: task i is {id}_{indices[i]}

    def task_ids(self) -> list[str]:
        return [f"{self.id}_{i}" for i in self.indices]


class BootstrapExchangeBody(Body):
    """``POST /v1/bootstrap/exchange``: a cloud node's one-time credential, and who it is."""

    credential: str = Field(min_length=1, max_length=512)
    job_id: str = Field(min_length=1, max_length=64)
    node_rank: int = Field(ge=0, le=4095)


class BootstrapExchangeAnswer(Answer):
    job_id: str
    node_rank: int
    token: str


# -- budgets and costs: /v1/budgets, /v1/cost (skyport.core.budgets) -------------------------

MAX_BUDGET = 1e12  # no budget is larger: sums of prices stay exact enough to compare


class BudgetBody(Body):
    """``PUT /v1/budgets/{user}``: what the user may spend per period (admins only)."""

    limit: float = Field(ge=0, le=MAX_BUDGET, allow_inf_nan=False, strict=True)  # no "5", no true
    period: Literal["month", "week", "total"] = "month"


class BudgetView(Answer):
    """One user's budget now; ``limit`` None: no budget (nothing waits for money)."""

    user: str
    limit: float | None = None
    period: Literal["month", "week", "total"] | None = None
    since: datetime | None = None  # the current period's start (UTC); None: ever
    spent: float = 0.0  # in the current period (no budget: this calendar month)
    committed: float = 0.0  # what live jobs may still cost at worst
    remaining: float | None = None
    waiting: list[str] = Field(default_factory=list)  # queued jobs waiting for budget
    set_by: str | None = None
    set_at: datetime | None = None


class CostRowView(Answer):
    key: str  # the gate, the user or the UTC day (YYYY-MM-DD)
    cost: float
    node_hours: float
    jobs: int


class CostView(Answer):
    """``GET /v1/cost``: what clusters cost while jobs ran, grouped."""

    by: Literal["gate", "user", "day"]
    user: str | None = None  # None: every user's (admins)
    since: datetime | None = None
    until: datetime
    rows: list[CostRowView] = Field(default_factory=list)
    total: float = 0.0


# -- the direct data path: /agent/v1/jobs/{id}/direct/... ------------------------------


_SHA256_PATTERN = r"^[0-9a-f]{64}$"


class DirectReadBody(Body):
    path: str = Field(max_length=1024)


class DirectReadAnswer(Answer):
    """A presigned GET for one file, or ``url`` None: read it through ``/files/``."""

    url: str | None = None
    size: int = 0
    sha256: str | None = None  # recorded by the control plane when the file was written
    expires_in: int = 0


class DirectWriteBody(Body):
    path: str = Field(max_length=1024)
    size: int = Field(ge=0, le=5 << 40)


class DirectWriteAnswer(Answer):
    """Presigned part URLs (``upload_id`` "" and one URL: a single PUT), or ``urls`` empty:
    write it through ``/files/``."""

    upload_id: str = ""
    part_size: int = 0
    urls: list[str] = []
    expires_in: int = 0


class DirectDoneBody(Body):
    path: str = Field(max_length=1024)
    upload_id: str = Field("", max_length=1024)
    etags: list[Annotated[str, Field(max_length=200)]] = Field([], max_length=10_000)
    size: int = Field(ge=0, le=5 << 40)
    sha256: str = Field(pattern=_SHA256_PATTERN)


# -- the relay (skyport.relay): TCP streams over WebSockets, no inbound port on a node ---


class RelayReady(Answer):
    """The first (text) frame on every relay WebSocket: joined, or why not.

    After ``ok`` the socket carries the stream's bytes as binary frames, and the
    text frame ``"eof"`` for a half-close; an error closes it with code 4000 + status.
    """

    ok: bool
    status: int = 200
    error: str = ""  # the error class (``ErrorBody.error``)
    message: str = ""


class RelayOrder(Answer):
    """The control plane to an agent's or a forwarder's control channel: join a stream.

    An agent dials ``127.0.0.1:port`` on its node and opens the stream's socket; a
    forwarder (a reverse stream, ``listen``) dials its own target.
    """

    stream: str
    port: int | None = None


class RelayFailure(Body):
    """An agent or forwarder to the control plane: the stream's target could not be dialled."""

    stream: str = Field(min_length=1, max_length=64)
    error: str = Field(max_length=500)


class SecretBody(Body):
    """``PUT /v1/jobs/{id}/secrets/{name}``: a value the job's agents read, never logged."""

    value: str = Field(max_length=64 * 1024)


class SecretAnswer(Answer):
    value: str
