"""``python -m skyport.launch.mpiexec [options] -- CMD``: start the job's ranks.

``$SKYPORT_MPIEXEC`` and ``skyport mpiexec -- CMD`` run this.  It starts
nodes x ranks-per-node ranks, in node order (ranks 0..r-1 on node 0, r..2r-1
on node 1, ...), with the job's MPI.  Each rank is ``skyport.launch.rank``
around CMD: bound to its block of its node's cores, with ``OMP_NUM_THREADS``,
``OMP_PLACES=cores`` and ``OMP_PROC_BIND=close``.  The MPI daemons on every
node, node 0 included, are started through the rsh relay
(``skyport.launch.rsh``), so each runs under its own node's agent with that
node's cores, GPUs and ``SKYPORT_NODE_*`` variables.  The rest of the launch
environment is passed on to every rank, except the node's own variables
(``skyport.launch.layout.NODE_LOCAL_VARS``).

Defaults come from the variables the agent sets for the batch script:
``SKYPORT_NODE_NAMES``, ``SKYPORT_RANKS_PER_NODE``, ``SKYPORT_THREADS_PER_RANK``,
``SKYPORT_MPI``, ``SKYPORT_RSH``, ``SKYPORT_PYTHON``.

The nodes share no files: before it starts anything, it checks (through the
relay) that the program, and each argument naming a file here, is on every
other node, and fails with the missing file's name otherwise.  ``--bcast``
first copies the program there (``skyport.launch.bcast``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from skyport.launch.bcast import (
    BcastError,
    bcast,
    missing_on_nodes,
    needed_files,
    program_inside,
)
from skyport.launch.layout import propagated_names
from skyport.launch.mpi import missing_mpi, mpich_mpiexec, openmpi_mpirun

__all__ = ["build_command", "main", "openmpi_iface_args", "write_shims"]


OPENMPI_NET_ARGS = "--mca pml ob1 --mca btl self,tcp --mca coll ^han"
"""Open MPI's transports unless ``$SKYPORT_OPENMPI_ARGS`` says otherwise: TCP between
ranks, because its shared-memory transport crashes when two "hosts" (nodes of
the local gate) are in fact one machine."""


def openmpi_iface_args(iface: str) -> list[str]:
    """Open MPI's arguments that keep its daemons and ranks on ``iface``."""
    return ["--mca", "btl_tcp_if_include", iface, "--mca", "oob_tcp_if_include", iface]


def build_command(mpi: str, nodes: Sequence[str], ranks_per_node: int, cmd: Sequence[str], *,
                  env: Mapping[str, str], rsh: str, python: str,
                  launcher: str) -> tuple[list[str], dict[str, str]]:
    """The MPI launcher's argv and environment for ``cmd`` on ``nodes``."""
    total = len(nodes) * ranks_per_node
    rank = [python, "-m", "skyport.launch.rank", "--", *cmd]
    names = propagated_names(env)
    out_env = dict(env)
    if mpi == "mpich":
        hosts = ",".join(f"{n}:{ranks_per_node}" for n in nodes)
        # every node's daemon starts its ranks in "/" (which every node has); the rank
        # wrapper then enters its own node's directory (SKYPORT_RANK_CWD)
        argv = [launcher, "-launcher", "ssh", "-launcher-exec", rsh, "-hosts", hosts,
                "-n", str(total), "-bind-to", "none", "-wdir", "/"]
        if env.get("SKYPORT_NET_IFACE"):
            # nodes in network namespaces of their own: the host name resolves to no
            # address the other nodes reach, so Hydra (and so the ranks) use this interface
            argv += ["-iface", env["SKYPORT_NET_IFACE"]]
        if names:
            argv += ["-genvlist", ",".join(names)]
        return argv + rank, out_env
    if mpi == "openmpi":
        home = str(Path(launcher).parent.parent)
        out_env["OPAL_PREFIX"] = home
        if os.geteuid() == 0:  # Open MPI refuses root unless told twice
            out_env["OMPI_ALLOW_RUN_AS_ROOT"] = out_env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        hosts = ",".join(f"{n}:{ranks_per_node}" for n in nodes)
        argv = [launcher, "--prefix", home, "--mca", "plm_rsh_agent", rsh,
                "--mca", "plm_rsh_no_tree_spawn", "1", "--host", hosts, "-np", str(total),
                "--map-by", f"ppr:{ranks_per_node}:node", "--bind-to", "none", "--wdir", "/",
                *env.get("SKYPORT_OPENMPI_ARGS", OPENMPI_NET_ARGS).split()]
        if env.get("SKYPORT_NET_IFACE"):
            # nodes in network namespaces of their own: the daemons' wire-up (oob) and
            # the ranks' TCP transport must use the interface the nodes share
            argv += openmpi_iface_args(env["SKYPORT_NET_IFACE"])
        for name in names:
            argv += ["-x", name]
        return argv + rank, out_env
    raise ValueError(f"unknown MPI implementation {mpi!r} (known: mpich, openmpi)")


