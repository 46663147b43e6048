"""Where the time of one submission goes: each hop timed on its own.

    python -m benchmarks.system.hops [--n 200]

Starts a private control plane and times, sequentially, from one client:

- ``fsync``: one SQLite insert committed with ``synchronous=FULL`` in a fresh
  WAL database beside the state directory (the durable floor of one job);
- ``core_inproc``: ``CoreService.submit`` in this process (intake, storage,
  store), no HTTP, no Ray, in the test double whose Core loop runs on the same
  event loop: the planning passes that each submission triggers delay it;
- ``ray_call``: a trivial call on a Ray actor from the driver, the price of one
  hop to an actor;
- ``bare_post``: the same POST body to the minimal HTTPS+mTLS endpoint;
- ``whoami``: ``GET /v1/whoami`` on the real API (TLS, HTTP, FastAPI, the
  certificate check; no Core);
- ``get_job``: ``GET /v1/jobs/{id}`` (the above plus one Core call over Ray);
- ``submit``: ``Client.submit``, the whole path.

Each figure is a median in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.system.measures import spec
from benchmarks.system.plane import USER, bare_get, bare_post, echo_server, private_plane
from skyport.controlplane import ray_auth_env


def _median_ms(call: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def fsync_floor(where: Path, n: int) -> float:
    db = sqlite3.connect(str(where / "floor.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    body = "x" * 1500

    def one() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES (?)", (body,))
        db.execute("COMMIT")

    try:
        return _median_ms(one, n)
    finally:
        db.close()


def core_inproc(where: Path, n: int) -> float:
    from skyport.client.testing import TestControlPlane
    from skyport.pki import Identity

    plane = TestControlPlane(where / "inproc")
    try:
        who = Identity(USER, "user")
        s = spec("memory")
        return _median_ms(lambda: plane._run(plane.service.submit(who, s)), n)
    finally:
        plane.close()


def ray_call(n: int) -> float:
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def ping(self, x: object) -> object:
            return x

    actor = Echo.remote()  # type: ignore[attr-defined]
    ray.get(actor.ping.remote(0))
    try:
        return _median_ms(lambda: ray.get(actor.ping.remote(0)), n)
    finally:
        ray.kill(actor)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.system.hops")
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    n = args.n
    out: dict[str, float] = {}

    def shown(name: str, value: float) -> None:
        out[name] = value
        print(f"{name:12} {value:8.2f} ms", flush=True)

    with tempfile.TemporaryDirectory(prefix="hops-", dir="/tmp") as tmp:
        shown("fsync", fsync_floor(Path(tmp), n))
        shown("core_inproc", core_inproc(Path(tmp), n))
    with private_plane() as plane:
        s = spec("accept")
        body = {"spec": s.model_dump(mode="json"), "payload_b64": None}
        with plane.client() as client, echo_server(plane) as bare:
            client.whoami()
            bare_get(bare)
            shown("bare_get", _median_ms(lambda: bare_get(bare), n))
            shown("bare_post", _median_ms(lambda: bare_post(bare, body), n))
            shown("whoami", _median_ms(client.whoami, n))
            job = client.submit(s)
            shown("get_job", _median_ms(lambda: client.job(job.id), n))
            shown("status", _median_ms(client.status, max(5, n // 10)))
            shown("submit", _median_ms(lambda: client.submit(s), n))
            client.cancel_many(all=True)
        # a driver of its own: Ray reads its token settings once per process
        address = json.loads(plane.state.address_path.read_text()).get("ray_address")
        env = {**os.environ, **ray_auth_env(plane.state)}
        code = (f"from benchmarks.system.hops import ray_call; import ray; "
                f"ray.init(address={address!r}, namespace='hops', log_to_driver=False); "
                f"print(ray_call({n}))")
        ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parents[2])
        try:
            shown("ray_call", float(ran.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            print(ran.stderr[-2000:])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
