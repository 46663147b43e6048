"""A rank's share of its node: cores, OpenMP variables, and what stays node-local.

Pure functions; ``skyport.launch.rank`` applies them inside each rank.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = ["NODE_LOCAL_VARS", "omp_env", "propagated_names", "rank_cores"]

NODE_LOCAL_VARS = frozenset({
    "SKYPORT_NODE_NAME", "SKYPORT_NODE_RANK", "SKYPORT_NODE_CORES", "SKYPORT_WORKDIR",
    "SKYPORT_LAUNCH_SOCKET", "CUDA_VISIBLE_DEVICES", "HOSTNAME",
    # each node's own checkpoint directory and agent; SKYPORT_CHECKPOINT_DIR is node 0's alone
    "SKYPORT_NODE_CHECKPOINT_DIR", "SKYPORT_CHECKPOINT_DIR", "SKYPORT_AGENT_PID",
    "PWD", "OLDPWD", "SHLVL", "_",
    # each node's own HOME and temporary folder (the nodes share nothing)
    "HOME", "TMPDIR",
})
"""Set by each node's agent for that node: never copied from node 0 to the ranks."""

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MPI_PREFIXES = ("PMI_", "PMIX_", "MPIR_", "HYDRA_", "HYD_", "OMPI_", "PRTE_", "MPI_LOCAL")


def propagated_names(env: Mapping[str, str]) -> list[str]:
    """The variables of node 0's launch environment that every rank should see too."""
    return sorted(k for k in env if _NAME_RE.match(k) and k not in NODE_LOCAL_VARS
                  and not k.startswith(_MPI_PREFIXES) and not k.startswith("BASH_FUNC"))


def rank_cores(local_rank: int, threads: int, cores: Sequence[int]) -> list[int]:
    """The cores of the ``local_rank``-th rank on a node with ``cores``, ``threads`` each.

    Ranks take consecutive blocks of ``threads`` slots; slot ``s`` is core
    ``cores[s % len(cores)]``, so a node with fewer physical cores than its
    declared cpus (the local gate's virtual cores) still gets every rank a
    block of the right size.
    """
    if threads < 1 or local_rank < 0 or not cores:
        raise ValueError(f"rank {local_rank} with {threads} threads on cores {list(cores)}")
    ordered = sorted(cores)
    start = local_rank * threads
    return sorted({ordered[s % len(ordered)] for s in range(start, start + threads)})


def omp_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "OMP_PLACES": "cores", "OMP_PROC_BIND": "close"}
