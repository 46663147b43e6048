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

Importing ``skyport`` loads the client only (httpx, pydantic), never Ray.
"""

import sys

# httpx imports its own command line (rich, pygments, click) unless that fails; it is
# never used here and was a third of the start-up of every `skyport` command and agent
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from skyport.client import Client, connect  # noqa: E402
from skyport.decorator import JobFunction, JobHandle, job  # noqa: E402
from skyport.errors import JobFailedError, SkyportError  # noqa: E402
from skyport.runtime.context import JobContext, context  # noqa: E402

__version__ = "0.1.0"

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
