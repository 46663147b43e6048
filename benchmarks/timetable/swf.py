"""Read Standard Workload Format (SWF) traces.

Conventions (see ``../shared/traces/README.md``): processors are field 5, or
field 8 where 5 is missing; the requested time is field 9, or the runtime
where 9 is missing; jobs with a runtime < 0, processors <= 0 or wider than
MaxProcs are dropped; the capacity is MaxProcs, or MaxNodes where MaxProcs is
absent (or, failing both, the widest job). Jobs are sorted by submit time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Trace", "TraceError", "TraceJob", "read_swf"]


class TraceError(ValueError):
    """A trace that cannot be read."""


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace, after the conventions above."""

    id: int
    submit_s: float
    run_s: float
    procs: int
    req_s: float
    user: str


@dataclass(frozen=True)
class Trace:
    """The jobs of a trace and the machine they ran on."""

    name: str
    capacity: int
    jobs: tuple[TraceJob, ...]
    dropped: int = 0


def read_swf(path: str | Path) -> Trace:
    """Read an SWF file."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"--trace: {str(path)!r} is not a readable file; give an SWF trace path")
    header: dict[str, str] = {}
    rows: list[list[str]] = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith(";"):
                key, sep, value = line[1:].partition(":")
                if sep:
                    header[key.strip()] = value.strip()
                continue
            fields = line.split()
            if fields:
                rows.append(fields)
    max_procs = _header_int(header, "MaxProcs")
    max_nodes = _header_int(header, "MaxNodes")
    jobs: list[TraceJob] = []
    dropped = 0
    for fields in rows:
        if len(fields) < 12:
            raise TraceError(
                f"--trace: {path.name}: line {fields!r} has {len(fields)} fields; SWF has 18"
            )
        run = float(fields[3])
        procs = int(float(fields[4]))
        if procs <= 0:
            procs = int(float(fields[7]))
        req = float(fields[8])
        if req <= 0:
            req = run
        if run < 0 or procs <= 0 or (max_procs is not None and procs > max_procs):
            dropped += 1
            continue
        jobs.append(TraceJob(int(fields[0]), float(fields[1]), run, procs, req, fields[11]))
    if not jobs:
        raise TraceError(f"--trace: {path.name} has no usable jobs")
    capacity = max_procs or max_nodes or max(job.procs for job in jobs)
    wide = sum(1 for job in jobs if job.procs > capacity)
    if wide:
        jobs = [job for job in jobs if job.procs <= capacity]
        dropped += wide
    jobs.sort(key=lambda job: job.submit_s)
    return Trace(path.name, capacity, tuple(jobs), dropped)


def _header_int(header: dict[str, str], key: str) -> int | None:
    value = header.get(key)
    if value is None:
        return None
    try:
        number = int(float(value.split()[0]))
    except (ValueError, IndexError):
        return None
    return number if number > 0 else None
