"""Checkpoint and recovery commands: checkpoint, requeue, debug kill-node|preempt.

``skyport checkpoint`` without a job id is meant for inside a job: it asks the
node's agent over ``$SKYPORT_LAUNCH_SOCKET`` (no certificate, no token) and
returns once the checkpoint is stored.  ``skyport cancel --checkpoint`` lives
with ``cancel`` in ``jobs``.
"""

from __future__ import annotations

import os

import click

from skyport import checkpoint as ck
from skyport.cli.app import Output, cli, command, get_client
from skyport.errors import SkyportError


class _CheckpointFailedError(SkyportError):
    pass


@command(cli, "checkpoint")
@click.argument("job_id", required=False)
@click.option("--no-wait", is_flag=True, help="inside a job: return before it is stored")
@click.option("--timeout", type=float, default=300.0, metavar="S", help="inside a job: wait S")
def checkpoint_cmd(out: Output, job_id: str | None, no_wait: bool, timeout: float) -> None:
    """Take a checkpoint now: of JOB_ID, or (no id, inside a job) of this job."""
    if job_id is None:
        if not os.environ.get("SKYPORT_LAUNCH_SOCKET"):
            raise _CheckpointFailedError("no job id given and not inside a Sky Port job")
        try:
            version = ck.request(wait=not no_wait, timeout_s=timeout,
                                 reason="skyport checkpoint (in the job)")
        except ck.CheckpointError as exc:
            raise _CheckpointFailedError(str(exc)) from exc
        out.emit({"version": version}, f"checkpoint v{version}" if version else "requested")
        return
    opened = get_client().checkpoint(job_id)
    out.emit(opened, f"{job_id}: checkpoint v{opened.version} requested")


@command(cli, "checkpoints")
@click.argument("job_id")
def checkpoints_cmd(out: Output, job_id: str) -> None:
    """A job's latest complete checkpoint (version, time, files) and any pending one."""
    got = get_client().checkpoints(job_id)
    latest = got.latest

    def text() -> str:
        if latest is None:
            line = f"{job_id}: no checkpoint yet"
        else:
            line = (f"{job_id}: v{latest.version} at {latest.time} "
                    f"({len(latest.files)} files, {latest.bytes} bytes; {latest.reason})")
        return line + (f"; v{got.pending} pending" if got.pending else "")

    out.emit(got, text)


@command(cli, "requeue")
@click.argument("job_id")
def requeue_cmd(out: Output, job_id: str) -> None:
    """Requeue a running job: checkpoint, new cluster, resume from the checkpoint."""
    job = get_client().requeue(job_id)
    out.emit(job.summary(), f"{job.id} {job.state.value}: requeue asked for")


@cli.group("debug")
def debug() -> None:
    """Inject failures (admins): lose a node, preempt a job."""


@command(debug, "kill-node")
@click.argument("job_id")
@click.argument("node", required=False, type=int)
def kill_node_cmd(out: Output, job_id: str, node: int | None) -> None:
    """SIGKILL one node's agent session (default: the job's last node)."""
    got = get_client().debug_kill_node(job_id, node)
    out.emit(got, f"{job_id}: node {got.node} of {got.cluster_id} killed")


@command(debug, "preempt")
@click.argument("job_id")
@click.option("--notice", "notice_s", type=float, default=20.0, metavar="S",
              help="seconds between the notice and the reclaim")
def preempt_cmd(out: Output, job_id: str, notice_s: float) -> None:
    """Send the job's nodes a preemption notice; it checkpoints and is requeued."""
    got = get_client().debug_preempt(job_id, notice_s)
    out.emit(got, f"{job_id}: preemption notice sent ({notice_s:g}s)")
