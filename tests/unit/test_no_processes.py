"""The unit tests' guard (tests/unit/conftest.py) refuses each way of starting a process."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys

import pytest

# tests/unit is no package: the conftest's exception class is matched by its message
REFUSED = "unit tests run in-process"


def test_subprocess_is_refused() -> None:
    with pytest.raises(AssertionError, match=REFUSED):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_asyncio_subprocess_is_refused() -> None:
    async def start() -> None:
        await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")

    with pytest.raises(AssertionError, match=REFUSED):
        asyncio.run(start())


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_is_refused(method: str) -> None:
    proc = multiprocessing.get_context(method).Process(target=print)
    with pytest.raises(AssertionError, match=REFUSED):
        proc.start()


def test_os_level_doors_are_refused() -> None:
    with pytest.raises(AssertionError, match=REFUSED):
        os.fork()
    with pytest.raises(AssertionError, match=REFUSED):
        os.system("true")
    with pytest.raises(AssertionError, match=REFUSED):
        os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], os.environ)
