"""``skyport forward``: a local port to a port on a job's node, through the relay.

No node opens an inbound port (``skyport.relay``): this dials out with the
user's certificate and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from skyport.cli.app import Output, cli, command, get_client
from skyport.errors import NotFoundError, SkyportError, ValidationError
from skyport.relay.forwarder import Forwarder, Target, run_forwarder


@command(cli, "forward")
@click.argument("job_id")
@click.argument("port", type=click.IntRange(1, 65535), required=False)
@click.option("--node", type=click.IntRange(0, 4095), default=0, show_default=True,
              help="the job's node whose 127.0.0.1:PORT to reach")
@click.option("--local-port", type=click.IntRange(0, 65535), default=0,
              help="listen on 127.0.0.1:LOCAL_PORT (default: a free one)")
@click.option("--reverse", multiple=True, metavar="NAME=HOST:PORT",
              help="carry the job's reverse streams NAME to HOST:PORT on this host")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path),
              help="write {pid, local_port, job_id} here once listening")
def forward_cmd(out: Output, job_id: str, port: int | None, node: int, local_port: int,
                reverse: tuple[str, ...], ready_file: Path | None) -> None:
    """Forward 127.0.0.1:LOCAL_PORT here to 127.0.0.1:PORT on a node of JOB_ID.

    Runs until the job ends (or Ctrl-C); each connection is one relayed stream.
    """
    targets: dict[str, Target] = {}
    for item in reverse:
        name, _, where = item.partition("=")
        try:
            targets[name] = Target.parse(where)
        except ValueError:
            raise ValidationError("--reverse", item, "NAME=HOST:PORT") from None
    if port is None and not targets:
        raise ValidationError("port", None, "a port on the node, or at least one --reverse")
    client = get_client()
    client.job(job_id)  # a clear error now for an unknown or another user's job

    async def job_over() -> str | None:
        try:
            job = await asyncio.to_thread(client.job, job_id)
        except NotFoundError as exc:
            return str(exc)
        except SkyportError:
            return None  # the control plane restarting: keep going
        return f"job {job_id} is {job.state.value}" if job.state.is_terminal() else None

    fwd = Forwarder(client.url, client.ssl_context, job_id, port=port, node=node,
                    local_port=local_port, reverse=targets, job_over=job_over)
    if port is not None and not out.json:
        click.echo(f"forwarding 127.0.0.1:{local_port or '(free port)'} -> "
                   f"{job_id} node {node} 127.0.0.1:{port} (Ctrl-C ends)", err=True)
    why = run_forwarder(fwd, ready_file)
    out.emit({"job_id": job_id, "local_port": fwd.local_port, "streams": fwd.streams,
              "ended": why}, f"forward ended: {why} ({fwd.streams} streams)")


@command(cli, "jupyter")
@click.option("--gate", help="the gate to run on (default: the scheduler's choice)")
@click.option("--flavor", help="the node shape")
@click.option("--nodes", default="1", show_default=True)
@click.option("--cpus", default="1", show_default=True, help="CPUs per node")
@click.option("--mem", "memory", help="memory per node, e.g. 4G")
@click.option("--gpus", default="0", show_default=True, help="GPUs per node")
@click.option("--time", "time_limit", default="04:00:00", show_default=True)
@click.option("--local-port", type=click.IntRange(0, 65535), default=0,
              help="listen on 127.0.0.1:LOCAL_PORT (default: a free one)")
@click.option("--keep", is_flag=True, help="leave the job running when this ends")
def jupyter_cmd(out: Output, gate: str | None, flavor: str | None, nodes: str, cpus: str,
                memory: str | None, gpus: str, time_limit: str, local_port: int,
                keep: bool) -> None:
    """A notebook server as a job, reached at a local URL through the relay (no hub).

    Prints http://127.0.0.1:PORT/?token=... once the server answers; Ctrl-C ends
    the forward and cancels the job (unless --keep).
    """
    from skyport.jupyter.session import run_notebook  # jupyter_server is needed on nodes only

    def note(text: str) -> None:
        if not out.json:
            click.echo(text, err=True)

    run_notebook(get_client(), {
        "gate": gate, "flavor": flavor, "nodes": nodes, "cpus": cpus, "memory": memory,
        "gpus": gpus, "time": time_limit},
        on_url=lambda job_id, url: out.emit({"job_id": job_id, "url": url}, url),
        note=note, local_port=local_port, keep=keep)
