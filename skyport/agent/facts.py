"""What this node offers, found on the node itself and reported at hello.

Cores and memory from the kernel, GPUs from ``nvidia-smi`` (model and memory)
where it exists, the MPI implementations ``skyport.launch.mpi`` finds with
their versions, the Python and Sky Port versions.  The Core compares them
with the job's layout (``skyport.core.machine.nodes_lack``): on a cloud each
node is a machine of its own, and only its agent can tell what it has.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from collections.abc import Sequence

from skyport.launch.mpi import mpich_mpiexec, openmpi_mpirun
from skyport.protocol import GpuFact, NodeFacts

__all__ = ["mpi_versions", "node_facts", "parse_version"]

_VERSION = re.compile(r"(?:Version:\s*|\(Open MPI\)\s*|MPICH Version:\s*)(\d+(?:\.\d+)+\S*)",
                      re.I)


def _run(argv: Sequence[str], timeout_s: float = 15.0,
         env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                              check=False, stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr


def parse_version(text: str) -> str | None:
    """The version in ``mpiexec --version`` / ``mpirun --version`` output (Hydra, Open MPI)."""
    m = _VERSION.search(text)
    return m.group(1) if m else None


def mpi_versions() -> dict[str, str | None]:
    """``{"mpich": version or None, "openmpi": version or None}`` on this node.

    An installed MPI whose version cannot be read reports ``"unknown"``: it is
    there, and two such nodes are not told apart.
    """
    found: dict[str, str | None] = {}
    for name, exe in (("mpich", mpich_mpiexec()), ("openmpi", openmpi_mpirun())):
        if exe is None:
            found[name] = None
            continue
        env = dict(os.environ)
        if name == "openmpi":
            env["OPAL_PREFIX"] = os.path.dirname(os.path.dirname(exe))
        found[name] = parse_version(_run([exe, "--version"], env=env)) or "unknown"
    return found


def _gpus() -> list[GpuFact]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    out = _run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
    gpus = []
    for line in out.splitlines():
        name, _, mem = line.rpartition(",")
        if name.strip() and mem.strip().isdigit():
            gpus.append(GpuFact(model=name.strip(), memory_mb=int(mem.strip())))
    return gpus


def node_facts() -> NodeFacts:
    from skyport import __version__

    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    return NodeFacts(cores=len(os.sched_getaffinity(0)), mem_mb=int(mem_mb), gpus=_gpus(),
                     mpi=mpi_versions(), python=platform.python_version(),
                     skyport=__version__)
