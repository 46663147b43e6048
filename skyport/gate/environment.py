"""The environment of a node's agent, and so of every payload it starts: an allow-list.

A trust rule: the control plane's environment holds cloud and storage
credentials, database URLs, tokens and Ray's own variables; none of it may
reach a job's payload, whose code the control plane does not trust.  So an
agent started on this machine's image (the local and Ray gates, the local
libcloud driver) gets only what is named here, never "everything but what
looks secret": a secret's name cannot be guessed (``DATABASE_URL``,
``GITHUB_PAT``, ``AWS_PROFILE`` look like nothing).

What is let through, and why:

- the basics a process and a shell need: ``PATH``, ``HOME``, ``USER``,
  ``LOGNAME``, ``SHELL``, ``TERM``, the locale (``LANG``, ``LANGUAGE``,
  ``LC_*``), ``TZ`` and the temp folder (``TMPDIR``, ``TMP``, ``TEMP``);
- Python's: ``PYTHONPATH`` (with this Sky Port's root put first, so the agent
  and a function job's payload import the same Sky Port), and the harmless
  interpreter switches (``PYTHONUNBUFFERED``, ``PYTHONDONTWRITEBYTECODE``,
  ``PYTHONHASHSEED``);
- what an MPI job needs of the image: ``LD_LIBRARY_PATH`` (MPI and CUDA
  libraries outside the default paths), ``SKYPORT_OPENMPI_HOME`` (where the
  agent finds Open MPI, ``skyport.launch.mpi``), Open MPI's run-as-root
  switches, and the MPI and fabric tuning families (``OMPI_MCA_*``,
  ``PRTE_MCA_*``, ``PMIX_MCA_*``, ``MPIR_CVAR_*``, ``UCX_*``, ``FI_*``).

Everything else the agent sets itself: ``SKYPORT_JOB_ID``, ``SKYPORT_NODE_*``,
``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``, the launch variables
(``skyport.agent.main.payload_env``); a job adds its own with ``spec.env``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ALLOWED_NAMES", "ALLOWED_PREFIXES", "agent_environment", "is_allowed", "skyport_root"]

ALLOWED_NAMES: frozenset[str] = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM",
    "LANG", "LANGUAGE", "TZ",
    "TMPDIR", "TMP", "TEMP",
    "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
    "LD_LIBRARY_PATH",
    "SKYPORT_OPENMPI_HOME",
    "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM",
})
ALLOWED_PREFIXES: tuple[str, ...] = (
    "LC_", "OMPI_MCA_", "PRTE_MCA_", "PMIX_MCA_", "MPIR_CVAR_", "UCX_", "FI_",
)

_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def is_allowed(name: str) -> bool:
    """Whether the variable ``name`` may pass from the control plane to an agent."""
    return name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)


def skyport_root() -> str:
    """The folder that holds this Sky Port's ``skyport`` package (and ``gates``)."""
    return str(Path(__file__).resolve().parents[2])  # <root>/skyport/gate/environment.py


def agent_environment(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allowed part of ``source`` (default: this process's environment), with a
    ``PATH`` always set and this Sky Port's root first on ``PYTHONPATH``."""
    src = os.environ if source is None else source
    env = {k: v for k, v in src.items() if is_allowed(k)}
    env.setdefault("PATH", _DEFAULT_PATH)
    root = skyport_root()
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *rest])
    return env
