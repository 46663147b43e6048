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
``skyport-result.pkl`` carries the outcome back (``skyport.runtime.contract``
names these files).  The job options are the option table's
(``skyport.options``): the ``#SKYPORT`` directives, as keyword arguments.

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
import hashlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

from skyport.arrays import MAX_ARRAY_SIZE
from skyport.client import Client, LogChunk, connect
from skyport.errors import JobFailedError, ValidationError
from skyport.models import NAME_RE, Job, JobSpec, JobState
from skyport.options import (
    ARGUMENTS,
    OPTIONS,
    PYTHON_TYPES,
    Blame,
    parse_value,
    set_target,
    unknown_argument,
    validate_spec,
)
from skyport.runtime.contract import (
    FUNCTION_SCRIPT,
    RANKS_SCRIPT,
    RESULT_FILE,
    RESULT_STORED_AS,
    RESULTS_DIR,
    rank_result_path,
)

__all__ = [
    "FUNCTION_SCRIPT",
    "RANKS_SCRIPT",
    "JobFunction",
    "JobHandle",
    "JobOptions",
    "job",
    "rank_result_path",
]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULTS: Mapping[str, Any] = {"cpus_per_node": 2, "time": "10m"}
"""A function job's own defaults (by argument), where they differ from a script job's."""

CONNECTION = ("home", "user")
"""Arguments that pick the control plane, not the job."""


@dataclass(frozen=True)
class JobOptions:
    """A function job's options, as given: each by the name the caller used.

    ``arguments`` keys are table arguments or their aliases (``cpus`` for
    ``cpus_per_node``); ``spec_for`` checks the values.
    """

    arguments: Mapping[str, Any] = field(default_factory=dict)
    home: str | Path | None = None
    user: str | None = None

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> JobOptions:
        """Options from the decorator's keywords; an unknown one lists the known ones."""
        return cls().merged(kwargs)

    def merged(self, kwargs: Mapping[str, Any]) -> JobOptions:
        """These options with ``kwargs`` on top (``None`` drops an option)."""
        arguments = dict(self.arguments)
        connection: dict[str, Any] = {"home": self.home, "user": self.user}
        for name, value in kwargs.items():
            if name in CONNECTION:
                connection[name] = value
                continue
            opt = ARGUMENTS.get(name)
            if opt is None:
                raise unknown_argument(name, [*ARGUMENTS, *CONNECTION, "client"])
            spellings = (opt.argument, *opt.aliases)
            clash = [n for n in spellings if n in kwargs and n != name]
            if clash:
                raise ValidationError(
                    name, value, f"one name per option: {clash[0]!r} means the same"
                )
            for spelling in spellings:  # a new value replaces the old, however spelt
                arguments.pop(spelling, None)
            if value is not None:
                arguments[name] = value
        return JobOptions(arguments, **connection)

    def given(self, argument: str) -> tuple[str, Any] | None:
        """``(name as given, value)`` of a table argument, or None if not given."""
        opt = ARGUMENTS[argument]
        for spelling in (opt.argument, *opt.aliases):
            if spelling in self.arguments:
                return spelling, self.arguments[spelling]
        return None


def spec_for(fn: Callable[..., Any], options: JobOptions) -> JobSpec:
    """The ``JobSpec`` of a function job; errors name the decorator argument."""
    data: dict[str, Any] = {"name": _default_name(fn), "kind": "function"}
    origin: dict[str, Blame] = {}
    for opt in OPTIONS.values():
        if not opt.python:
            continue
        given = options.given(opt.argument)
        if given is None:
            if opt.argument not in DEFAULTS:
                continue
            given = (opt.argument, DEFAULTS[opt.argument])
        name, value = given
        set_target(data, opt, parse_value(opt, value, name, base_dir=Path.cwd()))
        origin[opt.field] = Blame(name, value)
    ranks = _total_ranks(data)
    data["script"] = RANKS_SCRIPT if ranks > 1 else FUNCTION_SCRIPT
    for path in data.get("outputs", ()):
        if path.split("/")[0] in (RESULT_FILE, RESULTS_DIR):
            name, _ = options.given("outputs") or ("outputs", None)
            raise ValidationError(
                name, path, f"a path other than {RESULT_FILE} and {RESULTS_DIR}/ "
                "(where the function's result goes)"
            )
    # the result comes back as an output, ahead of the function's own
    data["outputs"] = [RESULTS_DIR if ranks > 1 else RESULT_FILE, *data.get("outputs", ())]
    layout = [options.given(a) or (a, None) for a in ("ranks_per_node", "threads_per_rank")]
    across = Blame("/".join(a for a, _ in layout), tuple(v for _, v in layout))
    return validate_spec(data, origin, across)


