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

from skyport.client import Client, connect
from skyport.decorator import JobFunction, JobHandle, job
from skyport.errors import JobFailedError, SkyportError
from skyport.runtime.context import JobContext, context

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
