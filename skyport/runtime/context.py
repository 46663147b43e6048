"""``skyport.context()``: where the calling code runs inside its job.

::

    @skyport.job(nodes=2, ranks_per_node=2)
    def part() -> int:
        ctx = skyport.context()
        return ctx.comm.allreduce(ctx.rank)   # ctx.comm: mpi4py's COMM_WORLD

The facts come from the variables the node agent and the rank wrapper
(``skyport.launch.rank``) set, so ``context()`` works in a function job and
in any program a script job starts.  ``comm`` imports mpi4py (and so
initialises MPI) only when first read: a single-rank job needs no MPI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from skyport.errors import SkyportError

__all__ = ["JobContext", "context"]

_RANK_VARS = ("SKYPORT_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_LOCAL_RANK_VARS = ("SKYPORT_LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK")


@dataclass(frozen=True)
class JobContext:
    """This process's place in its job: MPI rank, node, threads."""

    job_id: str
    rank: int
    size: int
    local_rank: int
    node_name: str
    node_rank: int
    num_nodes: int
    threads: int

    @property
    def comm(self) -> Any:
        """``mpi4py.MPI.COMM_WORLD`` (MPI is initialised on first use)."""
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise SkyportError(
                "skyport.context().comm needs mpi4py on the node: pip install mpi4py"
            ) from exc
        return MPI.COMM_WORLD


def _first_int(env: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return default


def context(env: Mapping[str, str] | None = None) -> JobContext:
    """The calling process's ``JobContext``; ``SkyportError`` outside a Sky Port job."""
    env = os.environ if env is None else env
    job_id = env.get("SKYPORT_JOB_ID", "")
    if not job_id:
        raise SkyportError(
            "skyport.context() works only inside a Sky Port job (SKYPORT_JOB_ID is not "
            "set): call it from a function submitted with @skyport.job or from a job's program"
        )
    return JobContext(
        job_id=job_id,
        rank=_first_int(env, _RANK_VARS, 0),
        size=_first_int(env, _SIZE_VARS, 1),
        local_rank=_first_int(env, _LOCAL_RANK_VARS, 0),
        node_name=env.get("SKYPORT_NODE_NAME", ""),
        node_rank=_first_int(env, ("SKYPORT_NODE_RANK",), 0),
        num_nodes=_first_int(env, ("SKYPORT_NUM_NODES",), 1),
        threads=_first_int(env, ("SKYPORT_THREADS_PER_RANK", "OMP_NUM_THREADS"), 1),
    )
