"""The control plane as a process: set up a state directory, start, stop.

``skyport start`` runs ``python -m skyport.controlplane --home H`` in the
background.  That process starts (or joins) Ray, creates the Gate, Scheduler
and Core actors in namespace ``skyport``, and serves the REST API over
mutual TLS until it gets SIGTERM.  Everything durable is in the state
directory, so the process can be killed at any moment and started again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from skyport import pki
from skyport.agent.procfs import kill_sessions, members, proc_stat
from skyport.config import ControlPlaneConfig, GateEntry, StateDir, free_port
from skyport.errors import ConfigError, ConflictError, ControlPlaneError

log = logging.getLogger("skyport.controlplane")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0


def init_state(
    state: StateDir,
    *,
    force: bool = False,
    local_cpus: int | None = None,
    local_gpus: list[int] | None = None,
    storage: str | None = None,
    storage_options: dict[str, Any] | None = None,
    policy: str = "fcfs",
    port: int | None = None,
    gates: list[GateEntry] | None = None,
) -> dict[str, Any]:
    """Create the state directory: CA, server and admin certificates, config, storage.

    ``gates`` replaces the default (one local gate sized by ``local_cpus``/``local_gpus``).
    """
    if state.exists() and not force:
        raise ConflictError(
            f"{state.root} is already a Sky Port state directory "
            "(use --force to rewrite its config; certificates are kept)"
        )
    if is_running(state):
        raise ConflictError(f"the control plane of {state.root} is running: stop it first")
    for path in (state.root, state.storage, state.run):
        path.mkdir(parents=True, exist_ok=True)
    os.chmod(state.root, 0o700)
    if not pki.ca_cert_path(state.pki).exists():
        pki.init_ca(state.pki)
    hostnames = sorted({"localhost", socket.gethostname()})
    pki.issue_server_cert(state.pki, hostnames)
    if not state.user_cert("admin")[0].exists():
        pki.issue_user_cert(state.pki, "admin", role="admin")
    local: dict[str, Any] = {}
    if local_cpus is not None:
        local["cpus"] = local_cpus
    if local_gpus is not None:
        local["gpus"] = local_gpus
    config = ControlPlaneConfig(
        api_port=port or free_port(),
        storage_url=storage or "",
        storage_options=storage_options or {},
        policy=policy,
        gates=list(gates) if gates else [GateEntry(name="local", type="local", config=local)],
    )
    _check_policy(config.policy)
    state.save_config(config)
    return {
        "home": str(state.root),
        "config": str(state.config_path),
        "api_port": config.api_port,
        "storage": config.storage_url or state.storage.as_uri(),
        "admin_cert": str(state.user_cert("admin")[0]),
    }


def _check_policy(name: str) -> None:
    try:
        from skyport.timetable import registry
    except ImportError:
        return
    registry.load_policy(name)


# -- start / stop from the terminal --------------------------------------------


def _read_pid_file(state: StateDir) -> tuple[int, int | None] | None:
    try:
        words = state.pid_path.read_text().split()
        return int(words[0]), (int(words[1]) if len(words) > 1 else None)
    except (OSError, ValueError, IndexError):
        return None


def read_pid(state: StateDir) -> int | None:
    found = _read_pid_file(state)
    return found[0] if found else None


def _reap_leftovers(state: StateDir) -> None:
    """Kill what a dead control plane left in its session (Ray's worker processes).

    The control plane runs in a session of its own, and Ray's workers stay in
    it; when the control plane is killed they are orphaned.  Only processes of
    that session are touched, never anything found by name.
    """
    found = _read_pid_file(state)
    if found is None or _alive(found[0]):
        return
    # a raylet still dying can start another worker meanwhile: sweep until none is left
    for _ in range(5):
        kill_sessions([found], grace_s=2.0)
        time.sleep(0.5)
        if not members(sessions={found[0]}):
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def is_running(state: StateDir) -> bool:
    pid = read_pid(state)
    return pid is not None and _alive(pid)


def running_address(state: StateDir) -> dict[str, Any] | None:
    try:
        return json.loads(state.address_path.read_text())
    except (OSError, ValueError):
        return None


def start(
    state: StateDir,
    *,
    address: str | None = None,
    foreground: bool = False,
    timeout_s: float = START_TIMEOUT_S,
) -> dict[str, Any]:
    """Start the control plane in the background and wait until its API answers."""
    state.load_config()
    if is_running(state):
        raise ConflictError(
            f"the control plane of {state.root} is already running (pid {read_pid(state)})"
        )
    cmd = [sys.executable, "-m", "skyport.controlplane", "--home", str(state.root)]
    if address:
        cmd += ["--address", address]
    if foreground:
        os.execv(sys.executable, cmd)
    state.run.mkdir(parents=True, exist_ok=True)
    state.address_path.unlink(missing_ok=True)
    with open(state.log_path, "ab") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            env=_env(),
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = running_address(state)
        if info and info.get("pid") == proc.pid:
            return {"home": str(state.root), "pid": proc.pid, **info}
        if proc.poll() is not None:
            raise ControlPlaneError(
                f"the control plane exited with status {proc.returncode} while starting; "
                f"see {state.log_path}:\n{_tail(state.log_path)}"
            )
        time.sleep(0.2)
    proc.terminate()
    raise ControlPlaneError(
        f"the control plane did not start within {timeout_s:.0f} s; see {state.log_path}"
    )


def stop(state: StateDir, *, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, Any]:
    pid = read_pid(state)
    if pid is None or not _alive(pid):
        _reap_leftovers(state)
        state.pid_path.unlink(missing_ok=True)
        state.address_path.unlink(missing_ok=True)
        return {"home": str(state.root), "stopped": False, "reason": "not running"}
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    killed = False
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        killed = True
    _reap_leftovers(state)
    state.pid_path.unlink(missing_ok=True)
    state.address_path.unlink(missing_ok=True)
    return {"home": str(state.root), "stopped": True, "pid": pid, "killed": killed}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


def ray_temp_dir(state: StateDir) -> str:
    # Unix socket paths are limited to 107 bytes: keep Ray's session dir short
    digest = hashlib.sha256(str(state.root).encode()).hexdigest()[:8]
    return os.path.join(tempfile.gettempdir(), f"sp-{digest}")


# -- the control plane process itself ------------------------------------------


def run(state: StateDir, ray_address: str | None = None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from skyport.api.app import create_app
    from skyport.api.tls import serve
    from skyport.core.actor import NAMESPACE, CoreActor, GateActor, SchedulerActor
    from skyport.remote import ActorProxy
    from skyport.storage import JobStorage
    from skyport.users import UserRegistry

    config = state.load_config()
    me = proc_stat(os.getpid())
    state.pid_path.write_text(f"{os.getpid()} {me.start_time if me else ''}\n")
    if ray_address:
        ray.init(address=ray_address, namespace=NAMESPACE, log_to_driver=False)
    else:
        ray.init(
            address="local",
            namespace=NAMESPACE,
            num_cpus=config.ray_num_cpus,
            _memory=config.ray_memory_mb * 1024 * 1024,
            object_store_memory=config.ray_object_store_mb * 1024 * 1024,
            _temp_dir=ray_temp_dir(state),
            include_dashboard=False,
            log_to_driver=False,
        )
    # the Core's SQLite file and the local gate's processes live on this machine
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    names = ["core", "scheduler", *(f"gate:{g.name}" for g in config.gates)]
    for name in names:  # a control plane killed earlier may have left them (joined clusters)
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:
            pass
    opts = {"namespace": NAMESPACE, "lifetime": "detached", "scheduling_strategy": here}
    # @ray.remote classes: mypy does not apply a class decorator's type, Ray's ``options`` is there
    gate_actor, scheduler_actor, core_actor = cast(Any, (GateActor, SchedulerActor, CoreActor))
    gates = [
        gate_actor.options(name=f"gate:{g.name}", **opts).remote(
            g.name, g.type, g.config, str(state.root)
        )
        for g in config.gates
    ]
    ray.get([g.capacity.remote() for g in gates])  # fail early on a broken gate config
    scheduler_actor.options(name="scheduler", **opts).remote(
        config.policy, config.policy_config, str(state.root)
    )
    url = f"https://{config.api_host}:{config.api_port}"
    core = core_actor.options(name="core", **opts).remote(
        str(state.root), url, [g.name for g in config.gates]
    )
    recovered = ray.get(core.start.remote())
    log.info("core started: %s", recovered)
    storage = JobStorage(config.storage_url or state.storage.as_uri(), config.storage_options)
    users = UserRegistry(state.pki)
    users.adopt_issued()  # a state directory from before the registry: its users, once
    app = create_app(ActorProxy(core), storage, users=users,
                     audit_log=state.root / "logs" / "audit.jsonl")

    signal.signal(signal.SIGTERM, lambda *_: None)  # serve() re-raises it after cleanup
    try:
        serve(
            app,
            host=config.api_host,
            port=config.api_port,
            pki_dir=state.pki,
            ready_file=state.address_path,
            log_level="warning",
            extra={"pid": os.getpid(), "home": str(state.root)},
        )
    finally:
        try:
            ray.get(core.shutdown.remote(), timeout=10)
        except Exception:
            pass
        for name in names:
            try:
                ray.kill(ray.get_actor(name, namespace=NAMESPACE))
            except Exception:
                pass
        ray.shutdown()
        state.pid_path.unlink(missing_ok=True)
        state.address_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m skyport.controlplane")
    parser.add_argument("--home", required=True)
    parser.add_argument("--address", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state = StateDir(Path(args.home))
    try:
        run(state, args.address)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
