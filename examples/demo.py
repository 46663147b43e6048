"""The main job on the embedded default: `make demo`.

Sets up a state directory (``$SKYPORT_HOME``, default ``.demo-home`` in the
repository), starts the control plane (local Ray, Core, Scheduler, the local
gate and the REST API over mutual TLS), submits a 2-node hybrid MPI + OpenMP
job and a decorated Python function, shows their progress, prints their
results and stops the control plane again.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import skyport
from skyport.cli.render import JOB_HEADERS, job_rows, table
from skyport.config import StateDir
from skyport.controlplane import init_state, is_running, start, stop
from skyport.models import JobState
from skyport.script import build_spec

HERE = Path(__file__).resolve().parent
HOME = Path(os.environ.get("SKYPORT_HOME") or HERE.parent / ".demo-home")
os.environ["SKYPORT_HOME"] = str(HOME)


@skyport.job(cpus=2, time="5m", name="monte-carlo-pi")
def estimate_pi(samples: int, seed: int) -> float:
    """Runs on a node of its own cluster; the value comes back through storage."""
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


def progress(client: skyport.Client, ids: list[str], timeout_s: float = 300) -> None:
    """One status line, rewritten in place, until every job is done."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [client.job(i) for i in ids]
        line = "  ".join(f"{j.name}: {j.state.value}" for j in jobs)
        print(f"\r{line:<100}", end="", flush=True)
        if all(j.state.is_terminal() for j in jobs):
            print()
            return
        if time.monotonic() > deadline:
            print()
            raise SystemExit(f"the jobs did not finish within {timeout_s:.0f} s")
        time.sleep(0.5)


def main() -> int:
    state = StateDir(HOME)
    if not state.exists():
        # 8 virtual cores: two 4-core nodes even on a 2-core laptop (they then share cores)
        info = init_state(state, local_cpus=8)
        print(f"initialised {info['home']} (CA, certificates, config, storage)")
    started_here = not is_running(state)
    if started_here:
        print("starting the control plane (local Ray, Core, Scheduler, local gate, REST API)...")
        print(f"  listening on {start(state)['url']}")
    try:
        with skyport.connect() as client:
            hybrid = client.submit(
                build_spec((HERE / "hybrid" / "job.sh").read_text(), base_dir=HERE / "hybrid")
            )
            print(f"submitted {hybrid.id}: examples/hybrid/job.sh "
                  f"({hybrid.spec.resources.nodes} nodes x {hybrid.spec.layout.ranks_per_node} "
                  f"ranks x {hybrid.spec.threads_per_rank} threads)")
            handle = estimate_pi.submit(200_000, seed=1)
            print(f"submitted {handle.id}: estimate_pi(200000, seed=1), a decorated function")
            progress(client, [hybrid.id, handle.id])

            done = client.job(hybrid.id)
            print(f"\n== {done.name} ({done.id}): {done.state.value}, nodes {done.node_names}")
            print(client.logs(hybrid.id, "stdout").data.decode(), end="")
            if done.state != JobState.SUCCEEDED:
                print(client.logs(hybrid.id, "stderr").data.decode(), end="", file=sys.stderr)
            value = handle.result(timeout=60)
            print(f"\n== {handle.job().name} ({handle.id}): pi ~= {value:.5f} "
                  f"(error {abs(value - math.pi):.5f})")
            print()
            now = datetime.now(UTC)
            print(table(JOB_HEADERS, job_rows([client.job(hybrid.id), handle.job()], now)))
            ok = done.state == JobState.SUCCEEDED
    finally:
        if started_here:
            stop(state)
            print("\ncontrol plane stopped; history, logs and results stay in", HOME)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