def _total_ranks(data: Mapping[str, Any]) -> int:
    """``nodes`` x ``ranks_per_node``, or 1 while they are not valid (the spec says why)."""
    n = data.get("resources", {}).get("nodes", 1)
    r = data.get("layout", {}).get("ranks_per_node", 1)
    if all(isinstance(v, int) and v >= 1 for v in (n, r)):
        return int(n * r)
    return 1


def _default_name(fn: Callable[..., Any]) -> str:
    raw = getattr(fn, "__name__", "function")
    name = re.sub(r"[^A-Za-z0-9_.-]", "", raw).lstrip("_.-")[:64]
    return name if NAME_RE.match(name) else "function"


# the reason a job cancelled for its dependency ends with (skyport.core.dependencies)
_UPSTREAM_ENDED = re.compile(r"dependency (\S+) (?:ended (\S+)|no longer exists)")


class JobHandle(Generic[R]):
    """A submitted function job; ``result()`` waits for it and returns its value."""

    def __init__(self, client: Client, job: Job) -> None:
        self._client = client
        self._job = job

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r}, state={self._job.state.value})"

    def __reduce__(self) -> tuple[Any, ...]:
        # a connection cannot travel; a handle stands for its job's value only as a
        # top-level argument of submit(), which puts a stand-in in its place
        raise TypeError(f"job handle {self.id} can be passed to submit() only as a top-level "
                        "argument (not inside a list, a dict or another object)")

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
            value: R = outcome[1]
            return value
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
        upstream = _UPSTREAM_ENDED.fullmatch(job.reason) \
            if job.state is JobState.CANCELLED else None
        if upstream is not None:
            return JobFailedError(
                f"upstream job {upstream[1]} failed ("
                + (f"it ended {upstream[2]}" if upstream[2] else "it no longer exists")
                + f"): job {job.id} was cancelled without running ({job.reason})",
                job_id=job.id, state=job.state.value, exit_code=job.exit_code)
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
        expected = job.result_digests.get(path)
        if expected is None or hashlib.sha256(data).hexdigest() != expected:
            # never unpickle bytes the job's live attempt did not store: pickles run code
            why = "no digest was recorded for it" if expected is None else \
                "its digest differs from the one recorded when the job stored it"
            raise JobFailedError(
                f"job {job.id}: refusing to load {path}: {why} (written outside the job's "
                "run, or changed since)",
                job_id=job.id,
                state=job.state.value,
                exit_code=job.exit_code,
            )
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
        self.job_options = options
        self.spec = spec_for(fn, options)
        self._client = client
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, as if it were not decorated."""
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # A function that refers to itself by name pickles this object: leave the
        # connection behind, it cannot travel.
        return (JobFunction, (self.fn, self.job_options))

    def __repr__(self) -> str:
        return f"<skyport job {self.spec.name}: {self.fn!r}>"

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = connect(self.job_options.home, self.job_options.user)
        return self._client

    def options(self, *, client: Client | None = None, **overrides: Any) -> JobFunction[P, R]:
        """The same function with some job options changed, checked at once.

        ``square.options(cpus=8, time="1h").submit(7)``: the keywords are the
        decorator's (``None`` goes back to the default); this function is unchanged.
        """
        job_options = self.job_options.merged(overrides)
        return JobFunction(self.fn, job_options, client or self._client)

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
        """Submit ``fn(*args, **kwargs)`` as a job; returns at once.

        A ``JobHandle`` among the arguments (top level, positional or keyword)
        stands for that job's value: this job waits for it (``afterok``) and
        its function receives the value, staged by the control plane; if that
        job fails, this one is cancelled and its ``result()`` says "upstream
        job ... failed".
        """
        upstream = list(dict.fromkeys(
            a.id for a in (*args, *kwargs.values()) if isinstance(a, JobHandle)))
        spec = self.spec
        if upstream:
            from skyport.runtime.contract import upstream_url
            from skyport.runtime.upstream import UpstreamResult

            def stand_in(a: Any) -> Any:
                return UpstreamResult(a.id) if isinstance(a, JobHandle) else a

            args = tuple(stand_in(a) for a in args)  # type: ignore[assignment]
            kwargs = {k: stand_in(v) for k, v in kwargs.items()}  # type: ignore[assignment]
            after = "afterok:" + ":".join(upstream)
            spec = validate_spec({
                **spec.model_dump(),
                "dependency": f"{spec.dependency},{after}" if spec.dependency else after,
                "inputs": [*spec.inputs, *(upstream_url(i) for i in upstream)],
            })
        payload = self.payload(*args, **kwargs)
        client = self.client
        return JobHandle(client, client.submit(spec, payload))

    def map(self, items: Iterable[Any], *, max_running: int | None = None) -> list[JobHandle[R]]:
        """Submit ``fn(item)`` for every item as ONE job array, in one call.

        Returns a handle per item, in order (task ``i`` of the array runs
        ``fn(items[i])`` and sees ``SKYPORT_ARRAY_TASK_ID=i``); ``max_running``
        runs at most that many at once (``--array=...%N``).
        """
        if max_running is not None and (isinstance(max_running, bool)
                                        or not isinstance(max_running, int) or max_running < 1):
            raise ValidationError("max_running", max_running, "a whole number >= 1, or None")
        payloads = [self.payload(item) for item in items]  # type: ignore[call-arg]
        if not payloads:
            return []
        if len(payloads) > MAX_ARRAY_SIZE:
            raise ValidationError("items", f"{len(payloads)} items",
                                  f"at most {MAX_ARRAY_SIZE} in one map (one job array)")
        text = f"0-{len(payloads) - 1}" + (f"%{max_running}" if max_running else "")
        spec = self.spec.model_copy(update={"array": text})
        client = self.client
        view = client.submit_array(spec, payloads)
        now = datetime.fromisoformat(view.submitted_at)
        return [JobHandle(client, Job(id=f"{view.id}_{i}", owner=view.owner, spec=spec,
                                      state=JobState.QUEUED, submitted_at=now,
                                      array_id=view.id, array_index=i))
                for i in view.indices]


@overload
def job(fn: Callable[P, R], /) -> JobFunction[P, R]: ...


@overload
def job(
    *, client: Client | None = ..., **options: Any
) -> Callable[[Callable[P, R]], JobFunction[P, R]]: ...


def job(
    fn: Callable[P, R] | None = None,
    /,
    *,
    client: Client | None = None,
    **options: Any,
) -> JobFunction[P, R] | Callable[[Callable[P, R]], JobFunction[P, R]]:
    """Make a function submittable as a job: ``@job`` or ``@job(cpus=4, time="2h")``.

    Every ``#SKYPORT`` option is a keyword argument (``skyport.options`` has
    the table): its name with ``_`` for ``-``, ``inputs``/``outputs`` for
    ``--input``/``--output`` and ``max_price`` for ``--max-price``; ``cpus``
    and ``gpus`` are short for ``cpus_per_node`` and ``gpus_per_node``.
    ``cpus_per_node`` defaults to 2 and ``time`` to ``"10m"``.  A duration is
    text (``"10m"``, ``"1:30:00"``) or seconds, ``mem`` text (``"2G"``) or MB,
    ``env`` a dict, ``inputs``/``outputs`` lists (a plain input path is
    relative to the current directory); ``outputs`` are stored beside the
    function's result.  ``checkpoint_every`` has Sky Port store the job's
    checkpoint directory that often (``skyport.checkpoint``); ``max_restarts``
    is how many times a job whose node was lost or preempted is restarted from
    its latest checkpoint before it fails (default: the control plane's).
    ``home`` and ``user`` pick the control plane and certificate as
    ``skyport.connect`` does; ``client`` reuses an existing connection instead.

    Every argument is checked at once, with the parser ``skyport submit`` uses:
    a bad value raises ``ValidationError`` naming the argument, the value and
    what is allowed; an unknown keyword lists the known ones.
    """
    job_options = JobOptions.of(options)
    spec_for(_check_only, job_options)  # bad options fail here, not when a function comes

    def wrap(f: Callable[P, R]) -> JobFunction[P, R]:
        if not callable(f):
            raise ValidationError("fn", f, "a function to decorate")
        return JobFunction(f, job_options, client)

    if fn is not None:
        return wrap(fn)
    return wrap


def _check_only() -> None:
    """Stands in for the function while the decorator's arguments are checked."""


def _signature() -> inspect.Signature:
    """``job``'s signature as ``help()`` and IDEs show it, generated from the option table."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("fn", inspect.Parameter.POSITIONAL_ONLY, default=None,
                          annotation="Callable[P, R] | None"),
    ]
    for name, opt in ARGUMENTS.items():
        params.append(inspect.Parameter(
            name, kw, default=DEFAULTS.get(name), annotation=PYTHON_TYPES[opt.kind] + " | None"
        ))
    params += [
        inspect.Parameter("home", kw, default=None, annotation="str | Path | None"),
        inspect.Parameter("user", kw, default=None, annotation="str | None"),
        inspect.Parameter("client", kw, default=None, annotation="Client | None"),
    ]
    return inspect.Signature(params, return_annotation="JobFunction[P, R]")


def _arguments_doc() -> str:
    rows = []
    for opt in OPTIONS.values():
        if not opt.python:
            continue
        names = ", ".join((opt.argument, *opt.aliases))
        rows.append(f"    {names}: {PYTHON_TYPES[opt.kind]} -- {opt.help} (--{opt.directive})")
    return "\n\nJob options, one per ``#SKYPORT`` directive::\n\n" + "\n".join(rows) + "\n"


job.__signature__ = _signature()  # type: ignore[attr-defined]
job.__doc__ = (job.__doc__ or "") + _arguments_doc()
