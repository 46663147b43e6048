"""Sky Port: an open, vendor-independent workload manager for HPC work on clouds.

The public Python API::

    import skyport

    @skyport.job(cpus=2, time="10m")
    def square(x: int) -> int:
        return x * x

    handle = square.submit(7)      # a JobHandle[int]
    handle.result()                # 49

    skyport.context()              # inside a job: rank, size, node, threads, comm

    client = skyport.connect()     # the REST API of the running control plane
    client.jobs()

Importing ``skyport`` loads nothing: each name above is imported on first use
(the client's httpx and pydantic, never Ray).  Programs that run inside jobs
(``skyport.launch``: the MPI launcher, its rsh relay and the wrapper of every
rank) import the package too, and must not pay for the client they never use.
"""

import importlib
import sys
from typing import TYPE_CHECKING, Any

# httpx imports its own command line (rich, pygments, click) unless that fails; it is
# never used here and was a third of the start-up of every `skyport` command and agent
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

if TYPE_CHECKING:
    from skyport.client import Client, connect
    from skyport.decorator import JobFunction, JobHandle, job
    from skyport.errors import JobFailedError, SkyportError
    from skyport.runtime.context import JobContext, context

__version__ = "0.1.0"

_LAZY = {
    "Client": "skyport.client", "connect": "skyport.client",
    "JobFunction": "skyport.decorator", "JobHandle": "skyport.decorator",
    "job": "skyport.decorator",
    "JobFailedError": "skyport.errors", "SkyportError": "skyport.errors",
    "JobContext": "skyport.runtime.context", "context": "skyport.runtime.context",
}

__all__ = [
    "Client",
    "JobFailedError",
    "JobContext",
    "JobFunction",
    "JobHandle",
    "SkyportError",
    "__version__",
    "connect",
    "context",
    "job",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'skyport' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
