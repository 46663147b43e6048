"""Ray scaffolding shared by the ray-gate tests: a multi-node Ray cluster on this
machine, and a Sky Port control plane joined to a Ray cluster with a ``ray`` gate.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from skyport.config import GateEntry, StateDir
from skyport.controlplane import init_state, start, stop

OBJECT_STORE = 80 * 1024**2


@contextmanager
def ray_token_auth(folder: str) -> Iterator[dict[str, str]]:
    """Token authentication for the Ray processes started meanwhile (a new 0600 token file).

    The variables go into this process's environment, so that the cluster
    this process starts, this process as a driver, and a control plane started
    from here (``skyport start --address`` takes the token from them) all use
    the same token; they are restored afterwards.
    """
    token = Path(folder) / "ray-token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _reload_ray_auth()
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Make this process's Ray read the authentication variables again.

    Ray reads ``RAY_AUTH_MODE`` and the token once per process (its config and
    a token cache); a driver in this pytest process must see the new ones.
    """
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # no Ray: nothing has read them
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def local_ray_cluster(*, head_mem: int, workers: int, worker_cpus: int,
                      worker_mem: int) -> Iterator[Any]:
    """A head with no CPUs for jobs and ``workers`` worker nodes; this process a driver."""
    import ray
    from ray.cluster_utils import Cluster

    # Ray writes <RAY_TMPDIR>/ray/ray_current_cluster: keep it (and the session
    # folders, whose Unix socket paths are limited to 107 bytes) in a short private folder
    tmp = tempfile.mkdtemp(prefix="srg-", dir="/tmp")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    try:
        with ray_token_auth(tmp):
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "memory": head_mem, "object_store_memory": OBJECT_STORE,
                "include_dashboard": False})
            try:
                for _ in range(workers):
                    cluster.add_node(num_cpus=worker_cpus, memory=worker_mem,
                                     object_store_memory=OBJECT_STORE)
                cluster.wait_for_nodes(timeout=60)
                ray.init(address=cluster.address, namespace="skyport-tests",
                         log_to_driver=False)
                yield cluster
            finally:
                ray.shutdown()
                cluster.shutdown()
    finally:
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def joined_controlplane(address: str, gate_name: str,
                        gate_config: dict[str, Any]) -> Iterator[StateDir]:
    """A control plane joined to the Ray cluster at ``address``, a ``ray`` gate its only gate."""
    import ray

    home = Path(tempfile.mkdtemp(prefix="sp-", dir="/tmp"))
    state = StateDir(home)
    init_state(state)
    config = state.load_config()
    config.gates = [GateEntry(name=gate_name, type="ray", config=gate_config)]
    state.save_config(config)
    try:
        start(state, address=address)
        yield state
    finally:
        try:
            stop(state)
        finally:
            for name in ("core", "scheduler", f"gate:{gate_name}"):  # left by a killed one
                try:
                    ray.kill(ray.get_actor(name, namespace="skyport"))
                except ValueError:
                    pass
            shutil.rmtree(home, ignore_errors=True)
