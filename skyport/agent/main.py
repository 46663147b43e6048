"""The agent's flow on one node (``PROTOCOL.md``).

Every node says hello (with its node's facts) and heartbeats in a background
thread.  Node 0 waits for ``action: run``, stages the script and the inputs
into its own directory while every other node's agent does the same into its
own (the nodes share nothing: ``skyport.agent.nodes``), runs the payload,
streams its logs, stages its outputs and every other node's out and reports
the exit.  Other nodes
heartbeat until ``stop`` or until the job is terminal.  ``stop`` (or losing
the control plane for longer than the client retries) kills the payload's
process group and ends the agent.

The command-line agent (``AgentSettings.sweep_session``) also kills every
other process it started when its payload ends and when it stops: its
descendants (it adopts orphans as a child subreaper) and, when it leads its
session (the local gate starts it so), that whole session, whatever process
group or session they moved to: launched ranks, MPI proxies and relays
included.  Node 0 does this before it reports the exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from skyport.agent.bootstrap import Bootstrap
from skyport.agent.checkpointer import Checkpointer
from skyport.agent.client import AgentClient
from skyport.agent.facts import node_facts
from skyport.agent.isolation import PRIVATE_TMP
from skyport.agent.launchrun import LaunchRunner
from skyport.agent.launchsock import LaunchSocket
from skyport.agent.nodes import NodeOps
from skyport.agent.payload import LogPump, Payload, PayloadResult
from skyport.agent.procfs import kill_own_processes, own_processes
from skyport.agent.transfer import stage_in, stage_out
from skyport.arrays import array_env
from skyport.errors import (
    AuthenticationError,
    ControlPlaneError,
    NotFoundError,
    PermissionDeniedError,
    SkyportError,
)
from skyport.gate.environment import is_allowed
from skyport.launch.hostfile import hostfile_text
from skyport.launch.mpi import openmpi_home
from skyport.launch.mpiexec import write_shims
from skyport.models import JobSpec, JobState
from skyport.protocol import HeartbeatAnswer, IdleGrant
from skyport.relay.node import NodeRelay

__all__ = ["AGENT_FILES", "Agent", "AgentSettings", "STAGING_FAILED_EXIT_CODE",
           "payload_env"]

log = logging.getLogger("skyport.agent")

STAGING_FAILED_EXIT_CODE = -1
"""Reported in ``/exit`` when the script or an input could not be staged in."""

AGENT_FILES = ("agent.log", "agent.out", ".skyport-bootstrap.json")
"""Entries of the working directory that stay the agent's when the payload gets the rest."""


@dataclass(frozen=True)
class AgentSettings:
    heartbeat_s: float = 1.0
    retry_for_s: float = 600.0
    grace_s: float = 5.0
    log_interval_s: float = 0.5
    sweep_session: bool = False
    """Kill every other process of the agent's session when its work ends (see above)."""


def payload_env(boot: Bootstrap, spec: JobSpec, base: dict[str, str],
                launch: dict[str, str] | None = None) -> dict[str, str]:
    """The payload's environment: the allowed part of the agent's, the spec's, then Sky
    Port's own variables.

    Of ``base`` only what ``skyport.gate.environment`` allows passes: an agent
    started outside Sky Port's gates (a VM's cloud-init, an operator's shell)
    may hold anything, and the payload gets an allow-list, never "all but what
    looks secret".  ``launch`` adds the parallel-launch variables (``SKYPORT_MPIEXEC``,
    ``SKYPORT_HOSTFILE``, ``SKYPORT_LAUNCH_SOCKET``, ...); the interpreter's
    ``bin`` goes first on ``PATH`` so that the wheel's ``mpiexec``/``mpicc`` are found.
    """
    env = {**{k: v for k, v in base.items() if is_allowed(k)}, **spec.env}
    env["HOME"] = boot.workdir  # each node's own (the nodes share nothing)
    env.update(boot.payload_isolation().env(Path(boot.workdir)))
    bindirs = [os.path.dirname(sys.executable)]
    if spec.layout.mpi == "openmpi":  # its mpicc/mpirun first, for this job only
        env["OPAL_PREFIX"] = str(openmpi_home())
        bindirs.insert(0, str(openmpi_home() / "bin"))
    env["PATH"] = os.pathsep.join(p for p in (*bindirs, env.get("PATH", "")) if p)
    env.update(launch or {})
    env.update({
        "SKYPORT_JOB_ID": boot.job_id,
        "SKYPORT_NODE_NAME": boot.node_name,
        "SKYPORT_NODE_RANK": str(boot.node_rank),
        "SKYPORT_NUM_NODES": str(boot.num_nodes),
        "SKYPORT_WORKDIR": boot.workdir,
        "SKYPORT_CPUS_PER_NODE": str(boot.cpus_per_node),
        "CUDA_VISIBLE_DEVICES": ",".join(boot.gpus),
        "OMP_NUM_THREADS": str(spec.threads_per_rank),
        "SKYPORT_PYTHON": sys.executable,
        "SKYPORT_NODE_CORES": ",".join(map(str, boot.cores)),
        "SKYPORT_RANKS_PER_NODE": str(spec.layout.ranks_per_node),
        "SKYPORT_THREADS_PER_RANK": str(spec.threads_per_rank),
        "SKYPORT_MPI": spec.layout.mpi,
        "SKYPORT_GPUS_PER_NODE": str(spec.resources.gpus_per_node),
        **array_env(boot.job_id, spec.array),  # a task of a job array: which one
    })
    if boot.net_iface:  # the node's own network: MPI must bind this interface
        env["SKYPORT_NET_IFACE"] = boot.net_iface
    return env


