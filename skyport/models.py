"""The job model: one pydantic model behind every door (REST, script, decorator).

A ``JobSpec`` is what a user asks for; a ``Job`` is what the control plane
knows about it (state, times, events).  Units are in the field names.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from skyport.units import DEADLINE_FORMS, parse_deadline

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MPI_IMPLEMENTATIONS = ("mpich", "openmpi")
# caps on what one submission may carry: every listing, plan and store row carries the spec
MAX_SCRIPT_BYTES = 1024 * 1024
MAX_ENV_BYTES = 128 * 1024  # keys and values together, as UTF-8
MAX_ENV_VARS = 512
MAX_PATHS = 256  # inputs, and outputs
MAX_URL_CHARS = 4096
# control characters a text field may hold: none, but tabs and newlines where text is prose
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # \t \n \r pass
_ANY_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})  # controls, formats, surrogates, unassigned


def escape_controls(text: str, keep: str = "\n\t") -> str:
    """``text`` with every control or format character written as an escape (``\\x1b``)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in keep or (ch.isprintable() and unicodedata.category(ch) not in _ESCAPED):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def check_text(value: str, field: str, *, multiline: bool = True) -> str:
    """``value`` as UTF-8 text with no NUL, lone surrogate or control character.

    Tabs, newlines and carriage returns (a script saved with CRLF) are kept
    where ``multiline`` (scripts, env values);
    everything else would reach a shell, an environment block or a terminal
    as something other than text.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{field} holds a lone surrogate at position {exc.start}: "
                         "it must be valid UTF-8 text") from None
    bad = (_CONTROL if multiline else _ANY_CONTROL).search(value)
    if bad is not None:
        raise ValueError(f"{field} holds control character {bad.group()!r} at position "
                         f"{bad.start()}: only printable text"
                         + (", tabs and line ends" if multiline else ""))
    return value


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    SCHEDULED = "SCHEDULED"
    PROVISIONING = "PROVISIONING"
    STAGING_IN = "STAGING_IN"
    RUNNING = "RUNNING"
    STAGING_OUT = "STAGING_OUT"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"

    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def has_cluster(self) -> bool:
        """States in which the job holds (or is getting) a cluster."""
        return self in _WITH_CLUSTER


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT})
_WITH_CLUSTER = frozenset(
    {JobState.PROVISIONING, JobState.STAGING_IN, JobState.RUNNING, JobState.STAGING_OUT}
)


class Resources(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: int = Field(1, ge=1, le=4096)
    cpus_per_node: int = Field(1, ge=1, le=1024)
    mem_mb: int | None = Field(None, ge=1)
    gpus_per_node: int = Field(0, ge=0, le=64)
    time_limit_s: int = Field(3600, ge=1, le=366 * 24 * 3600)


class Layout(BaseModel):
    """Parallel layout: nodes x ranks per node x threads per rank."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ranks_per_node: int = Field(1, ge=1, le=1024)
    threads_per_rank: int | None = Field(None, ge=1, le=1024)
    mpi: Literal["mpich", "openmpi"] = "mpich"


