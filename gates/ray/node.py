"""The node actor: one per bundle of a job cluster's placement group.

It runs on the Ray node its bundle was placed on, writes the agent's 0600
bootstrap file there and starts ``python -m skyport.agent`` in a session of
its own (in the node's network namespace, with ``network = "namespace"``),
through a short-lived intermediate process (``skyport.gate.detach``): Ray kills a worker's
children when the worker exits, and an agent must not die with its actor
(nor with the control plane).  ``stop`` kills the agent's whole session.
The actor never keeps the job token: it passes straight through to the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import ray

from skyport.agent.bootstrap import Bootstrap
from skyport.agent.procfs import is_alive, kill_sessions, proc_stat
from skyport.gate.detach import DetachError, detach

__all__ = ["BOOTSTRAP_NAME", "NodeActor", "kill_agent", "node_workdir"]

BOOTSTRAP_NAME = ".skyport-bootstrap.json"


def node_workdir(root: str | None, gate: str, cluster_id: str, node_name: str) -> Path:
    base = Path(root) if root else Path(tempfile.gettempdir()) / f"skyport-ray-{os.getuid()}"
    return base / gate / cluster_id / node_name


@ray.remote(num_cpus=0, max_concurrency=4)  # type: ignore[call-overload]  # no max_concurrency in Ray's stubs
class NodeActor:
    """Starts, watches and kills one node's agent on the Ray node it was placed on."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)  # cluster_id, job_id, owner, rank, name, created_at, ...
        self.pid: int | None = None
        self.start_time: int | None = None
        self.workdir: Path | None = None

    def start(self, boot: Bootstrap, workdir: str, gpus_from_ray: bool,
              env: dict[str, str], netns_path: str = "") -> dict[str, Any]:
        """Write the bootstrap file and start the agent with ``env`` (the gate runner's
        allow-listed agent environment, never this worker's), in the network namespace
        ``netns_path`` when given (made by the gate, on its host); idempotent."""
        if self.pid is not None:
            return self.info()
        if netns_path and not os.path.exists(netns_path):
            raise RuntimeError(
                f"network namespace {netns_path} is not on this Ray node "
                f"({socket.gethostname()}): network = \"namespace\" is valid only when every "
                "Ray node is on the gate's host")
        wd = Path(workdir)
        wd.mkdir(parents=True, exist_ok=True, mode=0o700)
        gpus = tuple(str(g) for g in ray.get_gpu_ids()) if gpus_from_ray else boot.gpus
        path = wd / BOOTSTRAP_NAME
        Bootstrap(**{**boot.__dict__, "workdir": str(wd), "gpus": gpus}).write(path)
        try:
            pid = detach([sys.executable, "-m", "skyport.agent", "--bootstrap", str(path)],
                         wd / "agent.out", netns=netns_path, cwd=wd, env=env)
        except DetachError as exc:
            path.unlink(missing_ok=True)
            raise RuntimeError(f"the agent did not start: {exc}") from None
        stat = proc_stat(pid)
        self.pid, self.start_time, self.workdir = pid, stat.start_time if stat else None, wd
        self.meta["gpus"] = list(gpus)
        return self.info()

    def info(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {**self.meta, "pid": self.pid, "start_time": self.start_time,
                "alive": self.pid is not None and is_alive(self.pid, self.start_time),
                "host": socket.gethostname(), "node_id": ctx.get_node_id(),
                "workdir": str(self.workdir) if self.workdir else None}

    def stop(self, grace_s: float) -> bool:
        """Kill the agent's session and remove its working directory; True when all died."""
        done = kill_agent(self.pid, self.start_time, str(self.workdir or ""), grace_s)
        if done:
            self.pid = None
        return done


def kill_agent(pid: int | None, start_time: int | None, workdir: str, grace_s: float) -> bool:
    """Kill an agent's session (identified by pid and start time) and remove its directory."""
    ok = True
    if pid is not None:
        ok = kill_sessions([(pid, start_time)], grace_s=grace_s)
    if ok and workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):  # the cluster's folder, once its last node is gone
            os.rmdir(Path(workdir).parent)
    return ok


@ray.remote(num_cpus=0)
def kill_agent_task(pid: int | None, start_time: int | None, workdir: str,
                    grace_s: float) -> bool:
    """``kill_agent`` run on a given Ray node, for an agent whose actor is gone."""
    return kill_agent(pid, start_time, workdir, grace_s)