class Agent:
    def __init__(self, boot: Bootstrap, client: AgentClient,
                 settings: AgentSettings = AgentSettings()) -> None:
        self.boot = boot
        self.client = client
        self.settings = settings
        self.workdir = Path(boot.workdir)
        self.isolation = boot.payload_isolation()
        self.stop = threading.Event()       # the job is over for this node
        self._action = "wait"
        self._beat_changed = threading.Event()
        self._done = threading.Event()
        self.beat_listeners: list[Callable[[HeartbeatAnswer], None]] = []
        self.warm = False  # the Core keeps this cluster warm after the job (skyport.agent.idle)
        self.idle: IdleGrant | None = None  # this node's idle credential, once told

    def request_stop(self) -> None:
        self.stop.set()
        self._beat_changed.set()

    # -- the flow ----------------------------------------------------------------

    def run(self) -> int:
        """Run this node's part of the job; the process exit status."""
        b = self.boot
        log.info("agent for job %s, node %s (rank %d of %d), cores %s, gpus %s", b.job_id,
                 b.node_name, b.node_rank, b.num_nodes, list(b.cores), list(b.gpus))
        try:
            hello = self.client.hello(b.node_rank, b.node_name, socket.gethostname(),
                                      os.getpid(), node_facts())
        except SkyportError as exc:
            log.error("hello failed: %s", exc)
            return 1
        spec = hello.job.spec
        self.spec = spec
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        try:  # this node's part of the latest checkpoint, before any payload or launch
            self.checkpoints = Checkpointer.restored(self.client, self.workdir, b.node_rank,
                                                     hello.restart_count)
        except (SkyportError, OSError) as exc:
            log.error("restoring the checkpoint failed: %s", exc)
            self._done.set()
            return 1
        self.isolation.give(self.workdir, keep=AGENT_FILES)  # restored files are the payload's
        self._start_launch_services(spec)
        self.checkpoints.attach(self._launch_vars, self._socket, self.beat_listeners)
        try:
            if b.node_rank == 0:
                rc = self._run_job(spec)
                if self.warm:  # the Core's answer now says stop, or idle with a credential
                    self._beat()
                    self.stop.wait(3 * self.settings.heartbeat_s + 2)
                return rc
            self.stop.wait()
            log.info("stopping: the job is over")
            return 0
        except SkyportError as exc:
            log.error("giving up: %s", exc)
            return 1
        finally:
            self._done.set()
            self._stop_launch_services()
            self._sweep_session("the agent is stopping")
            beat.join(timeout=self.settings.heartbeat_s + 1)

    def _sweep_session(self, why: str) -> None:
        """Kill what is left of this agent's session (ranks, proxies, relays); never itself."""
        if not self.settings.sweep_session:
            return
        left = [p.pid for p in own_processes()]
        if not left:
            return
        log.info("%s: killing %d leftover process(es) of this node: %s", why, len(left),
                 left[:20])
        if not kill_own_processes(self.settings.grace_s):
            log.error("processes of this node survived SIGKILL: %s",
                      [p.pid for p in own_processes()])

    # -- parallel launch: ranks on every node through the agents (skyport.launch) ----

    def _start_launch_services(self, spec: JobSpec) -> None:
        """A Unix socket for the rsh relay, and a runner for launches aimed at this node."""
        self._runtime = Path(tempfile.mkdtemp(prefix="sp-launch-"))  # 0700, short path
        shims = write_shims(self._runtime / "bin", sys.executable)
        tmp = self._runtime / PRIVATE_TMP  # this node's TMPDIR, gone with the agent
        tmp.mkdir(mode=0o700)
        if self.isolation.mode == "user":
            os.chown(tmp, self.isolation.uid, self.isolation.gid)
        self.isolation = replace(self.isolation, tmp=str(tmp))
        self._launch_vars = {
            "SKYPORT_LAUNCH_SOCKET": str(self._runtime / "launch.sock"),
            "SKYPORT_RSH": shims["skyport-rsh"],
            "SKYPORT_MPIEXEC": shims["skyport-mpiexec"],
            "SKYPORT_HOSTFILE": str(self._runtime / "hostfile"),
            "TMPDIR": str(tmp),
        }
        self.nodes = NodeOps(self.client, self.boot.node_rank, self.boot.num_nodes,
                             self.workdir, self.isolation,
                             lambda: self.isolation.give(self.workdir, keep=AGENT_FILES))
        self.nodes.spec = spec
        self._socket = LaunchSocket(self.client, self._runtime / "launch.sock",
                                    self._node_names, allow_peer=self.isolation.allows_peer,
                                    workdir=self.workdir)
        self._socket.requests["bcast"] = self.nodes.handle_bcast
        self._socket.requests["check"] = self.nodes.handle_check
        self._socket.start()
        # launch logs live here, not in the working directory: the payload owns that one
        # and could put a symbolic link where the agent (root) then writes
        self._runner = LaunchRunner(
            self.client, self.boot.node_rank, self.workdir, self.boot.cores,
            lambda: payload_env(self.boot, spec, dict(os.environ), self._launch_env()),
            grace_s=self.settings.grace_s, logdir=self._runtime / "launches",
            # a launch may run in node 0's folder (its cwd): this node's stays visible too
            isolation=self.isolation, binds=(self._runtime, self.workdir),
            ops=self.nodes.run_op)
        self._runner.start()
        self.isolation.share_runtime(self._runtime)
        self._relay: NodeRelay | None = None
        if self.client.over_network:  # TCP streams to and from this node (skyport.relay)
            self._relay = NodeRelay(self.client.control_url, self.client.job_id,
                                    self.client.token, self.boot.node_rank,
                                    self.client.ssl_context)
            self._relay.start()
            self._socket.requests["relay-listen"] = self._relay_listen
            self._socket.requests["secret"] = self._secret

    def _relay_listen(self, request: dict) -> dict:
        assert self._relay is not None
        try:
            return {"port": self._relay.listen(str(request.get("name", "")))}
        except Exception as exc:  # noqa: BLE001 - the payload gets the reason
            return {"error": f"cannot listen: {exc}"}

    def _secret(self, request: dict) -> dict:
        """A secret the job's owner put (``PUT /v1/jobs/{id}/secrets/{name}``), waited for."""
        name = str(request.get("name", ""))
        deadline = time.monotonic() + min(float(request.get("wait_s", 60)), 600.0)
        while True:
            try:
                return {"value": self.client.secret(name)}
            except NotFoundError as exc:
                if time.monotonic() > deadline or self.stop.is_set():
                    return {"error": str(exc)}
            except SkyportError as exc:
                return {"error": str(exc)}
            time.sleep(0.5)

    def _stop_launch_services(self) -> None:
        if getattr(self, "_runner", None) is None:
            return
        self._runner.stop()
        self._socket.close()
        if self._relay is not None:
            self._relay.stop()
        log.info("launches served on this node: %d; relayed from it: %d",
                 self._runner.served, self._socket.served)
        shutil.rmtree(self._runtime, ignore_errors=True)

    def _node_names(self) -> list[str]:
        names: list[str] | None = getattr(self, "_names", None)
        if names:
            return names
        names = []
        if self.boot.num_nodes > 1:
            try:
                names = self.client.node_names()
            except Exception as exc:  # noqa: BLE001 - MPI is unusable, the job may not need it
                log.warning("could not learn the job's node names: %s", exc)
                names = []
        self._names = [n for n in names if n] or [self.boot.node_name]
        if len(self._names) != self.boot.num_nodes:
            log.warning("node names %s do not match %d nodes", self._names,
                        self.boot.num_nodes)
        return self._names

    def _launch_env(self) -> dict[str, str]:
        names = self._node_names() if self.boot.node_rank == 0 else \
            getattr(self, "_names", None) or []
        return {**self._launch_vars,
                **({"SKYPORT_NODE_NAMES": ",".join(names)} if names else {})}

    def _write_hostfile(self, spec: JobSpec) -> None:
        Path(self._launch_vars["SKYPORT_HOSTFILE"]).write_text(hostfile_text(
            self._node_names(), spec.layout.ranks_per_node, spec.layout.mpi))
        self.isolation.share_runtime(self._runtime)

    def _heartbeat_loop(self) -> None:
        while not self._done.is_set():
            self._beat()
            if self.stop.is_set():
                return
            self._done.wait(self.settings.heartbeat_s)

    def _beat(self) -> None:
        """One heartbeat and what its answer says (stop, run, idle, checkpoint work)."""
        try:
            answer = self.client.heartbeat(self.boot.node_rank)
            for listen in self.beat_listeners:
                listen(answer)
            self._action = answer.action
            self.warm = self.warm or answer.warm
            if answer.idle is not None:
                self.idle = answer.idle
            state = answer.state
            if self._action == "stop" or state.is_terminal():
                log.info("heartbeat says %s (job %s)", self._action, state.value)
                self.request_stop()
            self._beat_changed.set()
        except (AuthenticationError, PermissionDeniedError, NotFoundError) as exc:
            log.error("the control plane no longer knows this job: %s", exc)
            self.request_stop()
        except ControlPlaneError as exc:
            log.error("lost the control plane: %s", exc)
            self.request_stop()
        except (SkyportError, ValueError) as exc:
            log.warning("heartbeat failed: %s", exc)

    def _wait_for_run(self) -> bool:
        while not self.stop.is_set():
            if self._action == "run":
                return True
            self._beat_changed.wait(self.settings.heartbeat_s)
            self._beat_changed.clear()
        return False

    def _run_job(self, spec: JobSpec) -> int:
        if not self._wait_for_run():
            log.info("stopped before the job ran")
            return 0
        try:
            self._stage_in()
        except (SkyportError, OSError, ValueError) as exc:
            if isinstance(exc, ControlPlaneError):
                raise
            log.error("staging in failed: %s", exc)
            self.client.exit(STAGING_FAILED_EXIT_CODE, False, f"staging in failed: {exc}")
            return 1
        if self.stop.is_set():
            return 0
        self.client.set_state(JobState.RUNNING.value,
                              f"payload started on {self.boot.node_name}")
        result = self._run_payload(spec)
        if result.stopped:
            return 0
        if result.timed_out:
            self.client.exit(result.exit_code, True,
                             f"time limit of {spec.resources.time_limit_s}s reached")
            return 0
        self.client.set_state(JobState.STAGING_OUT.value,
                              f"payload exited with {result.exit_code}")
        problems = self._stage_out(spec)
        reason = "; ".join([f"exit code {result.exit_code}", *problems])
        self.client.exit(result.exit_code, False, reason, problems)
        return 0

    def _stage_in(self) -> None:
        """The script and the inputs into every node's own directory, all at once."""
        with ThreadPoolExecutor(1, thread_name_prefix="stage-in-nodes") as pool:
            asked = pool.submit(self.nodes.on_others, "stage_in", ["stage_in"])
            stage_in(self.client, self.workdir, self._progress(JobState.STAGING_IN))
            others = asked.result()
        if others:
            raise ValueError("on other nodes: " + "; ".join(others))

    def _progress(self, state: JobState) -> Callable[[str], object]:
        """Where staging progress goes: an event of the job, in its current state."""
        return lambda text: self.client.set_state(state.value, text)

    def _run_payload(self, spec: JobSpec) -> PayloadResult:
        files = {"stdout": self.workdir / "stdout.log", "stderr": self.workdir / "stderr.log"}
        self._write_hostfile(spec)
        for f in files.values():
            f.touch()
        self.isolation.give(self.workdir, keep=AGENT_FILES)  # the staged script and inputs
        payload = Payload(["bash", "script.sh"], cwd=self.workdir,
                          env=payload_env(self.boot, spec, dict(os.environ),
                                          self._launch_env()),
                          stdout_path=files["stdout"], stderr_path=files["stderr"],
                          cores=self.boot.cores, isolation=self.isolation,
                          binds=(self._runtime,))
        pump = LogPump(files, self.client.post_log, interval_s=self.settings.log_interval_s)
        payload.start()
        pump.start()
        try:
            result = payload.run(time_limit_s=spec.resources.time_limit_s,
                                 grace_s=self.settings.grace_s, should_stop=self.stop.is_set)
        finally:
            payload.kill(self.settings.grace_s)
            self._sweep_session("the payload ended")
            if not pump.stop(flush_timeout_s=self.settings.retry_for_s):
                log.error("some log output could not be delivered")
        log.info("payload ended: %s", result)
        return result

    def _stage_out(self, spec: JobSpec) -> list[str]:
        """Upload each declared output (file, directory, glob); the problems, for the exit.

        Any problem makes the Core end the job FAILED (``ExitBody.output_problems``).
        """
        everywhere = bool(spec.outputs) and spec.output_node == "all"
        with ThreadPoolExecutor(1, thread_name_prefix="stage-out-nodes") as pool:
            asked = pool.submit(self.nodes.on_others, "stage_out", ["stage_out"]) \
                if everywhere else None  # every node's outputs, at once
            mine = list(stage_out(self.client, self.workdir, spec.outputs,
                                  self._progress(JobState.STAGING_OUT)).problems)
            others = asked.result() if asked is not None else []
        return mine + [f"outputs of {p}" for p in others]


def install_signal_handlers(agent: Agent) -> None:
    """SIGTERM/SIGINT to the agent stop the payload and end the agent cleanly."""
    def handler(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        agent.request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
