"""``@skyport.job``: run a Python function as a Sky Port job and get its value back.

::

    @skyport.job(cpus=2, time="10m")
    def square(x: int) -> int:
        return x * x

    square(7)                  # 49, computed here, as without the decorator
    handle = square.submit(7)  # JobHandle[int]: a job on the control plane
    handle.result()            # 49, computed on the job's node

The decorator checks its arguments at once (a bad one raises
``ValidationError`` naming the argument) and builds a ``kind="function"``
``JobSpec`` whose script runs ``skyport.runtime.function`` on the
cloudpickled ``(fn, args, kwargs)``; the server stores that payload as the
job's input ``skyport-payload.pkl`` and the job's output
``skyport-result.pkl`` carries the outcome back.

A layout of more than one rank (``nodes`` x ``ranks_per_node`` > 1) runs the
function on every rank under ``$SKYPORT_MPIEXEC``; each rank's outcome comes
back as ``skyport-results/skyport-result.<rank>.pkl``.  ``result()`` is rank
0's value, ``results()`` every rank's in rank order, and inside the function
``skyport.context()`` tells the rank where it is (``ctx.comm`` for MPI)::

    @skyport.job(nodes=2, ranks_per_node=2, threads_per_rank=1)
    def part(n: int) -> int:
        ctx = skyport.context()
        return ctx.comm.allreduce(ctx.rank * n)

    part.submit(3).results()   # [18, 18, 18, 18]
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

import pydantic

from skyport.client import Client, LogChunk, connect
from skyport.errors import JobFailedError, ValidationError
from skyport.models import NAME_RE, Job, JobSpec, JobState
from skyport.units import DURATION_FORMS, MEM_FORMS, parse_duration_s, parse_mem_mb

__all__ = ["JobFunction", "JobHandle", "job"]

P = ParamSpec("P")
R = TypeVar("R")

PAYLOAD_FILE = "skyport-payload.pkl"
RESULT_FILE = "skyport-result.pkl"
RESULT_STORED_AS = f"outputs/{RESULT_FILE}"

FUNCTION_SCRIPT = f"""\
#!/bin/bash
# Sky Port function job: call the pickled function, store its outcome.
exec "${{SKYPORT_PYTHON:-python3}}" -m skyport.runtime.function {PAYLOAD_FILE} {RESULT_FILE}
"""

RESULTS_DIR = "skyport-results"
"""A multi-rank job's output: one ``skyport-result.<rank>.pkl`` per rank."""

RANKS_SCRIPT = f"""\
#!/bin/bash
# Sky Port function job: call the pickled function on every rank, store each outcome.
exec "$SKYPORT_MPIEXEC" "${{SKYPORT_PYTHON:-python3}}" -m skyport.runtime.function \\
    {PAYLOAD_FILE} {RESULTS_DIR}/
"""

# spec field (the last part of pydantic's error location) -> decorator argument
_ARGUMENT_OF = {
    "name": "name",
    "nodes": "nodes",
    "cpus_per_node": "cpus",
    "mem_mb": "mem",
    "gpus_per_node": "gpus",
    "time_limit_s": "time",
    "ranks_per_node": "ranks_per_node",
    "threads_per_rank": "threads_per_rank",
    "gate": "gate",
    "flavor": "flavor",
    "env": "env",
    "checkpoint_every_s": "checkpoint_every",
    "max_restarts": "max_restarts",
}


@dataclass(frozen=True)
class JobOptions:
    """The decorator's arguments, as given (``spec_for`` checks them)."""

    cpus: int = 2
    time: str | int = "10m"
    nodes: int = 1
    gpus: int = 0
    mem: str | int | None = None
    name: str | None = None
    gate: str | None = None
    flavor: str | None = None
    ranks_per_node: int = 1
    threads_per_rank: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    checkpoint_every: str | int | None = None
    max_restarts: int | None = None
    home: str | Path | None = None
    user: str | None = None


