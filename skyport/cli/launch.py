"""``skyport mpiexec -- CMD``: inside a job, start its ranks (as ``$SKYPORT_MPIEXEC`` does)."""

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
