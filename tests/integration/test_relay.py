"""The relay (skyport.relay): TCP streams to and from a job's node through no open port.

A job on the local gate serves a TCP echo and a WebSocket echo on 127.0.0.1;
a forwarder (the user's certificate, dialling out only) reaches them through
the control plane, many connections at once, half-closes and a WebSocket
upgrade included; a reverse stream lets the payload call a server on the
user's side.  Another user, a missing token, a bad port or node are refused
and change nothing; cancelling the job ends the forwarder.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect as ws_connect

from skyport.errors import (
    AuthenticationError,
    NotFoundError,
    SkyportError,
    ValidationError,
)
from skyport.models import JobState
from skyport.relay.forwarder import Forwarder, Target
from skyport.relay.legs import open_leg, ws_url
from skyport.script import build_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SERVER = r'''
import asyncio, sys
from websockets.asyncio.server import serve
from skyport.relay.payload import relay_listen

ECHO, WS = int(sys.argv[1]), int(sys.argv[2])

async def echo(r, w):
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.write_eof()  # the client half-closed: answer in kind once all is echoed
    await w.drain()
    w.close()

async def ws_echo(ws):
    async for m in ws:
        await ws.send(m)

async def reverse():
    port = await asyncio.to_thread(relay_listen, "back")
    print("reverse port", port, flush=True)
    for _ in range(600):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"ping")
            w.write_eof()
            got = await r.read()
            w.close()
            if got:
                print("reverse:", got.decode(), flush=True)
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)

async def main():
    await asyncio.start_server(echo, "127.0.0.1", ECHO)
    await serve(ws_echo, "127.0.0.1", WS)
    print("listening", flush=True)
    await reverse()
    await asyncio.Event().wait()

asyncio.run(main())
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Back:
    """The user's side server the job calls through a reverse stream: answers pong:<data>."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                conn.sendall(b"pong:" + data)


class _Running:
    """A forwarder in a thread with its own event loop."""

    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.ended: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(30)

    def _run(self) -> None:
        async def main() -> None:
            await self.fwd.start()
            self.started.set()
            self.ended.append(await self.fwd.run())

        self.loop.run_until_complete(main())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.fwd.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def served(controlplane) -> Iterator[dict]:
    alice = controlplane.client("alice")
    echo_port, ws_port = _free_port(), _free_port()
    script = ("#!/bin/bash\n#SKYPORT --name=relay-echo --nodes=1 --cpus-per-node=1 "
              "--time=00:10:00\ncat > server.py <<'PY'\n" + SERVER + "PY\n"
              f'exec "$SKYPORT_PYTHON" server.py {echo_port} {ws_port}\n')
    job = alice.submit(build_spec(script))
    deadline = time.monotonic() + 120
    while b"listening" not in alice.logs(job.id).data:
        state = alice.job(job.id).state
        assert not state.is_terminal(), (alice.job(job.id).reason,
                                          alice.logs(job.id, "stderr").data.decode())
        assert time.monotonic() < deadline, "the job's servers did not start"
        time.sleep(0.3)
    back = _Back()
    state: dict[str, str | None] = {"over": None}

    async def job_over() -> str | None:
        return state["over"]

    fwd = _Running(Forwarder(alice.url, alice.ssl_context, job.id, port=echo_port,
                             reverse={"back": Target("127.0.0.1", back.port)},
                             job_over=job_over, poll_s=0.2))
    yield {"cp": controlplane, "alice": alice, "job": job, "fwd": fwd, "echo": echo_port,
           "ws": ws_port, "state": state}
    fwd.stop()
    alice.cancel(job.id) if not alice.job(job.id).state.is_terminal() else None
    back.sock.close()
    alice.close()


