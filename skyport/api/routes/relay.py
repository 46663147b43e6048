"""The relay's sockets and the per-job secrets (``skyport.relay``; ``ROUTES.md``).

Users (certificate; the job's owner or an admin):

* ``WS /v1/jobs/{id}/relay/connect?node=K&port=P``: a stream to ``127.0.0.1:P`` on node K;
* ``WS /v1/jobs/{id}/relay/listen/{name}``: the channel for reverse streams named ``name``;
* ``WS /v1/relay/streams/{sid}``: the second leg of a reverse stream;
* ``PUT /v1/jobs/{id}/secrets/{name}``: a value the job's agents may read (kept in
  the state directory until the job ends: ``skyport.relay.secrets``).

Agents (the job's bearer token):

* ``WS /agent/v1/jobs/{id}/relay/nodes/{rank}``: the node's control channel;
* ``WS /agent/v1/jobs/{id}/relay/streams/{sid}``: the second leg of a user's stream;
* ``WS /agent/v1/jobs/{id}/relay/dial/{name}``: a reverse stream;
* ``GET /agent/v1/jobs/{id}/secrets/{name}``.

Every socket is accepted first and then answers one ``RelayReady`` frame, so a
refusal (401, 404, 409, 422) says why.  Another user's job is 404, as for every
other call (no probing of ids).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, WebSocket

from skyport.api.deps import Bearer, User, bearer, user
from skyport.core import commands as c
from skyport.core.commands import CorePort
from skyport.errors import ConflictError, NotFoundError, SkyportError, ValidationError
from skyport.models import Job
from skyport.pki import Identity
from skyport.protocol import Empty, SecretAnswer, SecretBody
from skyport.relay.hub import RelayHub, accept, refuse
from skyport.relay.secrets import JobOver

__all__ = ["NAME_RE", "job_over", "relay_router"]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
NAME_ALLOWED = "1-32 of a-z 0-9 _ -, starting with a letter or digit"


def _name(field: str, value: str) -> str:
    if not NAME_RE.match(value):
        raise ValidationError(field, value, NAME_ALLOWED)
    return value


def _int(field: str, value: str | None, low: int, high: int) -> int:
    try:
        n = int(value or "")
    except ValueError:
        n = low - 1
    if not low <= n <= high or not (value or "").strip().isdigit():
        raise ValidationError(field, value, f"an integer from {low} to {high}")
    return n


# who asks whether a job is over to drop its secrets: this process, never a caller
_SECRETS_KEEPER = Identity(username="skyport-secrets", role="admin")


def job_over(core: CorePort) -> JobOver:
    async def over(job_id: str) -> bool:
        try:
            job: Job = await core.execute(c.GetJob(_SECRETS_KEEPER, job_id))
        except NotFoundError:
            return True
        return job.state.is_terminal()

    return over


def relay_router(core: CorePort, hub: RelayHub) -> APIRouter:
    r = APIRouter()
    over = job_over(core)

    async def owned(ws: WebSocket, job_id: str) -> Job:
        who: Identity = user(ws)
        job: Job = await core.execute(c.GetJob(who, job_id))
        if job.state.is_terminal():
            raise ConflictError(f"job {job_id} is {job.state.value}: it has no relay")
        return job

    async def agent_job(ws: WebSocket, job_id: str) -> Job:
        token = bearer(ws)
        job: Job = await core.execute(c.AgentAuth(job_id, token))
        return job

    # -- users ---------------------------------------------------------------------

    @r.websocket("/v1/jobs/{job_id}/relay/connect")
    async def connect(ws: WebSocket, job_id: str) -> None:
        await accept(ws)
        try:
            job = await owned(ws, job_id)
            node = _int("node", ws.query_params.get("node", "0"), 0,
                        job.spec.resources.nodes - 1)
            port = _int("port", ws.query_params.get("port"), 1, 65535)
        except SkyportError as exc:
            await refuse(ws, exc)
            return
        await hub.connect(ws, job_id, node, port)

    @r.websocket("/v1/jobs/{job_id}/relay/listen/{name}")
    async def listen(ws: WebSocket, job_id: str, name: str) -> None:
        await accept(ws)
        try:
            await owned(ws, job_id)
            _name("name", name)
        except SkyportError as exc:
            await refuse(ws, exc)
            return
        await hub.serve_listener(ws, job_id, name)

    @r.websocket("/v1/relay/streams/{sid}")
    async def user_leg(ws: WebSocket, sid: str) -> None:
        await accept(ws)
        try:
            job_id = hub.stream_job(sid)
            if job_id is None:
                raise NotFoundError(f"no stream {sid[:8]}... waits for this side")
            await owned(ws, job_id)
        except SkyportError as exc:
            await refuse(ws, exc)
            return
        await hub.join(ws, sid, job_id, "user")

    @r.put("/v1/jobs/{job_id}/secrets/{name}")
    async def put_secret(job_id: str, name: str, body: SecretBody, who: User) -> Empty:
        """A value for the job's agents only: never in the script, an event or a log."""
        _name("name", name)
        job: Job = await core.execute(c.GetJob(who, job_id))
        if job.state.is_terminal():
            raise ConflictError(f"job {job_id} is {job.state.value}: it takes no secrets")
        hub.secrets.put(job_id, name, body.value)
        hub.secrets.start(over)  # removed once the job ends
        return Empty()

    # -- agents --------------------------------------------------------------------

    @r.websocket("/agent/v1/jobs/{job_id}/relay/nodes/{rank}")
    async def node_channel(ws: WebSocket, job_id: str, rank: str) -> None:
        await accept(ws)
        try:
            job = await agent_job(ws, job_id)
            k = _int("rank", rank, 0, job.spec.resources.nodes - 1)
        except SkyportError as exc:
            await refuse(ws, exc)
            return
        await hub.serve_node(ws, job_id, k)

    @r.websocket("/agent/v1/jobs/{job_id}/relay/streams/{sid}")
    async def agent_leg(ws: WebSocket, job_id: str, sid: str) -> None:
        await accept(ws)
        try:
            await agent_job(ws, job_id)
        except SkyportError as exc:
            await refuse(ws, exc)
            return
        await hub.join(ws, sid, job_id, "agent")

    @r.websocket("/agent/v1/jobs/{job_id}/relay/dial/{name}")
    async def dial(ws: WebSocket, job_id: str, name: str) -> None:
        await accept(ws)
        try:
            await agent_job(ws, job_id)
            _name("name", name)
        except SkyportError as exc:
            await refuse(ws, exc)
            return
        await hub.dial(ws, job_id, name)

    @r.get("/agent/v1/jobs/{job_id}/secrets/{name}")
    async def get_secret(job_id: str, name: str, token: Bearer) -> SecretAnswer:
        await core.execute(c.AgentAuth(job_id, token))
        value = hub.secrets.get(job_id, _name("name", name))
        if value is None:
            raise NotFoundError(f"job {job_id} has no secret {name!r} (yet)")
        return SecretAnswer(value=value)

    return r
