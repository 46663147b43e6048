"""One big file from the control plane's file route over several connections at once.

A single TLS stream in Python tops out at one core's worth of decryption and
HTTP framing (``benchmarks/RESULTS.md``); a file of ``SPLIT_MIN`` or more is
therefore fetched as ``RANGES`` byte ranges in parallel, each written in place
(``pwrite``) by its own thread.  The calling thread hashes the file in order
behind them, reading back from the page cache what the range threads wrote, so
the sha256 the control plane recorded is checked without a second pass over
the disk.  Each range resumes on its own from where it stopped when its
connection breaks.  Memory stays a few pieces per range.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx

from skyport.errors import StorageError

__all__ = ["RANGES", "SPLIT_MIN", "download_ranges"]

RANGES = 4  # connections for one file: a core's worth of TLS each
SPLIT_MIN = 64 << 20  # below this one stream is as fast as the setup of several
_PIECE = 1 << 20
_HASH_STEP = 8 << 20


class _Extents:
    """How far each range's writer has got (bytes from its start), and the first failure."""

    def __init__(self, count: int) -> None:
        self.done = [0] * count
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def advance(self, i: int, n: int) -> None:
        with self.cond:
            self.done[i] += n
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            self.error = self.error or exc
            self.cond.notify_all()

    def wait_past(self, i: int, have: int) -> int:
        """Block until range ``i`` holds more than ``have`` bytes; how many it holds."""
        with self.cond:
            while self.done[i] <= have and self.error is None:
                self.cond.wait(1.0)
            if self.error is not None:
                raise self.error
            return self.done[i]


def _bounds(size: int, count: int) -> list[tuple[int, int]]:
    step = -(-size // count)
    return [(lo, min(lo + step, size)) for lo in range(0, size, step)]


def download_ranges(http: httpx.Client, check: Callable[[httpx.Response], None],
                    retrying: Callable[[str, Callable[[], None]], None],
                    path: str, dest: Path, size: int,
                    progress: Callable[[int], object]) -> str:
    """Fetch ``/files/<path>`` (``size`` bytes) into ``dest``; the sha256 recorded for it.

    ``http`` is the agent's client of its job's routes, ``check`` turns an error
    answer into its exception, ``retrying(what, attempt)`` retries a broken
    connection (``AgentClient``'s).

    Raises ``StorageError`` when what arrived does not have that digest (the
    caller then fetches it again the plain way); a range whose connection keeps
    failing past the client's retries raises ``ControlPlaneError``.
    """
    bounds = _bounds(size, RANGES)
    extents = _Extents(len(bounds))
    recorded: list[str | None] = [None]
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def one(i: int) -> None:
        lo, hi = bounds[i]

        def attempt() -> None:
            if extents.error is not None:  # a retry after another range failed: pointless
                raise StorageError(f"{path}: stopped, another range failed")
            start = lo + extents.done[i]
            if start >= hi:
                return
            with http.stream("GET", f"/files/{path}",
                                     headers={"Range": f"bytes={start}-{hi - 1}"}) as resp:
                check(resp)
                if resp.status_code != 206 or not resp.headers.get(
                        "Content-Range", "").startswith(f"bytes {start}-"):
                    raise StorageError(f"the control plane did not send bytes {start}- of "
                                       f"{path} (HTTP {resp.status_code})")
                recorded[0] = resp.headers.get("X-Skyport-Sha256")
                pos = start
                for chunk in resp.iter_bytes(_PIECE):
                    if extents.error is not None:  # another range failed: the file is lost
                        raise StorageError(f"{path}: stopped, another range failed")
                    if pos + len(chunk) > hi:
                        raise StorageError(f"the control plane sent more of {path} than asked")
                    os.pwrite(fd, chunk, pos)
                    pos += len(chunk)
                    extents.advance(i, len(chunk))
                    progress(len(chunk))
            if pos != hi:
                raise StorageError(f"{path}: range {start}-{hi - 1} ended at {pos}")

        try:
            retrying(f"GET /files/{path} bytes {lo}-{hi - 1}", attempt)
        except BaseException as exc:
            extents.fail(exc)
            raise

    digest = hashlib.sha256()
    try:
        with ThreadPoolExecutor(len(bounds), thread_name_prefix="range") as pool:
            running: list[Future[None]] = [pool.submit(one, i) for i in range(len(bounds))]
            try:
                for i, (lo, hi) in enumerate(bounds):
                    hashed = 0
                    while lo + hashed < hi:
                        have = extents.wait_past(i, hashed)
                        while hashed < have:
                            data = os.pread(fd, min(_HASH_STEP, have - hashed), lo + hashed)
                            if not data:
                                raise StorageError(f"{dest} shrank while it was written")
                            digest.update(data)
                            hashed += len(data)
            except BaseException as exc:
                extents.fail(exc)  # the range threads stop at their next piece
                raise
            for fut in running:
                fut.result()
    finally:
        os.close(fd)
    got = digest.hexdigest()
    if recorded[0] is not None and got != recorded[0]:
        dest.unlink(missing_ok=True)
        raise StorageError(f"sha256 of {path} is {got}, the control plane recorded "
                           f"{recorded[0]}")
    return got
