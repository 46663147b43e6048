"""``@skyport.job`` with several ranks: the function runs on every rank of two nodes."""

from __future__ import annotations

import pytest

import skyport

from .conftest import ControlPlane, processes_of_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def where(scale: int) -> dict:
    import os

    import skyport

    ctx = skyport.context()
    return {"rank": ctx.rank, "size": ctx.size, "local_rank": ctx.local_rank,
            "node_name": ctx.node_name, "node_rank": ctx.node_rank,
            "num_nodes": ctx.num_nodes, "threads": ctx.threads,
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "cores": len(os.sched_getaffinity(0)),
            "sum": ctx.comm.allreduce(ctx.rank * scale)}


def test_function_runs_on_every_rank(controlplane: ControlPlane) -> None:
    fn = skyport.job(nodes=2, ranks_per_node=2, threads_per_rank=2, cpus=4, time="3m",
                     home=controlplane.home)(where)
    handle = fn.submit(10)
    values = handle.results(timeout=120)
    job = handle.job()
    names = job.node_names
    assert [v["rank"] for v in values] == [0, 1, 2, 3]
    assert all(v["size"] == 4 and v["num_nodes"] == 2 and v["threads"] == 2 for v in values)
    assert all(v["omp"] == "2" and v["cores"] == 2 for v in values), values
    assert [v["sum"] for v in values] == [60] * 4  # 10 * (0+1+2+3) over both nodes
    assert [(v["node_name"], v["node_rank"], v["local_rank"]) for v in values] == [
        (names[0], 0, 0), (names[0], 0, 1), (names[1], 1, 0), (names[1], 1, 1)]
    assert handle.result() == values[0]
    assert processes_of_job(job.id) == []


def test_a_rank_that_raises_fails_the_job_naming_it(controlplane: ControlPlane) -> None:
    @skyport.job(nodes=2, ranks_per_node=1, cpus=1, time="3m", home=controlplane.home)
    def picky() -> int:
        import skyport

        ctx = skyport.context()
        if ctx.rank == 1:
            raise ValueError(f"rank {ctx.rank} on {ctx.node_name} refuses")
        ctx.comm.barrier()  # waits for rank 1 in vain: the abort ends it
        return 0

    handle = picky.submit()
    with pytest.raises(skyport.JobFailedError, match="failed on rank 1 of 2: ValueError") \
            as info:
        handle.result(timeout=120)
    assert "refuses" in info.value.remote_message
    with pytest.raises(skyport.JobFailedError, match="rank 1"):
        handle.results()
    assert handle.state.value == "FAILED"
