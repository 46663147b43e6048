"""``LaunchRunner``: run on this node the commands other nodes launch here.

A thread long-polls ``POST /nodes/{rank}/launches``.  Each launch runs as a
``Payload`` (its own process group, this node's cores, this node's payload
environment: ``SKYPORT_NODE_*``, ``CUDA_VISIBLE_DEVICES``); a ``LogPump``
sends its output to ``/launches/{id}/output/...`` and its exit code goes to
``/launches/{id}/exit``.  A cancel, the end of the job, or ``stop()`` kills
the launch's process group.

A launch with an ``op`` other than ``run`` is not a command: it is work node
0's agent asks of this agent (stage this node's files in or its outputs out,
fetch broadcast files; ``skyport.agent.nodes``), done by the agent itself,
its message and exit code sent back the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from skyport.agent.client import AgentClient
from skyport.agent.isolation import NO_ISOLATION, Isolation
from skyport.agent.nodes import resolve_cwd
from skyport.agent.payload import LogPump, Payload
from skyport.errors import ConflictError, NotFoundError, SkyportError
from skyport.protocol import LaunchOrder

__all__ = ["LaunchRunner"]

log = logging.getLogger(__name__)


class LaunchRunner:
    def __init__(self, client: AgentClient, rank: int, workdir: Path, cores: tuple[int, ...],
                 env: Callable[[], dict[str, str]], *, poll_wait_s: float = 10.0,
                 grace_s: float = 3.0, logdir: Path | None = None,
                 isolation: Isolation = NO_ISOLATION, binds: tuple[Path, ...] = (),
                 ops: Callable[[str, list[str]], tuple[int, str]] | None = None) -> None:
        self.client = client
        self.rank = rank
        self.workdir = workdir
        self.cores = cores
        self.env = env
        self.poll_wait_s = poll_wait_s
        self.grace_s = grace_s
        self.served = 0
        self._stop = threading.Event()
        self._cancelled: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._loop: threading.Thread | None = None
        # the agent's own folder: the payload may own the working directory
        self._logdir = logdir or workdir / ".skyport-launches"
        self.isolation = isolation
        self.binds = binds
        # the agent's own work for node 0 (skyport.agent.nodes: stage in/out, fetch)
        self.ops = ops

    def start(self) -> None:
        self._logdir.mkdir(exist_ok=True, mode=0o700, parents=True)
        self._loop = threading.Thread(target=self._poll_loop, name="launch-poll", daemon=True)
        self._loop.start()

    def stop(self) -> None:
        """Kill every launch still running here and wait for their reports."""
        self._stop.set()
        for t in list(self._threads):
            t.join(timeout=self.grace_s + 10)
        # its long-poll uses the job's client, which is closed next: on a warm node the
        # next job's client is made at once, and a read cut off under it leaves OpenSSL
        # errors behind that fail that client's TLS set-up (the Core ends the poll when
        # the job ends)
        if self._loop is not None:
            self._loop.join(timeout=self.poll_wait_s + 5)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                answer = self.client.launch_poll(self.rank, self.poll_wait_s)
            except (ConflictError, NotFoundError):
                return  # the job is over, or this control plane has no launches
            except SkyportError as exc:
                log.warning("polling for launches failed: %s", exc)
                self._stop.wait(1.0)
                continue
            if answer.stop:
                return
            self._cancelled.update(answer.cancel)
            for order in answer.start:
                t = threading.Thread(target=self._run_one, args=(order,),
                                     name=f"launch-{order.launch_id}", daemon=True)
                self._threads.append(t)
                t.start()

    def _run_op(self, order: LaunchOrder) -> None:
        """Not a command: the agent's own work, asked for by node 0's agent."""
        self.served += 1
        log.info("launch %s: %s %s", order.launch_id, order.op, order.argv[:5])
        code, message = (2, "this agent runs no ops") if self.ops is None else \
            self.ops(order.op, list(order.argv))
        log.info("launch %s (%s) ended with %d %s", order.launch_id, order.op, code, message)
        try:
            if message:
                self.client.launch_output(order.launch_id, self.rank, "stderr", 0,
                                          message.encode())
            self.client.launch_exit(order.launch_id, self.rank, code)
        except SkyportError as exc:
            log.info("launch %s: answer not delivered (%s)", order.launch_id, exc)

    def _run_one(self, order: LaunchOrder) -> None:
        if order.op != "run":
            self._run_op(order)
            return
        launch_id = order.launch_id
        argv = list(order.argv)
        # relative: in this node's own working directory; a sandbox binds only that one
        cwd = resolve_cwd(order.cwd, self.workdir, inside_only=self.isolation.mode == "sandbox")
        env = {**self.env(), **order.env}
        files = {s: self._logdir / f"{launch_id}.{s}" for s in ("stdout", "stderr")}
        payload = Payload(argv, cwd=cwd, env=env, stdout_path=files["stdout"],
                          stderr_path=files["stderr"], cores=self.cores,
                          isolation=self.isolation, binds=self.binds)

        def sink(stream: str, offset: int, data: bytes) -> object:
            return self.client.launch_output(launch_id, self.rank, stream, offset, data)

        pump = LogPump(files, sink, interval_s=0.2)
        self.served += 1
        log.info("launch %s: running %s (served %d)", launch_id, argv[-1][:200], self.served)
        code = 255
        try:
            payload.start()
            pump.start()
            result = payload.run(grace_s=self.grace_s, poll_s=0.05, should_stop=lambda: (
                self._stop.is_set() or launch_id in self._cancelled))
            code = result.exit_code
        except OSError as exc:
            log.error("launch %s could not start: %s", launch_id, exc)
            code = 127
        finally:
            payload.kill(self.grace_s)
            pump.stop(flush_timeout_s=10)
        log.info("launch %s ended with %d", launch_id, code)
        try:
            self.client.launch_exit(launch_id, self.rank, code)
        except SkyportError as exc:
            log.info("launch %s: exit not delivered (%s)", launch_id, exc)
