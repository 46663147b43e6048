"""Streamed file bodies for the file routes: ranged downloads and chunked uploads.

Nothing here holds a whole file: a download is read from storage ``CHUNK``
bytes at a time (``Range: bytes=N-`` resumes it), an upload is gathered into
``CHUNK``-sized pieces and written as they come, storage calls running in a
worker thread so the event loop keeps serving other requests.  Every answer
carries the file's recorded sha256 (``X-Skyport-Sha256``) so the receiver can
check what it got end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse

from skyport.errors import ValidationError
from skyport.storage import CHUNK, JobStorage

__all__ = ["SHA256_HEADER", "ranged_download", "streamed_upload"]

SHA256_HEADER = "X-Skyport-Sha256"
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=a-b`` range, None for the whole file."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        raise ValidationError("Range", header, "one range 'bytes=START-' or 'bytes=START-END'")
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    if start > size or end < start:
        raise ValidationError("Range", header, f"a range within the file's {size} bytes")
    return start, min(end, size)


_SEND = 256 << 10  # what is handed to the TLS transport at once


async def _in_thread(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Drive a blocking iterator from a worker thread, one chunk per hop.

    Each chunk goes to the socket in ``_SEND`` pieces: asyncio's TLS transport
    encrypts a whole write at once and then buffers what the socket did not take,
    moving the rest of that buffer on every partial send, so one 8 MiB write
    costs about a third more CPU and half the speed of the same bytes in
    256 KiB writes (``benchmarks/RESULTS.md``).
    """
    done = object()
    while True:
        chunk = await anyio.to_thread.run_sync(next, it, done)
        if chunk is done:
            return
        for at in range(0, len(chunk), _SEND):  # type: ignore[arg-type]
            yield chunk[at:at + _SEND]  # type: ignore[index]


async def ranged_download(storage: JobStorage, job_id: str, path: str,
                          range_header: str | None) -> StreamingResponse:
    """The file (or the asked range of it), streamed, with its size and checksum."""
    size, digest = await anyio.to_thread.run_sync(storage.stat, job_id, path)
    rng = _parse_range(range_header, size)
    start, end = rng if rng is not None else (0, size)
    headers = {"Content-Length": str(end - start), "Accept-Ranges": "bytes",
               "X-Skyport-Size": str(size)}
    if digest is not None:
        headers[SHA256_HEADER] = digest
    if rng is not None:
        headers["Content-Range"] = f"bytes {start}-{max(end - 1, start)}/{size}"
    return StreamingResponse(_in_thread(storage.iter_range(job_id, path, start, end)),
                             status_code=206 if rng is not None else 200,
                             media_type="application/octet-stream", headers=headers)


async def streamed_upload(storage: JobStorage, job_id: str, path: str,
                          request: Request) -> tuple[int, str]:
    """Write the request body to ``path`` as it arrives; (size, sha256) stored.

    When the sender names the digest (``X-Skyport-Sha256``), a body that does not
    match is refused and nothing is kept.
    """
    expected = request.headers.get(SHA256_HEADER)
    if expected is not None and not _SHA256.fullmatch(expected):
        raise ValidationError(SHA256_HEADER, expected, "64 lowercase hex digits")
    writer = await anyio.to_thread.run_sync(storage.writer, job_id, path)
    pending: list[bytes] = []
    held = 0
    # the previous chunk is hashed and written in a thread while the next one arrives
    # (one chunk in flight: memory stays two chunks per upload)
    writing: asyncio.Future[None] | None = None
    try:
        async for piece in request.stream():
            pending.append(piece)
            held += len(piece)
            if held >= CHUNK:
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(asyncio.to_thread(writer.write,
                                                                  b"".join(pending)))
                pending, held = [], 0
        if writing is not None:
            await writing
            writing = None
        if pending:
            await anyio.to_thread.run_sync(writer.write, b"".join(pending))
        return await anyio.to_thread.run_sync(writer.commit, expected)
    except BaseException:
        if writing is not None:
            with contextlib.suppress(BaseException):
                await writing
        await anyio.to_thread.run_sync(writer.abort)
        raise
