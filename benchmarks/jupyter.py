"""Notebook servers as jobs: spawn to ready, and a kernel round trip through the relay vs direct.

    python -m benchmarks.jupyter --home /tmp/sp-bench [--spawns 3] [--round-trips 200]

Against a running control plane (``--home``; one is made and started there if
it has none) with the local gate.  Spawn to ready: from ``submit`` until the
server (``jupyter-server``, 1 CPU) answers ``/api`` through the relay, split at
the job's RUNNING.  Round trip: ``execute_request("1")`` -> ``execute_reply`` on
one kernel's WebSocket, through the relay (forwarder -> control plane ->
agent) and, as the baseline in the same run, directly to the server's
127.0.0.1 port (the local gate's nodes are on this machine), alternating in
rounds so that the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect as ws_connect

from skyport.client import connect
from skyport.client.core import Client
from skyport.config import StateDir
from skyport.controlplane import init_state, running_address, start
from skyport.jupyter.node import ENV_SECRET
from skyport.jupyter.options import server_spec
from skyport.models import JobState
from skyport.protocol import Empty, SecretBody
from skyport.relay.forwarder import Forwarder


class _Forward:
    def __init__(self, client: Client, job_id: str, port: int) -> None:
        self.fwd = Forwarder(client.url, client.ssl_context, job_id, port=port)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                await self.fwd.start()
                ready.set()
                await self.fwd.run()
            self.loop.run_until_complete(main())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(30)
        self.port = self.fwd.local_port

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.fwd.stop)
        self.thread.join(30)


def _spawn(client: Client) -> tuple[str, int, str, _Forward, dict[str, float]]:
    port, token = random.randint(20000, 60000), secrets.token_hex(16)
    spec = server_spec({"cpus": 1, "time": "00:30:00", "gate": "local"}, name="bench-jupyter",
                       argv=["jupyter-server", "--ip=127.0.0.1", f"--port={port}",
                             "--port-retries=0", "--ServerApp.open_browser=False"])
    t0 = time.perf_counter()
    job = client.submit(spec)
    client.call("PUT", f"/v1/jobs/{job.id}/secrets/{ENV_SECRET}", Empty,
                body=SecretBody(value=json.dumps({"JUPYTER_TOKEN": token})))
    fwd = _Forward(client, job.id, port)
    running_s = None
    while True:
        state = client.job(job.id).state
        if state.is_terminal():
            raise RuntimeError(f"job {job.id} ended {state.value}")
        if state == JobState.RUNNING and running_s is None:
            running_s = time.perf_counter() - t0
        if running_s is not None:
            try:
                if httpx.get(f"http://127.0.0.1:{fwd.port}/api", timeout=5).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    ready_s = time.perf_counter() - t0
    return job.id, port, token, fwd, {"to_running_s": round(running_s, 2),
                                      "to_ready_s": round(ready_s, 2)}


def _round_trips(port: int, token: str, kernel: str, n: int) -> list[float]:
    headers = {"Authorization": f"token {token}"}
    times = []
    with ws_connect(f"ws://127.0.0.1:{port}/api/kernels/{kernel}/channels",
                    additional_headers=headers, open_timeout=60) as ws:
        session = uuid.uuid4().hex
        for _ in range(n):
            msg_id = uuid.uuid4().hex
            request = {"header": {"msg_id": msg_id, "username": "bench", "session": session,
                                  "msg_type": "execute_request", "version": "5.3", "date": ""},
                       "parent_header": {}, "metadata": {}, "channel": "shell",
                       "content": {"code": "1", "silent": False, "store_history": False,
                                   "user_expressions": {}, "allow_stdin": False}}
            t0 = time.perf_counter()
            ws.send(json.dumps(request))
            while True:
                msg = json.loads(ws.recv(timeout=60))
                if msg.get("parent_header", {}).get("msg_id") == msg_id \
                        and msg["msg_type"] == "execute_reply":
                    break
            times.append(time.perf_counter() - t0)
    return times


def _ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1000, 2),
            "p95_ms": round(xs[int(0.95 * (len(xs) - 1))] * 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--spawns", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    state = StateDir(args.home)
    if not (args.home / "config.json").exists():
        init_state(state, local_cpus=4)
    if running_address(state) is None:
        start(state)
    client = connect(args.home)
    spawns: list[dict[str, float]] = []
    results: dict[str, Any] = {}
    try:
        for i in range(args.spawns):
            job_id, port, token, fwd, timing = _spawn(client)
            spawns.append(timing)
            if i < args.spawns - 1:
                fwd.close()
                client.cancel(job_id)
        headers = {"Authorization": f"token {token}"}
        kernel = httpx.post(f"http://127.0.0.1:{fwd.port}/api/kernels", headers=headers,
                            json={"name": "python3"}, timeout=120).json()["id"]
        relay: list[float] = []
        direct: list[float] = []
        per = max(1, args.round_trips // args.rounds)
        _round_trips(port, token, kernel, 20)  # warm the kernel
        for _ in range(args.rounds):
            relay += _round_trips(fwd.port, token, kernel, per)
            direct += _round_trips(port, token, kernel, per)
        fwd.close()
        client.cancel(job_id)
        results = {
            "spawns": spawns,
            "spawn_to_ready_median_s": statistics.median(s["to_ready_s"] for s in spawns),
            "round_trip_relay": _ms(relay), "round_trip_direct": _ms(direct),
            "relay_over_direct": round(statistics.median(relay) / statistics.median(direct), 2),
            "round_trips_each": len(relay),
        }
    finally:
        client.close()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
