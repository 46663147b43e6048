"""The launch registry: commands one node of a job asks another node's agent to run.

This is how ``mpiexec`` on node 0 starts MPI daemons on node k without ssh:
the rsh relay on node 0 asks its agent, which asks the Core (``create``);
node k's agent picks the launch up (``claim``), runs it, sends its output
(``append``) and its exit code (``finish``); node 0's agent reads them
(``read``) and hands them to the relay.  A cancelled launch (the relay went
away, the job is stopping) shows up in node k's next ``claim`` as a cancel.

Everything lives in the Core's memory, keyed by job: launches die with their
job (``drop_job``), and a restarted control plane simply has none, which is
right, because the processes they describe died with their cluster.  The
registry is synchronous and does no I/O; the service wraps it with waiting.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

from skyport.errors import ConflictError, NotFoundError, ValidationError

__all__ = ["Launch", "LaunchRegistry", "MAX_LIVE_LAUNCHES", "MAX_OUTPUT_BYTES"]

MAX_LIVE_LAUNCHES = 4096
"""Unfinished launches one job may have at once."""
MAX_OUTPUT_BYTES = 8 * 1024 * 1024
"""Unread output kept per launch and stream; beyond it the oldest bytes are dropped."""

Stream = Literal["stdout", "stderr"]
OPS = ("run", "stage_in", "stage_out", "fetch")  # skyport.protocol.LaunchOp
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")


@dataclass
class Launch:
    id: str
    job_id: str
    node: int
    argv: list[str]
    env: dict[str, str]
    cwd: str
    op: str = "run"  # skyport.protocol.LaunchOp
    state: Literal["pending", "running", "done"] = "pending"
    exit_code: int | None = None
    cancelled: bool = False
    cancel_sent: bool = False
    # per stream: the bytes not yet read, and the absolute offset of their first byte
    buffers: dict[str, bytearray] = field(default_factory=lambda: {s: bytearray() for s in STREAMS})
    bases: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))

    def order(self) -> dict[str, Any]:
        """What node k's agent needs to start it."""
        return {"launch_id": self.id, "argv": self.argv, "env": self.env, "cwd": self.cwd,
                "op": self.op}

    def size(self, stream: str) -> int:
        return self.bases[stream] + len(self.buffers[stream])


