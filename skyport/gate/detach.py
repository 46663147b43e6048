"""Start a node's process so that it is nobody's child, optionally in a network namespace.

A node (an agent, a VM's boot script, a network forwarder) must outlive the
process that starts it, the way a VM outlives its control plane: Ray kills a
worker's children when the worker exits.  So it is started through a short
lived intermediate that runs it in a session of its own and exits.  With
``netns``, the intermediate first enters that network namespace (setns(2)),
so the node and all it starts live there, and a command that cannot start
fails here as it does without one.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["DetachError", "detach"]

# argv: the output file, a network namespace to enter ('' for none), then the command
_DETACH = (
    "import ctypes, os, subprocess, sys\n"
    "out = open(os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), 'ab')\n"
    "if sys.argv[2]:\n"
    "    fd = os.open(sys.argv[2], os.O_RDONLY)\n"
    "    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:\n"
    "        sys.exit('cannot enter ' + sys.argv[2] + ': ' + os.strerror(ctypes.get_errno()))\n"
    "p = subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=out,"
    " stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)\n"
    "print(p.pid)\n"
)


class DetachError(RuntimeError):
    """The command did not start (the intermediate's error output is the message)."""


def detach(argv: Sequence[str], out: Path | str, *, netns: str = "",
           cwd: Path | str | None = None,
           env: Mapping[str, str] | None = None) -> int:
    """Start ``argv`` (output appended to ``out``) in a session of its own; its pid."""
    starter = subprocess.run(
        [sys.executable, "-c", _DETACH, str(out), netns, *argv], cwd=cwd,
        stdin=subprocess.DEVNULL, capture_output=True, env=dict(env) if env is not None else None,
        timeout=60, check=False)
    try:
        return int(starter.stdout.decode().strip())
    except ValueError:
        raise DetachError(starter.stderr.decode(errors="replace")[-500:]) from None
