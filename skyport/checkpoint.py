"""Checkpoints, seen from inside a job.

A running job has a checkpoint directory on node 0 (``$SKYPORT_CHECKPOINT_DIR``)
and one per node (``$SKYPORT_NODE_CHECKPOINT_DIR``) for per-rank state.  Sky Port
copies them to the job's storage prefix every ``--checkpoint-every``, when the
job asks (this module's ``request`` or ``skyport checkpoint``, both over the
agent's launch socket), and before the job is stopped for its time limit, a
``cancel --checkpoint``, a requeue or a preemption notice.  On a restart the
latest complete checkpoint is put back into those directories before the
payload starts, and ``$SKYPORT_RESTART_COUNT`` says how many restarts came before.

Function jobs keep their Python state with two calls::

    state = skyport.checkpoint.load(default={"step": 0})
    for step in range(state["step"], 100):
        ...
        skyport.checkpoint.save({"step": step + 1})   # durable once it returns

Files in the checkpoint directories should be written atomically (write a
temporary file, then rename it): a periodic copy takes what is there.

Storage layout, under ``<storage>/jobs/<id>/checkpoints/``::

    v<N>/shared/...          node 0's $SKYPORT_CHECKPOINT_DIR
    v<N>/nodes/<rank>/...    each node's $SKYPORT_NODE_CHECKPOINT_DIR
    latest.json              {"version", "time", "files", "bytes", "reason", ...}

``latest.json`` is written by the control plane alone, atomically, once every
node's part of version N is stored: a checkpoint is complete or absent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import cloudpickle

__all__ = ["CheckpointError", "load", "parse_signal", "request", "save"]

STATE_FILE = "skyport-state.pkl"
LATEST = "checkpoints/latest.json"
DEFAULT_SIGNAL_BEFORE_S = 60  # sbatch's default for --signal without @seconds


class CheckpointError(RuntimeError):
    """A checkpoint could not be requested or was not stored in time."""


def parse_signal(text: str) -> tuple[str, int]:
    """``"SIGUSR1@60"`` (or ``USR1``, ``10@30``, ``SIGTERM``) -> ``("SIGUSR1", 60)``."""
    name, at, before = text.strip().partition("@")
    try:
        sig = signal.Signals(int(name)) if name.isdigit() else signal.Signals[
            name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"signal {text!r}: unknown signal {name!r} (e.g. SIGUSR1@60)") from exc
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        raise ValueError(f"signal {text!r}: {sig.name} cannot be caught by the job")
    before_s = DEFAULT_SIGNAL_BEFORE_S
    if at:
        if not before.isdigit() or not 0 <= int(before) <= 366 * 24 * 3600:
            raise ValueError(f"signal {text!r}: '@' must be followed by whole seconds")
        before_s = int(before)
    return sig.name, before_s


def _dir() -> Path | None:
    raw = os.environ.get("SKYPORT_CHECKPOINT_DIR")
    return Path(raw) if raw else None


def save(obj: Any, *, wait: bool = True, timeout_s: float = 300.0) -> int | None:
    """Pickle ``obj`` into the checkpoint directory and ask for a checkpoint.

    Returns the checkpoint's version once it is stored (``wait=False``: at once,
    None).  Outside a Sky Port job (no ``$SKYPORT_CHECKPOINT_DIR``, e.g. a
    decorated function called locally) nothing is written and None is returned.
    """
    where = _dir()
    if where is None:
        return None
    where.mkdir(parents=True, exist_ok=True)
    tmp = where / f".{STATE_FILE}.tmp"
    tmp.write_bytes(cloudpickle.dumps(obj))
    os.replace(tmp, where / STATE_FILE)
    return request(wait=wait, timeout_s=timeout_s)


def load(default: Any = None) -> Any:
    """The object of the last ``save`` that made it into a checkpoint, else ``default``."""
    where = _dir()
    if where is None:
        return default
    try:
        data = (where / STATE_FILE).read_bytes()
    except FileNotFoundError:
        return default
    return cloudpickle.loads(data)


def request(*, wait: bool = True, timeout_s: float = 300.0, reason: str = "") -> int | None:
    """Ask this node's agent (over ``$SKYPORT_LAUNCH_SOCKET``) for a checkpoint now.

    No token is involved: the agent's Unix socket accepts processes of its own
    user only, and the agent makes the call.  With ``wait`` the answer comes
    once the checkpoint is complete; its version is returned.
    """
    path = os.environ.get("SKYPORT_LAUNCH_SOCKET")
    if not path:
        raise CheckpointError("not inside a Sky Port job: $SKYPORT_LAUNCH_SOCKET is not set")
    frame = {"type": "checkpoint", "wait": wait, "timeout_s": timeout_s,
             "reason": reason or "requested by the job"}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s + 30)
            sock.connect(path)
            sock.sendall(json.dumps(frame).encode() + b"\n")
            answer = json.loads(sock.makefile("rb").readline() or b"{}")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"the agent at {path} did not answer: {exc}") from exc
    if "error" in answer:
        raise CheckpointError(str(answer["error"]))
    version = answer.get("version")
    return int(version) if version is not None and wait else None
