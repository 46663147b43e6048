"""Inside a job: ``skyport mpiexec -- CMD`` starts its ranks (as ``$SKYPORT_MPIEXEC`` does);
``skyport bcast FILE...`` copies files to every node."""

from __future__ import annotations

import click

from skyport.cli.app import cli


@cli.command("mpiexec", context_settings={"ignore_unknown_options": True,
                                          "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def mpiexec(args: tuple[str, ...]) -> None:
    """Start nodes x ranks-per-node ranks of CMD with the job's layout and MPI.

    Options before ``--`` (``--mpi``, ``--nodes``, ``--ranks-per-node``,
    ``--threads-per-rank``) override the job's; run it inside a Sky Port job.
    """
    from skyport.launch.mpiexec import main

    raise SystemExit(main(list(args)))


@cli.command("bcast")
@click.argument("files", nargs=-1, required=True)
def bcast(files: tuple[str, ...]) -> None:
    """Copy FILES of this node's working directory to the same paths on every node.

    Like Slurm's ``sbcast``; run it inside a Sky Port job (the nodes share no
    files: what the script makes on node 0 is only there until it is copied).
    """
    from skyport.launch.bcast import main

    raise SystemExit(main(list(files)))
