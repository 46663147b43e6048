"""``skyport jupyter``: one user's notebook server as a job, with no hub.

The server (``jupyter-server``) binds 127.0.0.1 on node 0; its token is a job
secret (never in the script, an event or a log); this process forwards a
local port to it through the relay and prints the URL once the server answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable
from typing import Any

import httpx

from skyport.client.core import Client
from skyport.errors import JobFailedError, NotFoundError, SkyportError
from skyport.jupyter.node import ENV_SECRET, pick_node_port
from skyport.jupyter.options import server_spec
from skyport.jupyter.progress import failure_message
from skyport.models import JobState
from skyport.protocol import Empty, SecretBody
from skyport.relay.forwarder import Forwarder

__all__ = ["run_notebook"]


def run_notebook(client: Client, options: dict[str, Any], *, on_url: Callable[[str, str], None],
                 note: Callable[[str], None] = lambda text: None, local_port: int = 0,
                 keep: bool = False) -> None:
    """Submit, forward, call ``on_url(job_id, url)`` once the server answers; until the job
    ends or Ctrl-C (the job is then cancelled unless ``keep``)."""
    port = pick_node_port()
    token = secrets.token_hex(24)
    argv = ["jupyter-server", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
            "--ServerApp.open_browser=False"]
    spec = server_spec({k: v for k, v in options.items() if v}, name="jupyter", argv=argv)
    job = client.submit(spec)
    try:
        client.call("PUT", f"/v1/jobs/{job.id}/secrets/{ENV_SECRET}", Empty,
                    body=SecretBody(value=json.dumps({"JUPYTER_TOKEN": token})))
        note(f"job {job.id}: waiting for the server (Ctrl-C cancels)")

        async def job_over() -> str | None:
            try:
                got = await asyncio.to_thread(client.job, job.id)
            except NotFoundError as exc:
                return str(exc)
            except SkyportError:
                return None
            return f"job {job.id} is {got.state.value}: {got.reason}" \
                if got.state.is_terminal() else None

        fwd = Forwarder(client.url, client.ssl_context, job.id, port=port,
                        local_port=local_port, job_over=job_over)
        asyncio.run(_serve(client, on_url, fwd, job.id, token))
    finally:
        if not keep:
            with contextlib.suppress(SkyportError):
                if not client.job(job.id).state.is_terminal():
                    client.cancel(job.id)


async def _serve(client: Client, on_url: Callable[[str, str], None], fwd: Forwarder,
                 job_id: str, token: str) -> None:
    local = await fwd.start()
    runner = asyncio.create_task(fwd.run())
    url = f"http://127.0.0.1:{local}/?token={token}"
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            while not runner.done():
                job = await asyncio.to_thread(client.job, job_id)
                if job.state.is_terminal():
                    said = ""
                    with contextlib.suppress(SkyportError):
                        said = await asyncio.to_thread(client.log_tail, job_id)
                    raise JobFailedError(failure_message(job, said),
                                         job_id=job_id, state=job.state.value,
                                         exit_code=job.exit_code)
                if job.state == JobState.RUNNING:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"http://127.0.0.1:{local}/api")).status_code < 500:
                            break
                await asyncio.sleep(0.5)
        on_url(job_id, url)
        await runner
    finally:
        fwd.stop()
        with contextlib.suppress(BaseException):
            await runner