class LaunchRegistry:
    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, Launch]] = {}
        self._versions: dict[str, int] = {}
        self._ids = itertools.count(1)

    # -- bookkeeping --------------------------------------------------------------

    def version(self, job_id: str) -> int:
        """Grows on every change to the job's launches (waiters compare it)."""
        return self._versions.get(job_id, 0)

    def _changed(self, job_id: str) -> None:
        self._versions[job_id] = self._versions.get(job_id, 0) + 1

    def jobs(self) -> list[str]:
        return list(self._jobs)

    def get(self, job_id: str, launch_id: str) -> Launch:
        launch = self._jobs.get(job_id, {}).get(launch_id)
        if launch is None:
            raise NotFoundError(f"job {job_id} has no launch {launch_id}")
        return launch

    def drop_job(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._changed(job_id)

    # -- node 0's side -------------------------------------------------------------

    def create(
        self, job_id: str, node: int, num_nodes: int, argv: list[str], env: dict[str, str],
        cwd: str, op: str = "run",
    ) -> Launch:
        if op not in OPS:
            raise ValidationError("op", op, "one of " + ", ".join(OPS))
        if not 0 <= node < num_nodes:
            raise ValidationError("node", node, f"a node rank 0..{num_nodes - 1}")
        if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise ValidationError("argv", argv, "a non-empty list of strings without NUL")
        launches = self._jobs.setdefault(job_id, {})
        live = sum(1 for la in launches.values() if la.state != "done")
        if live >= MAX_LIVE_LAUNCHES:
            raise ConflictError(
                f"job {job_id} already has {live} unfinished launches (at most {MAX_LIVE_LAUNCHES})"
            )
        launch = Launch(
            id=f"L{next(self._ids)}",
            job_id=job_id,
            node=node,
            argv=list(argv),
            env=dict(env),
            cwd=cwd,
            op=op,
        )
        launches[launch.id] = launch
        self._changed(job_id)
        return launch

    def read(self, job_id: str, launch_id: str, offsets: dict[str, int]) -> dict[str, Any]:
        """Output from ``offsets`` on (what is before them is forgotten), and the exit code.

        ``exit_code`` is only given once every byte has been read, so a reader
        that stops at the exit code has seen all of the output.
        """
        launch = self.get(job_id, launch_id)
        answer: dict[str, Any] = {"state": launch.state}
        drained = True
        for s in STREAMS:
            want = max(offsets.get(s, 0), launch.bases[s])
            buf = launch.buffers[s]
            cut = min(want - launch.bases[s], len(buf))
            del buf[:cut]
            launch.bases[s] += cut
            answer[s] = bytes(buf)
            answer[f"{s}_offset"] = launch.bases[s]
            drained = drained and not buf
        answer["exit_code"] = launch.exit_code if launch.state == "done" and drained else None
        if answer["exit_code"] is not None:
            self._jobs.get(job_id, {}).pop(launch_id, None)  # delivered: forget it
        return answer

    def cancel(self, job_id: str, launch_id: str) -> None:
        launch = self._jobs.get(job_id, {}).get(launch_id)
        if launch is None:
            return
        if launch.state == "pending":
            launch.state, launch.exit_code = "done", 128 + 15
            self._jobs[job_id].pop(launch_id, None)
        elif launch.state == "running":
            launch.cancelled = True
        self._changed(job_id)

    # -- node k's side -------------------------------------------------------------

    def claim(self, job_id: str, node: int) -> dict[str, list[Any]]:
        """Pending launches for ``node`` (now running) and launches to kill there."""
        start, cancel = [], []
        for launch in self._jobs.get(job_id, {}).values():
            if launch.node != node:
                continue
            if launch.state == "pending":
                launch.state = "running"
                start.append(launch.order())
            elif launch.cancelled and not launch.cancel_sent and launch.state == "running":
                launch.cancel_sent = True
                cancel.append(launch.id)
        if start or cancel:
            self._changed(job_id)
        return {"start": start, "cancel": cancel}

    def has_work(self, job_id: str, node: int) -> bool:
        return any(
            la.node == node
            and (
                la.state == "pending"
                or (la.cancelled and not la.cancel_sent and la.state == "running")
            )
            for la in self._jobs.get(job_id, {}).values()
        )

    def append(
        self, job_id: str, launch_id: str, node: int, stream: str, offset: int, data: bytes
    ) -> int:
        """Store output found at ``offset`` of ``stream``; a resent chunk is stored once."""
        if stream not in STREAMS:
            raise ValidationError("stream", stream, "stdout or stderr")
        launch = self._own(job_id, launch_id, node)
        end = launch.size(stream)
        if offset > end:
            raise ValidationError("offset", offset, f"at most {end} (the size so far)")
        new = data[end - offset :]
        if new:
            buf = launch.buffers[stream]
            buf += new
            if len(buf) > MAX_OUTPUT_BYTES:  # nobody reads: keep the newest
                drop = len(buf) - MAX_OUTPUT_BYTES
                del buf[:drop]
                launch.bases[stream] += drop
            self._changed(job_id)
        return launch.size(stream)

    def finish(self, job_id: str, launch_id: str, node: int, exit_code: int) -> None:
        launch = self._own(job_id, launch_id, node)
        if launch.state != "done":
            launch.state, launch.exit_code = "done", exit_code
            if launch.cancelled:  # its reader is gone: nobody will collect it
                self._jobs[job_id].pop(launch_id, None)
            self._changed(job_id)

    def _own(self, job_id: str, launch_id: str, node: int) -> Launch:
        launch = self.get(job_id, launch_id)
        if launch.node != node:
            raise ValidationError(
                "node", node, f"the node launch {launch_id} runs on ({launch.node})"
            )
        return launch
