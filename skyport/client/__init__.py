"""The Python client of the REST API (``core``) and an in-memory control plane for tests (``fake``).

``fake`` is product code on purpose: anyone writing a tool on the client can
test it without a server, the way this package's own tests do.
"""

from skyport.client.core import (
    Client,
    LogChunk,
    StoredFile,
    WaitTimeoutError,
    connect,
)

__all__ = ["Client", "LogChunk", "StoredFile", "WaitTimeoutError", "connect"]
