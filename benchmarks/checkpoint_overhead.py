"""Checkpoint overhead: the MPI checkpoint counter through a node loss and a preemption.

    python -m benchmarks.checkpoint_overhead [--seed 1] [--cpus 8] [--json]

On a fresh control plane of its own (local gate, a temporary state directory)
it submits ``examples/checkpoint-counter`` twice: one copy runs undisturbed
beside the other, under the same load, and its running time is the
uninterrupted time; the other loses a node once it has stored a checkpoint,
and is preempted once its second attempt has stored one (after a random
delay, seeded).  It prints:

* the uninterrupted time, and the disturbed job's time from its first start
  to its end, and its running time (all its attempts together);
* each restart's overhead, from the end of an attempt's RUNNING stretch to
  RUNNING again, in two parts: the lost attempt wound up (its cluster deleted)
  and requeued, then requeued -> RUNNING; and the time from the injected
  failure to the requeue;
* the bound that the integration test used to assert, uninterrupted + two
  checkpoint intervals + the restart overheads, which the disturbed job's
  first-start-to-end time is expected to stay under.  A wall-clock bound
  depends on the machine's load, so it is a figure here and not a test:
  ``tests/integration/test_checkpoint.py`` runs the same scenario
  (:func:`kill_and_preempt`) and checks only what it must do.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from skyport.client import Client, connect
from skyport.config import StateDir
from skyport.controlplane import init_state, start, stop
from skyport.models import Job, JobSpec, JobState
from skyport.protocol import CheckpointRecord
from skyport.script import build_spec, cli_directives

EXAMPLE = Path(__file__).parents[1] / "examples" / "checkpoint-counter"
# what examples/checkpoint-counter/job.sh says: N steps of STEP_S, a checkpoint every EVERY_S
N, STEP_S, EVERY_S = 60, 0.25, 5


def counter_spec(name: str) -> JobSpec:
    """The example's job, its program attached as an input, under ``name``."""
    script = (EXAMPLE / "job.sh").read_text()
    if f"counter.py {N} {STEP_S}" not in script:
        raise ValueError(f"{EXAMPLE / 'job.sh'} no longer runs counter.py {N} {STEP_S}")
    program = (EXAMPLE / "counter.py").as_uri()
    spec = build_spec(script, cli_directives([("input", program), ("name", name)]))
    if (spec.resources.nodes, spec.checkpoint_every_s) != (2, EVERY_S):
        raise ValueError(f"{EXAMPLE / 'job.sh'}: expected 2 nodes and a checkpoint every "
                         f"{EVERY_S}s, got {spec.resources.nodes} and {spec.checkpoint_every_s}")
    return spec


