"""``python -m skyport.launch.rank -- CMD``: the wrapper MPI starts as every rank.

It reads the rank's place on its node from the MPI launcher
(``MPI_LOCALRANKID`` from Hydra, ``OMPI_COMM_WORLD_LOCAL_RANK`` from Open
MPI), pins itself to its block of the node's cores (``SKYPORT_NODE_CORES``,
set by the node's own agent), enters the launch's directory inside its own
node's working directory (``SKYPORT_RANK_CWD``: the nodes share none), sets
the OpenMP variables, and execs CMD, so
the rank keeps this process's pid and parent.  The rank dies with its parent
(``PR_SET_PDEATHSIG``, kept across exec): the MPI proxy moves it to a session
of its own, so the node agent's session kill would otherwise miss it.
"""

from __future__ import annotations

import os
import signal
import sys

from skyport.agent.procfs import set_parent_death_signal
from skyport.launch.layout import omp_env, rank_cores

__all__ = ["local_rank", "main", "rank_dir"]

_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK",
                    "PMIX_LOCAL_RANK")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def local_rank(env: dict[str, str]) -> int:
    for key in _LOCAL_RANK_VARS:
        if env.get(key, "").isdigit():
            return int(env[key])
    return 0


def rank_dir(env: dict[str, str]) -> str:
    """The rank's working directory on its own node: ``SKYPORT_RANK_CWD`` (relative: in
    this node's ``SKYPORT_WORKDIR``) where it exists there, else the node's directory."""
    workdir = env.get("SKYPORT_WORKDIR") or os.getcwd()
    want = env.get("SKYPORT_RANK_CWD", "")
    path = os.path.join(workdir, want) if want and not want.startswith("/") else want
    return path if path and os.path.isdir(path) else workdir


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m skyport.launch.rank -- CMD [ARGS...]", file=sys.stderr)
        return 2
    # MPI launchers put each rank in a session of its own, out of reach of its node agent's
    # session: die with the launcher's proxy instead, whoever kills it and however.
    set_parent_death_signal(signal.SIGKILL)
    env = dict(os.environ)
    threads = int(env.get("SKYPORT_THREADS_PER_RANK") or "1")
    cores_text = env.get("SKYPORT_NODE_CORES", "")
    cores = [int(c) for c in cores_text.split(",") if c.strip().isdigit()] or \
        sorted(os.sched_getaffinity(0))
    mine = rank_cores(local_rank(env), threads, cores)
    try:
        os.sched_setaffinity(0, mine)
    except OSError as exc:
        print(f"skyport: cannot bind rank to cores {mine}: {exc}", file=sys.stderr)
    os.chdir(rank_dir(env))
    env["PWD"] = os.getcwd()
    env.update(omp_env(threads))
    env["SKYPORT_LOCAL_RANK"] = str(local_rank(env))
    env["SKYPORT_RANK_CORES"] = ",".join(map(str, mine))
    for key in _RANK_VARS:
        if env.get(key, "").isdigit():
            env.setdefault("SKYPORT_RANK", env[key])
    try:
        os.execvpe(args[0], args, env)
    except OSError as exc:
        print(f"skyport: cannot run {args[0]!r}: {exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