def _echo_once(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # a half-close crosses the relay
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def test_many_concurrent_streams_echo_every_byte(served) -> None:
    port = served["fwd"].fwd.local_port
    payloads = [os.urandom(1000 + 7919 * i) for i in range(40)]  # up to ~300 KB each
    results: dict[int, bytes] = {}

    def one(i: int) -> None:
        results[i] = _echo_once(port, payloads[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(len(payloads)))
    for i, p in enumerate(payloads):
        assert results[i] == p, f"stream {i}: {len(results[i])} of {len(p)} bytes back"


def test_a_websocket_upgrade_passes_through_unchanged(served) -> None:
    alice, job = served["alice"], served["job"]

    async def go() -> list[bytes | str]:
        fwd = Forwarder(alice.url, alice.ssl_context, job.id, port=served["ws"])
        local = await fwd.start()
        try:
            async with ws_connect(f"ws://127.0.0.1:{local}/", compression=None) as ws:
                got: list[bytes | str] = []
                for message in ("hello", b"\x00\x01binary\xff" * 1000, "x" * 200_000):
                    await ws.send(message)
                    got.append(await ws.recv())
                return got
        finally:
            fwd.stop()
            await fwd.run()

    assert asyncio.run(go()) == ["hello", b"\x00\x01binary\xff" * 1000, "x" * 200_000]


def test_the_payload_reaches_the_users_side_through_a_reverse_stream(served) -> None:
    alice, job = served["alice"], served["job"]
    deadline = time.monotonic() + 90
    while b"reverse:" not in alice.logs(job.id).data:
        assert time.monotonic() < deadline, alice.logs(job.id).data.decode()
        time.sleep(0.3)
    assert b"reverse: pong:ping" in alice.logs(job.id).data


def _refusal(url: str, ctx, headers=None) -> SkyportError:
    async def go() -> None:
        ws = await open_leg(url, ssl_context=ctx, headers=headers)
        await ws.close()

    with pytest.raises(SkyportError) as info:
        asyncio.run(go())
    return info.value


def test_another_user_a_missing_token_and_bad_input_are_refused(served) -> None:
    cp, alice, job = served["cp"], served["alice"], served["job"]
    base = ws_url(alice.url, f"/v1/jobs/{job.id}")
    with cp.client("bob") as bob:
        # another user's job is the same as no job (no probing of ids)
        err = _refusal(f"{base}/relay/connect?port={served['echo']}", bob.ssl_context)
        assert isinstance(err, NotFoundError), err
        assert isinstance(_refusal(f"{base}/relay/listen/back", bob.ssl_context),
                          NotFoundError)
        # nor can bob put a secret for alice's job
        with pytest.raises(NotFoundError):
            bob.call("PUT", f"/v1/jobs/{job.id}/secrets/token", dict,
                     json={"value": "x"})
    for bad in ("port=0", "port=70000", "port=80&node=1", "port=abc", "node=-1&port=80"):
        err = _refusal(f"{base}/relay/connect?{bad}", alice.ssl_context)
        assert isinstance(err, ValidationError), (bad, err)
    agent = ws_url(alice.url, f"/agent/v1/jobs/{job.id}")
    assert isinstance(_refusal(f"{agent}/relay/nodes/0", alice.ssl_context),
                      AuthenticationError)  # a certificate is no job token
    err = _refusal(f"{agent}/relay/streams/nonesuch", alice.ssl_context,
                   {"Authorization": "Bearer forged"})
    assert "token" in str(err)
    err = _refusal(ws_url(alice.url, "/v1/relay/streams/nonesuch"), alice.ssl_context)
    assert isinstance(err, NotFoundError)
    assert isinstance(_refusal(f"{base}/relay/listen/Bad.Name", alice.ssl_context),
                      ValidationError)
    _refusal(f"{base}/relay/listen/..%2Fx", alice.ssl_context)  # no such route: refused
    # a port with nothing listening on the node: the stream fails at once, with the reason
    err = _refusal(f"{base}/relay/connect?port={_free_port()}", alice.ssl_context)
    assert "could not connect" in str(err), err
    # the job's own streams still work after all that
    assert _echo_once(served["fwd"].fwd.local_port, b"still here") == b"still here"


def test_cancelling_the_job_ends_the_forwarder_and_its_port(served) -> None:
    alice, job, fwd = served["alice"], served["job"], served["fwd"]
    alice.cancel(job.id)
    assert alice.wait(job.id, timeout=60).state == JobState.CANCELLED
    served["state"]["over"] = f"job {job.id} is CANCELLED"
    fwd.thread.join(30)
    assert fwd.ended == [f"job {job.id} is CANCELLED"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", fwd.fwd.local_port), timeout=5).close()
    err = _refusal(ws_url(alice.url, f"/v1/jobs/{job.id}/relay/connect?port=80"),
                   alice.ssl_context)
    assert "CANCELLED" in str(err)


def test_a_secret_put_before_a_control_plane_restart_reaches_the_job_after_it(
        fresh_controlplane) -> None:
    cp = fresh_controlplane()
    cp.add_user("alice")
    secret = "s3cr3t-" + os.urandom(8).hex()
    # the payload reads "env" only once "go" is put, after the restart (asking again
    # while the control plane is down)
    script = ("#!/bin/bash\n#SKYPORT --name=secret-reader --cpus-per-node=1 --time=00:10:00\n"
              'until "$SKYPORT_PYTHON" -m skyport.relay.payload secret go >/dev/null 2>&1; '
              "do sleep 1; done\n"
              '"$SKYPORT_PYTHON" -m skyport.relay.payload secret env | rev\n')
    with cp.client("alice") as alice:
        job = alice.submit(build_spec(script))
        alice.call("PUT", f"/v1/jobs/{job.id}/secrets/env", dict, json={"value": secret})
        kept = cp.home / "secrets" / f"{job.id}.json"
        assert kept.stat().st_mode & 0o077 == 0
        deadline = time.monotonic() + 120
        while alice.job(job.id).state != JobState.RUNNING:
            assert time.monotonic() < deadline, alice.job(job.id).reason
            time.sleep(0.3)
    cp.stop()
    cp.start()
    with cp.client("alice") as alice:
        alice.call("PUT", f"/v1/jobs/{job.id}/secrets/go", dict, json={"value": "1"})
        deadline = time.monotonic() + 180
        while not (done := alice.job(job.id)).state.is_terminal():
            assert time.monotonic() < deadline, (done.state, alice.logs(job.id).data,
                                                 alice.logs(job.id, "stderr").data)
            time.sleep(0.5)
        assert done.state == JobState.SUCCEEDED, (done.reason, alice.logs(
            job.id, "stderr").data.decode())
        assert alice.logs(job.id).data.decode().strip() == secret[::-1]
        deadline = time.monotonic() + 60
        while kept.exists():  # gone with the job
            assert time.monotonic() < deadline, "the ended job's secret is still kept"
            time.sleep(0.5)