def spec_for(fn: Callable[..., Any], options: JobOptions) -> JobSpec:
    """The ``JobSpec`` of a function job; errors name the decorator argument."""
    given = {
        "cpus": options.cpus,
        "time": options.time,
        "nodes": options.nodes,
        "gpus": options.gpus,
        "mem": options.mem,
        "name": options.name,
        "gate": options.gate,
        "flavor": options.flavor,
        "ranks_per_node": options.ranks_per_node,
        "threads_per_rank": options.threads_per_rank,
        "env": options.env,
        "checkpoint_every": options.checkpoint_every,
        "max_restarts": options.max_restarts,
    }
    ranks = _total_ranks(options)
    data = {
        "name": options.name if options.name is not None else _default_name(fn),
        "kind": "function",
        "script": RANKS_SCRIPT if ranks > 1 else FUNCTION_SCRIPT,
        "resources": {
            "nodes": options.nodes,
            "cpus_per_node": options.cpus,
            "mem_mb": _mem_mb(options.mem),
            "gpus_per_node": options.gpus,
            "time_limit_s": _time_s(options.time),
        },
        "layout": {
            "ranks_per_node": options.ranks_per_node,
            "threads_per_rank": options.threads_per_rank,
        },
        "gate": options.gate,
        "flavor": options.flavor,
        "outputs": (RESULTS_DIR,) if ranks > 1 else (RESULT_FILE,),
        "env": dict(options.env),
        "checkpoint_every_s": _checkpoint_every_s(options.checkpoint_every),
        "max_restarts": _max_restarts(options.max_restarts),
    }
    try:
        return JobSpec.model_validate(data, strict=False)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        loc = [str(p) for p in first["loc"]]
        arg = next((_ARGUMENT_OF[p] for p in reversed(loc) if p in _ARGUMENT_OF), None)
        if arg is None:  # a rule across fields: the layout must fit the node
            arg = "ranks_per_node/threads_per_rank"
            value: Any = (options.ranks_per_node, options.threads_per_rank)
        else:
            value = given[arg]
        raise ValidationError(arg, value, msg) from exc


def _total_ranks(options: JobOptions) -> int:
    """``nodes`` x ``ranks_per_node``, or 1 while they are not valid (the spec says why)."""
    n, r = options.nodes, options.ranks_per_node
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (n, r)):
        return n * r
    return 1


def rank_result_path(rank: int) -> str:
    """Where rank ``rank``'s outcome is stored: ``outputs/skyport-results/...``."""
    return f"outputs/{RESULTS_DIR}/skyport-result.{rank}.pkl"


def _time_s(value: str | int) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValidationError("time", value, "seconds as a number, or " + DURATION_FORMS)
    if isinstance(value, str):
        try:
            return parse_duration_s(value)
        except ValueError as exc:
            raise ValidationError("time", value, DURATION_FORMS) from exc
    if value <= 0:
        raise ValidationError("time", value, "a positive number of seconds")
    return int(value)