def write_shims(bin_dir: Path, python: str) -> dict[str, str]:
    """Executables ``skyport-mpiexec`` and ``skyport-rsh`` that run this interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    made = {}
    for name, module, sep in (("skyport-mpiexec", "skyport.launch.mpiexec", " --"),
                              ("skyport-rsh", "skyport.launch.rsh", "")):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec "{python}" -m {module}{sep} "$@"\n')
        path.chmod(stat.S_IRWXU)
        made[name] = str(path)
    return made


def rank_cwd_of(cwd: str, workdir: str) -> str:
    """Where the ranks run, as every node can find it: relative to the node's working
    directory when ``cwd`` is inside this node's (``.`` for itself), else ``cwd``."""
    if workdir:
        rel = os.path.relpath(os.path.realpath(cwd), os.path.realpath(workdir))
        if rel != ".." and not rel.startswith("../"):
            return rel
    return cwd


def _share(cmd: Sequence[str], nodes: Sequence[str], env: Mapping[str, str],
           bcast_it: bool, check: bool) -> str | None:
    """Broadcast the program (``--bcast``) and check that what the command needs is on
    every other node: on machines that share nothing, a rank that cannot find its
    program would leave the others waiting.  Why not, or None."""
    cwd = os.getcwd()
    if bcast_it:
        rel = program_inside(cmd[0], cwd, env.get("SKYPORT_WORKDIR", ""), env.get("PATH", ""))
        if rel is None:
            return (f"--bcast copies a program of the job's working directory; {cmd[0]!r} "
                    "is not one (a program every node has needs no --bcast)")
        try:
            bcast([rel], cwd, dict(env))
        except BcastError as exc:
            return f"--bcast {cmd[0]}: {exc}"
    if not check:
        return None
    try:
        missing = missing_on_nodes(needed_files(cmd, cwd), cwd, dict(env))
    except BcastError as exc:
        return f"checking the nodes for {cmd[0]}: {exc}"
    names = [*nodes, *[f"node-{k}" for k in range(len(nodes), 1 + max(missing, default=0))]]
    where = "; ".join(f"node {k} ({names[k]}) has no {', '.join(files)}"
                      for k, files in sorted(missing.items()))
    if not where:
        return None
    return (f"{where}. The nodes share no files: copy what this node made with "
            f"'skyport bcast FILE', or run '$SKYPORT_MPIEXEC --bcast {shlex.join(cmd[:1])} ...'"
            ", or stage it to every node with --input")


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    parser = argparse.ArgumentParser(
        prog="skyport mpiexec",
        description="Start the job's MPI ranks on its nodes: skyport mpiexec -- CMD [ARGS]")
    parser.add_argument("--mpi", default=env.get("SKYPORT_MPI", "mpich"),
                        choices=["mpich", "openmpi"])
    parser.add_argument("--nodes", type=int, default=None,
                        help="use the first N nodes (default: all of the job's)")
    parser.add_argument("--ranks-per-node", type=int,
                        default=int(env.get("SKYPORT_RANKS_PER_NODE") or 1))
    parser.add_argument("--threads-per-rank", type=int,
                        default=int(env.get("SKYPORT_THREADS_PER_RANK") or 1))
    parser.add_argument("--bcast", action="store_true",
                        help="copy the program (a file of the working directory) to every "
                        "node first, like srun --bcast")
    parser.add_argument("--no-check", action="store_true",
                        help="do not check that the program is on every node first")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--"] and len(raw) > 1 and raw[1].startswith("--") and raw[1] != "--":
        raw = raw[1:]  # the shim's "--", then options: $SKYPORT_MPIEXEC --bcast ./prog
    args = parser.parse_args(raw)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")
    nodes = [n for n in env.get("SKYPORT_NODE_NAMES", "").split(",") if n]
    rsh = env.get("SKYPORT_RSH", "")
    if not nodes or not rsh:
        print("skyport mpiexec: SKYPORT_NODE_NAMES/SKYPORT_RSH are not set: run it inside a "
              "Sky Port job", file=sys.stderr)
        return 2
    if args.nodes is not None:
        if not 1 <= args.nodes <= len(nodes):
            parser.error(f"--nodes={args.nodes}: the job has {len(nodes)} nodes")
        nodes = nodes[:args.nodes]
    problem = missing_mpi(args.mpi)
    if problem:
        print(f"skyport mpiexec: {problem}", file=sys.stderr)
        return 2
    launcher = mpich_mpiexec() if args.mpi == "mpich" else openmpi_mpirun()
    assert launcher is not None  # missing_mpi said it is there
    if args.bcast or not args.no_check:
        problem = _share(cmd, nodes, env, args.bcast, not args.no_check)
        if problem:
            print(f"skyport mpiexec: {problem}", file=sys.stderr)
            return 2
    # the nodes share no directory: each rank goes to this path inside its own node's
    env["SKYPORT_RANK_CWD"] = rank_cwd_of(os.getcwd(), env.get("SKYPORT_WORKDIR", ""))
    env["SKYPORT_THREADS_PER_RANK"] = str(args.threads_per_rank)
    env["SKYPORT_RANKS_PER_NODE"] = str(args.ranks_per_node)
    python = env.get("SKYPORT_PYTHON") or sys.executable
    full, full_env = build_command(args.mpi, nodes, args.ranks_per_node, cmd, env=env,
                                   rsh=rsh, python=python, launcher=launcher)
    sys.stdout.flush()
    os.execve(full[0], full, full_env)


if __name__ == "__main__":
    sys.exit(main())
