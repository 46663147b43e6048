"""An idle node of a warm cluster (``skyport.core.warm``, PROTOCOL.md).

When a job ends and the Core keeps its cluster warm, each node's heartbeat
answer carries ``action: idle`` and this node's idle credential.  The agent
then ends the job on this node for good: it kills every process it still
has, empties the working directory (its own logs stay) and drops the job's
token and client.  It then long-polls ``/agent/v1/idle/{cluster}/nodes/{rank}/next``
with the idle credential (which reaches nothing else) until the Core hands the
cluster to the next job of the same owner and shape; the answer is that job's
id and token, and the agent starts over as that job's agent.
"""

from __future__ import annotations

import logging
import shutil
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

from skyport.agent.bootstrap import Bootstrap
from skyport.agent.client import AgentClient
from skyport.agent.procfs import kill_own_processes, own_processes
from skyport.errors import SkyportError
from skyport.protocol import IdleGrant, IdleNext

__all__ = ["IdleClient", "clean_node", "wait_for_next_job"]

log = logging.getLogger("skyport.agent.idle")
KEEP = frozenset({"agent.log", "agent.out"})  # the agent's own logs
POLL_S = 20.0


class IdleClient(AgentClient):
    """The one call an idle credential reaches (retries as ``AgentClient`` does)."""

    def __init__(self, control_url: str, cluster_id: str, credential: str, *,
                 ca_pem: str = "", retry_for_s: float = 600.0, **kwargs: Any) -> None:
        super().__init__(control_url, "-", credential, ca_pem=ca_pem,
                         retry_for_s=retry_for_s, **kwargs)
        self.base_url = f"{control_url.rstrip('/')}/agent/v1/idle/{cluster_id}"
        self._http.base_url = self.base_url

    def next_job(self, rank: int, wait_s: float) -> IdleNext:
        return self._call(IdleNext, "POST", f"/nodes/{rank}/next", params={"wait_s": wait_s},
                          timeout=wait_s + 30)


def clean_node(workdir: Path, grace_s: float) -> None:
    """Nothing of the last job may be left: its processes and its files."""
    if own_processes() and not kill_own_processes(grace_s):
        log.error("processes of the last job survived SIGKILL: %s",
                  [p.pid for p in own_processes()])
    for entry in workdir.iterdir():
        if entry.name in KEEP:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def wait_for_next_job(boot: Bootstrap, idle: IdleGrant, retry_for_s: float,
                      grace_s: float) -> Bootstrap | None:
    """Idle until the Core assigns this node's cluster to a job; None when it never will."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # deleting the cluster ends an idle node
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    clean_node(Path(boot.workdir), grace_s)
    log.info("job %s is over; node %s idles in warm cluster %s", boot.job_id, boot.node_name,
             idle.cluster_id)
    try:
        # bound before ``with``: AgentClient.__enter__ is typed to return the base class
        client = IdleClient(boot.control_url, idle.cluster_id, idle.credential,
                            ca_pem=boot.ca_pem, retry_for_s=retry_for_s)
        with client:
            while True:
                answer = client.next_job(boot.node_rank, POLL_S)
                if answer.action == "assign" and answer.job_id and answer.token:
                    log.info("assigned to job %s", answer.job_id)
                    return replace(boot, job_id=answer.job_id, token=answer.token)
                if answer.action != "wait":
                    log.info("the Core ends this idle node (%s)", answer.action)
                    return None
    except SkyportError as exc:
        log.info("idle node ends: %s", exc)
        return None
