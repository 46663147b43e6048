"""How long `skyport cancel --all` takes for N queued jobs, through the real REST app and Core.

    python -m benchmarks.bulk_cancel --jobs 10000

The jobs are written to the store directly (submitting 10,000 through the API is
the fast path's own benchmark); the cancel goes through the real route, the
Core and one store transaction.  Baseline in the same run: one cancel per job
through the same route, on a tenth as many jobs, scaled.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from skyport.client.testing import TestControlPlane
from skyport.models import JobSpec


def _fill(cp: TestControlPlane, n: int, tag: str) -> list[str]:
    spec = JobSpec(name=f"bulk-{tag}", script="#!/bin/bash\ntrue\n")
    ids = [f"{tag}{i:07d}" for i in range(n)]
    for job_id in ids:
        cp.store.add(job_id, "alice", spec)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            TestControlPlane(Path(tmp), gate={"cpus": 1, "max_nodes": 1}) as cp:
        client = cp.client("alice")
        ids = _fill(cp, args.jobs, "b")
        t0 = time.perf_counter()
        answer = client.cancel_many(all=True)
        bulk_s = time.perf_counter() - t0
        few = _fill(cp, max(1, args.jobs // 10), "s")
        t0 = time.perf_counter()
        for job_id in few:
            client.cancel(job_id)
        one_by_one_s = (time.perf_counter() - t0) * args.jobs / len(few)
        result = {"jobs": args.jobs, "cancelled": len(answer.cancelled),
                  "bulk_s": round(bulk_s, 3), "one_by_one_s_scaled": round(one_by_one_s, 3),
                  "speedup": round(one_by_one_s / bulk_s, 1)}
        assert len(answer.cancelled) == len(ids)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