def wait_for(client: Client, job_id: str, pred: Callable[[Job], bool],
             timeout: float = 180) -> Job:
    """Poll ``job_id`` until ``pred`` holds; TimeoutError lists its events if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if pred(job):
            return job
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} after {timeout}s: "
                               f"{[(e.state.value, e.reason) for e in job.events]}")
        time.sleep(0.2)


def wait_running(client: Client, job_id: str, attempt: int, timeout: float = 180) -> Job:
    """Wait until attempt ``attempt`` (0 = the first) of ``job_id`` is RUNNING."""
    return wait_for(client, job_id,
                    lambda j: j.state == JobState.RUNNING and j.restarts == attempt, timeout)


def wait_counting(client: Client, job_id: str, attempt: int, timeout: float = 180) -> int:
    """Wait until rank 0 of attempt ``attempt`` says where it starts; the latest checkpoint
    version then (0: none)."""
    deadline = time.monotonic() + timeout
    while f"attempt {attempt} starts".encode() not in client.logs(job_id).data:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id}: attempt {attempt} did not start counting "
                               f"after {timeout}s: {client.job(job_id).events}")
        time.sleep(0.2)
    latest = client.checkpoints(job_id).latest
    return latest.version if latest is not None else 0


def wait_checkpointed(client: Client, job_id: str, version: int,
                      timeout: float = 120) -> CheckpointRecord:
    """Wait until checkpoint ``version`` (or a later one) of ``job_id`` is stored."""
    deadline = time.monotonic() + timeout
    while True:
        latest = client.checkpoints(job_id).latest
        if latest is not None and latest.version >= version:
            return latest
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id}: no checkpoint v{version} after {timeout}s: "
                               f"{client.job(job_id).events}")
        time.sleep(0.2)


@dataclass(frozen=True)
class Scenario:
    """Both jobs, ended, and when the failures were injected (epoch seconds)."""

    plain: Job
    disturbed: Job
    killed_at: float
    preempted_at: float


def kill_and_preempt(client: Client, rng: random.Random) -> Scenario:
    """Run the counter undisturbed beside a copy that loses node 1, then is preempted."""
    plain = client.submit(counter_spec("counter-plain"))
    job = client.submit(counter_spec("counter-failures"))
    wait_running(client, job.id, 0)
    # the ranks count (their start-up is slow on a loaded machine), and a checkpoint taken
    # since holds some of it
    wait_checkpointed(client, job.id, wait_counting(client, job.id, 0) + 1)
    time.sleep(rng.uniform(0, 3))
    killed_at = time.time()
    client.debug_kill_node(job.id)  # node 1
    wait_running(client, job.id, 1)
    # this attempt counts and has stored a checkpoint
    wait_checkpointed(client, job.id, wait_counting(client, job.id, 1) + 1, timeout=120)
    time.sleep(rng.uniform(0, 3))
    preempted_at = time.time()
    client.debug_preempt(job.id, notice_s=10)
    wait_running(client, job.id, 2)
    # waits, not bounds: on a loaded machine every step of the counter is slower
    disturbed = client.wait(job.id, timeout=300)
    return Scenario(client.wait(plain.id, timeout=180), disturbed, killed_at, preempted_at)


@dataclass(frozen=True)
class Overhead:
    """What the failures cost, in seconds; lists have one entry per restart."""

    uninterrupted_s: float
    first_start_to_end_s: float
    running_s: float
    restart_gaps_s: list[float]
    wound_up_s: list[float]
    requeued_to_running_s: list[float]
    failure_to_requeued_s: list[float]
    bound_s: float

    @classmethod
    def of(cls, s: Scenario) -> Overhead:
        (b0, b1), = s.plain.running_spans()
        runs = s.disturbed.running_spans()
        if len(runs) != 3:
            raise ValueError(f"expected 3 attempts of job {s.disturbed.id}, got spans {runs}")
        queued = [e.time.timestamp() for e in s.disturbed.events
                  if e.state == JobState.QUEUED][1:]
        gaps = [runs[k + 1][0] - runs[k][1] for k in range(2)]
        uninterrupted = b1 - b0
        return cls(
            uninterrupted_s=uninterrupted,
            first_start_to_end_s=runs[-1][1] - runs[0][0],
            running_s=sum(b - a for a, b in runs),
            restart_gaps_s=gaps,
            wound_up_s=[queued[k] - runs[k][1] for k in range(2)],
            requeued_to_running_s=[runs[k + 1][0] - queued[k] for k in range(2)],
            failure_to_requeued_s=[queued[0] - s.killed_at, queued[1] - s.preempted_at],
            bound_s=uninterrupted + 2 * EVERY_S + sum(gaps),
        )

    def table(self) -> str:
        def r(xs: list[float]) -> list[float]:
            return [round(x, 2) for x in xs]

        within = "within" if self.first_start_to_end_s < self.bound_s else "OVER"
        return (
            f"mpi counter, 2 nodes x 1 rank, N={N} steps of {STEP_S}s, checkpoint every "
            f"{EVERY_S}s\n"
            f"  uninterrupted (the same job beside it): {self.uninterrupted_s:.2f}s\n"
            f"  node loss + preemption: first start to end {self.first_start_to_end_s:.2f}s, "
            f"running {self.running_s:.2f}s\n"
            f"  restart overheads {r(self.restart_gaps_s)}s = wound up {r(self.wound_up_s)}s"
            f" + requeued -> RUNNING {r(self.requeued_to_running_s)}s\n"
            f"  failure injected -> requeued {r(self.failure_to_requeued_s)}s\n"
            f"  uninterrupted + 2 x {EVERY_S}s + overheads = {self.bound_s:.2f}s ({within})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="seeds the delays before failures")
    parser.add_argument("--cpus", type=int, default=8, help="the local gate's CPUs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the state directory")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # a short path: Ray's Unix sockets live below it and are limited to 107 bytes
    home = Path(tempfile.mkdtemp(prefix="sp-ckb-", dir="/tmp"))
    state = StateDir(home)
    init_state(state, local_cpus=args.cpus)
    start(state)
    try:
        with connect(home) as client:
            scenario = kill_and_preempt(client, random.Random(args.seed))
        for job in (scenario.plain, scenario.disturbed):
            if job.state != JobState.SUCCEEDED:
                print(f"job {job.id} ended {job.state.value}: {job.reason}")
                return 1
        overhead = Overhead.of(scenario)
        if args.json:
            print(json.dumps(asdict(overhead), indent=2))
        else:
            print(overhead.table())
            for e in scenario.disturbed.events:
                print(" ", e.time.strftime("%H:%M:%S.%f")[:-3], e.state.value, e.reason)
    finally:
        stop(state)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
