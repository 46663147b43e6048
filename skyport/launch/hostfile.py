"""The job's nodes with their slots, in the format of the job's MPI."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["hostfile_text", "parse_hostfile"]


def hostfile_text(node_names: Sequence[str], slots: int, mpi: str = "mpich") -> str:
    """MPICH: ``name:slots``; Open MPI: ``name slots=N``.  One node a line, in node order."""
    if mpi == "openmpi":
        return "".join(f"{n} slots={slots}\n" for n in node_names)
    return "".join(f"{n}:{slots}\n" for n in node_names)


def parse_hostfile(text: str) -> list[tuple[str, int]]:
    """``[(name, slots)]`` from either format; blank lines and ``#`` comments skipped."""
    hosts = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, slots = line, 1
        if " slots=" in line:
            name, _, rest = line.partition(" slots=")
            slots = int(rest.split()[0])
        elif ":" in line:
            name, _, rest = line.partition(":")
            slots = int(rest)
        hosts.append((name.strip(), slots))
    return hosts