def _checkpoint_every_s(value: str | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(
            "checkpoint_every", value, "seconds as a whole number, or " + DURATION_FORMS
        )
    if isinstance(value, str):
        try:
            value = parse_duration_s(value)
        except ValueError as exc:
            raise ValidationError("checkpoint_every", value, DURATION_FORMS) from exc
    if value < 1:
        raise ValidationError("checkpoint_every", value, "at least 1 second")
    return value  # the upper bound is the spec's (its error names this argument too)


def _max_restarts(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValidationError("max_restarts", value, "a whole number of restarts, 0 or more")
    return value  # the range is the spec's


def _mem_mb(value: str | int | None) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if not isinstance(value, str):
        raise ValidationError("mem", value, "MB as a whole number, or " + MEM_FORMS)
    try:
        return parse_mem_mb(value)
    except ValueError as exc:
        raise ValidationError("mem", value, MEM_FORMS) from exc


def _default_name(fn: Callable[..., Any]) -> str:
    raw = getattr(fn, "__name__", "function")
    name = re.sub(r"[^A-Za-z0-9_.-]", "", raw).lstrip("_.-")[:64]
    return name if NAME_RE.match(name) else "function"


class JobHandle(Generic[R]):
    """A submitted function job; ``result()`` waits for it and returns its value."""

    def __init__(self, client: Client, job: Job) -> None:
        self._client = client
        self._job = job

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r}, state={self._job.state.value})"

    @property
    def id(self) -> str:
        return self._job.id

    @property
    def client(self) -> Client:
        return self._client

    def job(self) -> Job:
        """The job as the control plane knows it now (refreshes ``state``)."""
        self._job = self._client.job(self.id)
        return self._job

    @property
    def state(self) -> JobState:
        """The state as of now (asks the control plane unless already terminal)."""
        if not self._job.state.is_terminal():
            self.job()
        return self._job.state

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job is terminal (``WaitTimeoutError`` after ``timeout`` s)."""
        if not self._job.state.is_terminal():
            self._job = self._client.wait(self.id, timeout=timeout)
        return self._job

    def cancel(self) -> Job:
        self._job = self._client.cancel(self.id)
        return self._job

    def logs(self, stream: str = "stdout") -> str:
        """What the job has written to ``stream`` so far."""
        chunks: list[bytes] = []
        offset = 0
        while True:
            chunk: LogChunk = self._client.logs(self.id, stream, offset)
            chunks.append(chunk.data)
            offset += len(chunk.data)
            if not chunk.data or offset >= chunk.size:
                return b"".join(chunks).decode("utf-8", errors="replace")

    @property
    def ranks(self) -> int:
        """How many ranks run the function (``nodes`` x ``ranks_per_node``)."""
        spec = self._job.spec
        return spec.resources.nodes * spec.layout.ranks_per_node

    def result(self, timeout: float | None = None) -> R:
        """Wait for the job and return the function's value (rank 0's in a multi-rank job).

        Raises ``JobFailedError``: with ``remote_type``, ``remote_message`` and
        ``remote_traceback`` if the function raised (on any rank; the message
        names it); naming the state and reason if the job ended without a
        result (cancelled, timed out, ...).
        """
        if self.ranks > 1:
            return self.results(timeout)[0]
        job = self.wait(timeout)
        outcome = self._outcome(job, RESULT_STORED_AS) \
            if job.state is not JobState.CANCELLED else None
        if outcome is None:
            raise self._no_result(job)
        if outcome[0] == "ok":
            return outcome[1]  # type: ignore[no-any-return]
        raise self._remote_error(job, outcome)

    def results(self, timeout: float | None = None) -> list[R]:
        """Wait for the job and return every rank's value, in rank order.

        A rank whose function raised makes this raise ``JobFailedError``
        naming that rank (the lowest, if several did).
        """
        job = self.wait(timeout)
        if self.ranks == 1:
            return [self.result(timeout)]
        outcomes: list[tuple[Any, ...] | None] = [None] * self.ranks
        if job.state is not JobState.CANCELLED:
            stored = {f.path for f in self._client.files(job.id)}
            for rank in range(self.ranks):
                if rank_result_path(rank) in stored:
                    outcomes[rank] = self._outcome(job, rank_result_path(rank))
        for rank, outcome in enumerate(outcomes):
            if outcome is not None and outcome[0] == "error":
                raise self._remote_error(job, outcome, rank)
        missing = [rank for rank, outcome in enumerate(outcomes) if outcome is None]
        if missing:
            raise self._no_result(job, missing)
        return [outcome[1] for outcome in outcomes]  # type: ignore[index]

    def _no_result(self, job: Job, missing: list[int] | None = None) -> JobFailedError:
        which = ""
        if missing and len(missing) < self.ranks:
            which = " from rank" + ("s " if len(missing) > 1 else " ") + \
                ", ".join(map(str, missing))
        return JobFailedError(
            f"job {job.id} ended {job.state.value} without a result{which}"
            + (f": {job.reason}" if job.reason else "")
            + (f" (exit code {job.exit_code})" if job.exit_code is not None else ""),
            job_id=job.id,
            state=job.state.value,
            exit_code=job.exit_code,
        )

    def _remote_error(self, job: Job, outcome: tuple[Any, ...],
                      rank: int | None = None) -> JobFailedError:
        _, remote_type, remote_message, remote_tb = outcome
        where = f" on rank {rank} of {self.ranks}" if rank is not None else ""
        return JobFailedError(
            f"job {job.id} failed{where}: {remote_type}: {remote_message}\n"
            f"remote traceback:\n{remote_tb.rstrip()}",
            job_id=job.id,
            state=job.state.value,
            exit_code=job.exit_code,
            remote_type=remote_type,
            remote_message=remote_message,
            remote_traceback=remote_tb,
        )

    def _outcome(self, job: Job, path: str) -> tuple[Any, ...] | None:
        """The stored ``("ok", v)`` / ``("error", ...)`` tuple at ``path``, or None."""
        if path == RESULT_STORED_AS and path not in {f.path for f in self._client.files(job.id)}:
            return None
        import cloudpickle

        data = self._client.download(job.id, path)
        try:
            outcome = cloudpickle.loads(data)
        except Exception as exc:  # unpickling may need modules this side lacks
            raise JobFailedError(
                f"job {job.id} returned a result that cannot be loaded here: "
                f"{type(exc).__name__}: {exc}",
                job_id=job.id,
                state=job.state.value,
                exit_code=job.exit_code,
            ) from exc
        if not (isinstance(outcome, tuple) and outcome and outcome[0] in ("ok", "error")):
            raise JobFailedError(
                f"job {job.id} stored a malformed result: {type(outcome).__name__}",
                job_id=job.id,
                state=job.state.value,
            )
        return outcome


class JobFunction(Generic[P, R]):
    """A function that can also be submitted as a job (what ``@job`` returns)."""

    def __init__(
        self, fn: Callable[P, R], options: JobOptions, client: Client | None = None
    ) -> None:
        self.fn = fn
        self.options = options
        self.spec = spec_for(fn, options)
        self._client = client
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, as if it were not decorated."""
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # A function that refers to itself by name pickles this object: leave the
        # connection behind, it cannot travel.
        return (JobFunction, (self.fn, self.options))

    def __repr__(self) -> str:
        return f"<skyport job {self.spec.name}: {self.fn!r}>"

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = connect(self.options.home, self.options.user)
        return self._client

    def payload(self, *args: P.args, **kwargs: P.kwargs) -> bytes:
        """The cloudpickled call, as the job receives it."""
        import cloudpickle

        try:
            return cloudpickle.dumps((self.fn, args, kwargs))
        except Exception as exc:
            raise ValidationError(
                "arguments",
                f"{self.spec.name}(...)",
                f"a function and arguments cloudpickle can pickle ({type(exc).__name__}: {exc})",
            ) from exc

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Submit ``fn(*args, **kwargs)`` as a job; returns at once."""
        payload = self.payload(*args, **kwargs)
        client = self.client
        return JobHandle(client, client.submit(self.spec, payload))


@overload
def job(fn: Callable[P, R], /) -> JobFunction[P, R]: ...


@overload
def job(
    *,
    cpus: int = ...,
    time: str | int = ...,
    nodes: int = ...,
    gpus: int = ...,
    mem: str | int | None = ...,
    name: str | None = ...,
    gate: str | None = ...,
    flavor: str | None = ...,
    ranks_per_node: int = ...,
    threads_per_rank: int | None = ...,
    env: Mapping[str, str] | None = ...,
    checkpoint_every: str | int | None = ...,
    max_restarts: int | None = ...,
    home: str | Path | None = ...,
    user: str | None = ...,
    client: Client | None = ...,
) -> Callable[[Callable[P, R]], JobFunction[P, R]]: ...


def job(
    fn: Callable[P, R] | None = None,
    /,
    *,
    cpus: int = 2,
    time: str | int = "10m",
    nodes: int = 1,
    gpus: int = 0,
    mem: str | int | None = None,
    name: str | None = None,
    gate: str | None = None,
    flavor: str | None = None,
    ranks_per_node: int = 1,
    threads_per_rank: int | None = None,
    env: Mapping[str, str] | None = None,
    checkpoint_every: str | int | None = None,
    max_restarts: int | None = None,
    home: str | Path | None = None,
    user: str | None = None,
    client: Client | None = None,
) -> JobFunction[P, R] | Callable[[Callable[P, R]], JobFunction[P, R]]:
    """Make a function submittable as a job: ``@job`` or ``@job(cpus=4, time="2h")``.

    ``cpus`` is per node (default 2), ``time`` a duration (default ``"10m"``; or
    ``"1:30:00"``, or seconds), ``mem`` per node (``"2G"`` or MB).  ``checkpoint_every``
    (a duration like ``"5m"``, or seconds) has Sky Port store the job's checkpoint
    directory that often (``skyport.checkpoint``); ``max_restarts`` is how many times a
    job whose node was lost or preempted is restarted from its latest checkpoint before it
    fails (default: the control plane's).  ``home`` and ``user`` pick the
    control plane and certificate as ``skyport.connect`` does; ``client``
    reuses an existing connection instead.
    """
    if env is not None and not isinstance(env, Mapping):
        raise ValidationError("env", env, "a mapping of KEY to VALUE strings")
    options = JobOptions(
        cpus=cpus,
        time=time,
        nodes=nodes,
        gpus=gpus,
        mem=mem,
        name=name,
        gate=gate,
        flavor=flavor,
        ranks_per_node=ranks_per_node,
        threads_per_rank=threads_per_rank,
        env=dict(env or {}),
        checkpoint_every=checkpoint_every,
        max_restarts=max_restarts,
        home=home,
        user=user,
    )

    def wrap(f: Callable[P, R]) -> JobFunction[P, R]:
        if not callable(f):
            raise ValidationError("fn", f, "a function to decorate")
        return JobFunction(f, options, client)

    if fn is not None:
        return wrap(fn)
    return wrap