class JobSpec(BaseModel):
    """Everything a user asks for when submitting a job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "job"
    kind: Literal["script", "function"] = "script"
    script: str = ""
    resources: Resources = Resources()
    layout: Layout = Layout()
    gate: str | None = None
    flavor: str | None = None
    max_price_per_hour: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Highest price per node-hour of the flavor it runs on, in the gates' currency."""
    prefer: Literal["time", "cost"] = "time"
    """How the planner chooses among gates: the earliest start, or the cheapest that
    meets ``deadline`` (``skyport.timetable.engine``)."""
    deadline: str | None = None
    """When the job must have ended: an ISO time in UTC (``+<seconds>s`` until submission
    makes it absolute; ``skyport.units.parse_deadline``)."""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    # where --output paths are collected: every node ("all": node k's are stored under
    # nodes/<k>/; what node k lacks is no problem) or node 0 alone ("0")
    output_node: Literal["all", "0"] = "all"
    env: dict[str, str] = Field(default_factory=dict)
    priority: int = Field(0, ge=-1000, le=1000)
    # checkpoints and restarts (skyport.checkpoint, skyport.core.recovery)
    checkpoint_every_s: int | None = Field(None, ge=1, le=366 * 24 * 3600)
    max_restarts: int | None = Field(None, ge=0, le=1000)  # None: the control plane's default
    signal: str | None = None  # "SIGUSR1@60": that signal, that many seconds before the limit
    # "afterok:ID[:ID...],singleton" (skyport.dependencies), kept in its canonical form
    dependency: str | None = None
    array: str | None = None  # "0-99:2%10": a job array (skyport.arrays); its tasks are jobs

    @field_validator("array")
    @classmethod
    def _array(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from skyport.arrays import ArraySyntaxError, parse_array

        text = "".join(v.split())
        try:
            parse_array(text)
        except ArraySyntaxError as exc:
            raise ValueError(f"array {v[:40]!r}: {exc}") from None
        return text

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):  # fullmatch: "$" would let a trailing newline in
            raise ValueError(
                f"name {v!r} must be 1-64 letters, digits, '_', '.', '-', starting with "
                "a letter or digit"
            )
        return v

    @field_validator("script")
    @classmethod
    def _script(cls, v: str) -> str:
        check_text(v, "script")
        size = len(v.encode("utf-8"))
        if size > MAX_SCRIPT_BYTES:
            raise ValueError(f"script is {size} bytes: at most {MAX_SCRIPT_BYTES} bytes "
                             "(larger data goes in as an input)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_ENV_VARS:
            raise ValueError(f"env has {len(v)} variables: at most {MAX_ENV_VARS}")
        size = 0
        for key, value in v.items():
            check_env_key(key)
            check_text(value, f"env value of {key}")
            size += len(key.encode()) + len(value.encode())
        if size > MAX_ENV_BYTES:
            raise ValueError(f"env is {size} bytes: at most {MAX_ENV_BYTES} bytes")
        return v

    @field_validator("gate", "flavor")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        if v is not None:
            check_text(v, "gate or flavor name", multiline=False)
            if len(v) > 200:
                raise ValueError(f"name {v[:20]!r}... is {len(v)} characters: at most 200")
        return v

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return parse_deadline(v)
        except ValueError:
            raise ValueError(f"deadline {v[:40]!r}: {DEADLINE_FORMS}") from None

    @field_validator("signal")
    @classmethod
    def _signal(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from skyport.checkpoint import parse_signal  # one parser for the spec and the agent

        name, before_s = parse_signal(v)
        return f"{name}@{before_s}"

    @field_validator("dependency")
    @classmethod
    def _dependency(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from skyport.dependencies import format_conditions, parse_dependency

        return format_conditions(parse_dependency(v))

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > MAX_PATHS:
            raise ValueError(f"{len(v)} outputs: at most {MAX_PATHS}")
        for path in v:  # "results/" is a directory, taken whole: the '/' is no empty part
            check_relative_path(path.removesuffix("/"), "output")
        return v

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > MAX_PATHS:
            raise ValueError(f"{len(v)} inputs: at most {MAX_PATHS}")
        for url in v:
            if not url or len(url) > MAX_URL_CHARS:
                raise ValueError(f"input {url[:40]!r} must be a URL or a path of 1 to "
                                 f"{MAX_URL_CHARS} characters")
            check_text(url, "input", multiline=False)
        return v

    @model_validator(mode="before")
    @classmethod
    def _cores_from_the_layout(cls, data: Any) -> Any:
        """No ``cpus_per_node`` but a layout: ranks x threads cores per node (as sbatch's
        ``--ntasks-per-node`` x ``--cpus-per-task``)."""
        if not isinstance(data, dict):
            return data
        resources, layout = data.get("resources"), data.get("layout")
        if isinstance(layout, Layout):
            layout = layout.model_dump(exclude_unset=True)
        if not isinstance(layout, dict) or not ({"ranks_per_node", "threads_per_rank"}
                                                & layout.keys()):
            return data
        if isinstance(resources, Resources):
            if "cpus_per_node" in resources.model_fields_set:
                return data
            resources = resources.model_dump(exclude_unset=True)
        if resources is not None and not isinstance(resources, dict):
            return data  # not a mapping: the field's own validation says so (found by fuzzing)
        resources = dict(resources or {})
        if "cpus_per_node" in resources:
            return data
        ranks = layout.get("ranks_per_node") or 1
        threads = layout.get("threads_per_rank") or 1
        if isinstance(ranks, int) and isinstance(threads, int):
            resources["cpus_per_node"] = ranks * threads
        return {**data, "resources": resources}

    @model_validator(mode="after")
    def _layout_fits(self) -> JobSpec:
        threads = self.threads_per_rank
        if self.layout.ranks_per_node * threads > self.resources.cpus_per_node:
            raise ValueError(
                f"ranks-per-node x threads-per-rank = {self.layout.ranks_per_node} x {threads}"
                f" exceeds cpus-per-node = {self.resources.cpus_per_node}"
            )
        if self.kind == "script" and not self.script.strip():
            raise ValueError("script must not be empty for a script job")
        return self

    @property
    def threads_per_rank(self) -> int:
        """Explicit threads per rank, or the node's cores shared among its ranks."""
        if self.layout.threads_per_rank is not None:
            return self.layout.threads_per_rank
        return max(1, self.resources.cpus_per_node // self.layout.ranks_per_node)

    @property
    def total_cpus(self) -> int:
        return self.resources.nodes * self.resources.cpus_per_node


def check_env_key(key: str) -> str:
    """An environment variable name the user may set."""
    if not ENV_KEY_RE.fullmatch(key):
        raise ValueError(f"env key {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
    if key.startswith("SKYPORT_"):
        raise ValueError(f"env key {key!r}: SKYPORT_* variables are set by Sky Port")
    return key


def check_relative_path(path: str, field: str) -> str:
    """A path inside a job's directory: relative, no '..', no empty parts."""
    parts = path.split("/")
    if (
        not path
        or len(path) > MAX_URL_CHARS
        or path.startswith("/")
        or any(p in ("", "..") for p in parts)
        or "\\" in path
        or _ANY_CONTROL.search(path)
    ):
        raise ValueError(
            f"{field} {path[:80]!r} must be a relative path inside the job directory "
            "(no leading '/', no '..', no empty parts, no control characters)"
        )
    return path


class Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    time: datetime
    state: JobState
    reason: str


class Job(BaseModel):
    """What the control plane knows about one job."""

    id: str
    owner: str
    spec: JobSpec
    state: JobState
    reason: str = ""
    exit_code: int | None = None
    submitted_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    gate: str | None = None
    flavor: str | None = None
    price_per_hour: float | None = None  # the whole cluster's, as its gate priced it
    cluster_id: str | None = None
    node_names: list[str] = Field(default_factory=list)
    planned_start_at: datetime | None = None
    planned_start_predicted: bool = False  # planned_start_at rests on predicted runtimes
    restarts: int = 0  # every requeue (the new cluster's suffix, SKYPORT_RESTART_COUNT)
    lost_attempts: list[str] = Field(default_factory=list)  # why each counted restart was
    checkpoint_version: int = 0  # the latest complete checkpoint (0: none)
    # path -> sha256 of each function outcome a live attempt's agent stored: result()
    # unpickles only bytes with the digest recorded here (skyport.decorator)
    result_digests: dict[str, str] = Field(default_factory=dict)
    held: bool = False  # kept out of planning until released (``skyport hold``)
    # a task of a job array (skyport.arrays): its array's id and its own index
    array_id: str | None = None
    array_index: int | None = None
    # why a job that is not running waits: a short code and a sentence (the scheduler's)
    wait_reason: str | None = None
    wait_detail: str | None = None
    events: list[Event] = Field(default_factory=list)

    # in every dump (the REST answers, ``--json``): readers need not dig into the spec
    @computed_field  # type: ignore[prop-decorator]
    @property
    def name(self) -> str:
        return self.spec.name

    @computed_field  # type: ignore[prop-decorator]
    @property
    def nodes(self) -> int:
        return self.spec.resources.nodes

    def cost(self, now: datetime) -> float | None:
        """What its cluster has cost so far: price per hour x hours from start to end."""
        if self.price_per_hour is None or self.started_at is None:
            return None
        hours = max(0.0, ((self.ended_at or now) - self.started_at).total_seconds()) / 3600
        return self.price_per_hour * hours

    def running_spans(self) -> list[tuple[float, float]]:
        """(start, end) in epoch seconds of each attempt's RUNNING stretch, from the events."""
        spans, begin = [], None
        for e in self.events:
            t = e.time.timestamp()
            if e.state == JobState.RUNNING:
                begin = t
            elif begin is not None:
                spans.append((begin, t))
                begin = None
        return spans

    def summary(self) -> dict[str, Any]:
        """The JSON form every door shows (``--json``)."""
        return self.model_dump(mode="json")


class SubmitRequest(BaseModel):
    """Body of ``POST /v1/jobs``: the spec, plus a function payload for function jobs."""

    model_config = ConfigDict(extra="forbid")

    spec: JobSpec
    payload_b64: str | None = Field(None, max_length=64 * 1024 * 1024)
