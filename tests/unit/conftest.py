"""The unit tests run inside the pytest process: none of them starts another process.

``make unit`` is the fast loop (well under a minute) and must not depend on Ray, a
scheduler for child processes or the machine's load. An autouse fixture makes
every way of starting a process raise for the duration of each unit test, so a
test that starts one fails here, naming what it called, instead of slowly
drifting the suite. Tests that need real processes live in ``tests/integration``.
"""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest


class ProcessStartedInUnitTest(AssertionError):
    """A unit test tried to start a process; it belongs in tests/integration."""


def _refuse(name: str) -> Any:
    def refuse(*_args: object, **_kwargs: object) -> NoReturn:
        raise ProcessStartedInUnitTest(
            f"{name}() called from a unit test: unit tests run in-process only; "
            "move the test to tests/integration or fake the process"
        )

    return refuse


# subprocess.Popen calls its own copy of fork_exec (bound at import) or posix_spawn;
# multiprocessing's spawn/forkserver call _posixsubprocess.fork_exec; the os
# functions are the other doors (multiprocessing's fork, os.system, ...)
_DOORS: tuple[tuple[Any, str], ...] = (
    (subprocess, "_fork_exec"),
    (_posixsubprocess, "fork_exec"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
    (os, "spawnv"),
    (os, "spawnve"),
    (os, "spawnvp"),
    (os, "spawnvpe"),
    (os, "execv"),
    (os, "execve"),
)


@pytest.fixture(autouse=True)
def _no_process_starts() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for owner, name in _DOORS:
            if hasattr(owner, name):
                label = f"{getattr(owner, '__name__', owner)}.{name}"
                mp.setattr(owner, name, _refuse(label))
        yield
