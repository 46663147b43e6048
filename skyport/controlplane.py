"""The control plane as a process: set up a state directory, start, stop.

``skyport start`` runs ``python -m skyport.controlplane --home H`` in the
background.  That process starts (or joins) Ray, creates the Gate, Scheduler
and Core actors in namespace ``skyport``, and serves the REST API over
mutual TLS until it gets SIGTERM.  Everything durable is in the state
directory, so the process can be killed at any moment and started again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import stat
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
# what a new state directory plans with (README, "Scheduling policy"; benchmarks/RESULTS.md):
# EASY backfilling, candidates shortest first. The oldest job always holds a reservation no
# backfilled job may delay, so no job starves; an existing directory keeps its own policy.
DEFAULT_POLICY = "easy-sjf"
STOP_TIMEOUT_S = 60.0


def init_state(
    state: StateDir,
    *,
    force: bool = False,
    local_cpus: int | None = None,
    local_gpus: list[int] | None = None,
    storage: str | None = None,
    storage_options: dict[str, Any] | None = None,
    policy: str = DEFAULT_POLICY,
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
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    ray_auth_token(state)
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
    os.chmod(state.config_path, 0o600)  # storage options may hold credentials
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
    fd = os.open(state.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            env=_env(state, address),
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


RAY_TOKEN_NAME = "ray-auth-token"


def ray_token_path(state: StateDir) -> Path:
    return state.root / RAY_TOKEN_NAME


def ray_auth_token(state: StateDir) -> Path:
    """The Ray plane's token file (0600 in the 0700 state directory), created once.

    Whoever holds it can run code as the control plane's user through Ray, so
    it never leaves the state directory: agents and payloads never see it.
    """
    path = ray_token_path(state)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.chmod(path, 0o600)
    return path


def ray_auth_env(state: StateDir, address: str | None = None) -> dict[str, str]:
    """Ray's authentication variables for the control plane's processes.

    Token authentication is always on.  On the embedded default the token is
    the state directory's; joining an existing cluster (``address``), the
    token the operator gave that cluster (``RAY_AUTH_TOKEN`` or
    ``RAY_AUTH_TOKEN_PATH`` in the environment) wins, else the state
    directory's file (copy the cluster's token there).
    """
    env = {"RAY_AUTH_MODE": "token"}
    if address and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        return env
    env["RAY_AUTH_TOKEN_PATH"] = str(ray_auth_token(state))
    return env


def _env(state: StateDir, address: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.update(ray_auth_env(state, address))
    return env


def ray_temp_dir(state: StateDir) -> str:
    # Unix socket paths are limited to 107 bytes: keep Ray's session dir short
    digest = hashlib.sha256(str(state.root).encode()).hexdigest()[:8]
    return os.path.join(tempfile.gettempdir(), f"sp-{digest}")


def private_temp_dir(state: StateDir) -> str:
    """Ray's temp dir, inside a 0700 folder of this user's alone.

    Ray makes the folders it creates world-writable (0777, for clusters shared
    by several users); the 0700 parent keeps everyone else out of them, and
    ``tighten_temp_dir`` takes the bits back once Ray has made them.  The
    parent's name is predictable (short socket paths), so a folder of that
    name made by another user beforehand is refused rather than used.
    """
    path = ray_temp_dir(state)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ControlPlaneError(
            f"Ray's temp dir {path} exists and is not a folder of this user "
            f"(uid {os.getuid()}): remove it; someone may have planted it")
    os.chmod(path, 0o700)
    return os.path.join(path, "r")


def tighten_temp_dir(path: str) -> None:
    """Folders under ``path`` lose every group and other bit (Ray made them 0777)."""
    for folder, dirs, _files in os.walk(path):
        for d in [folder, *(os.path.join(folder, x) for x in dirs)]:
            with contextlib.suppress(OSError):
                if not os.path.islink(d):
                    os.chmod(d, os.stat(d).st_mode & 0o700)


def check_cluster_requires_token(address: str) -> None:
    """Refuse a Ray cluster that lets a driver without a token in.

    A separate interpreter, without any token, tries ``ray.init(address)``;
    it must fail.  Sky Port's actors run as the control plane's user with its
    credentials, so an open cluster would give them to whoever reaches it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    probe = ("import sys, ray\n"
             "try:\n"
             "    ray.init(address=sys.argv[1], log_to_driver=False)\n"
             "except Exception:\n"
             "    sys.exit(3)\n"
             "ray.shutdown()\n")
    try:
        done = subprocess.run([sys.executable, "-c", probe, address], env=env,
                              capture_output=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return  # it hung rather than connected: not open
    if done.returncode == 0:
        raise ControlPlaneError(
            f"the Ray cluster at {address} accepts drivers without a token: start it with "
            "RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN_PATH), and give the control plane the "
            "same token (see docs/SECURITY.md)")


# -- the control plane process itself ------------------------------------------


def run(state: StateDir, ray_address: str | None = None) -> None:
    # what the control plane and its Ray processes create is theirs alone (0700/0600)
    os.umask(0o077)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.update(ray_auth_env(state, ray_address))
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
        check_cluster_requires_token(ray_address)
        ray.init(address=ray_address, namespace=NAMESPACE, log_to_driver=False)
    else:
        # gcs_server and raylet listen on every interface whatever address they are
        # told to advertise: the token (above) is the barrier (docs/SECURITY.md)
        temp_dir = private_temp_dir(state)
        ray.init(
            address="local",
            namespace=NAMESPACE,
            num_cpus=config.ray_num_cpus,
            _memory=config.ray_memory_mb * 1024 * 1024,
            object_store_memory=config.ray_object_store_mb * 1024 * 1024,
            _temp_dir=temp_dir,
            include_dashboard=False,
            log_to_driver=False,
        )
        tighten_temp_dir(os.path.dirname(temp_dir))
    ray_gcs = ray.get_runtime_context().gcs_address
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
                     audit_log=state.root / "logs" / "audit.jsonl",
                     secrets_dir=state.secrets)

    signal.signal(signal.SIGTERM, lambda *_: None)  # serve() re-raises it after cleanup
    try:
        serve(
            app,
            host=config.api_host,
            port=config.api_port,
            pki_dir=state.pki,
            ready_file=state.address_path,
            log_level="warning",
            extra={"pid": os.getpid(), "home": str(state.root), "ray_address": ray_gcs},
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
