"""The Python client of the REST API (``core``) and a control plane for tests (``testing``).

``testing`` is product code on purpose: anyone writing a tool on the client can
test it against the real API and Core without a server, as this package's tests do.
"""

from skyport.client.core import (
    Client,
    LogChunk,
    StoredFile,
    WaitTimeoutError,
    connect,
)

__all__ = ["Client", "LogChunk", "StoredFile", "WaitTimeoutError", "connect"]
