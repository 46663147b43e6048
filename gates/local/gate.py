"""``LocalGate``: a job's cluster is a set of node processes on this machine.

Each node is one agent process in a session of its own (so it outlives the
gate actor, the way a cloud VM outlives its control plane), with its own
working directory, its own cores (virtual cores mapped onto the physical ones
the gate may use) and its own GPU ids.  Everything the gate knows lives in
one JSON record per cluster under ``<gate dir>/clusters/``: a new gate
process on the same directory sees, describes and deletes the clusters of an
earlier one, and its capacity is always computed from those records.

Operations hold a thread lock and an ``flock`` on the gate directory, so two
gate instances on the same directory never hand out the same core or GPU.

Layout::

    <gate dir>/clusters/<cluster id>.json      the record (never the token)
    <workdir root>/<cluster id>/<node name>/   the node's working directory:
        .skyport-bootstrap.json                0600, read and removed by the agent
        agent.out                              the agent's stdout/stderr
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from gates.local.config import LocalGateConfig, detect_gpus, host_cpus, host_mem_mb
from gates.local.payloadusers import (
    PayloadUser,
    choose_mode,
    create_user,
    delete_user,
    open_path_to,
    reap_orphan_users,
    user_name,
)
from gates.local.records import ClusterRecord, NodeRecord, RecordStore
from skyport.agent.bootstrap import Bootstrap
from skyport.agent.procfs import is_alive, kill_sessions, members, proc_stat
from skyport.errors import CapacityError, ConfigError, GateError
from skyport.gate import CLUSTER_ID_RE as _CLUSTER_ID_RE
from skyport.gate import (
    Capacity,
    ClusterInfo,
    ClusterRequest,
    ClusterState,
    Flavor,
    Gate,
    GateCapabilities,
    NodeInfo,
    netns,
)
from skyport.gate.detach import DetachError, detach

__all__ = ["BOOTSTRAP_NAME", "FLAVOR", "LocalGate"]

FLAVOR = "local"
BOOTSTRAP_NAME = ".skyport-bootstrap.json"


class LocalGate(Gate):
    type_name = "local"
    config_model = LocalGateConfig
    capabilities = GateCapabilities(unsupported={})  # every feature

    def __init__(self, name: str, config: LocalGateConfig, state_dir: Any) -> None:
        super().__init__(name, config, state_dir)
        self.cfg = config
        self.total_cpus = config.cpus or host_cpus()
        self.total_mem_mb = config.mem_mb or host_mem_mb()
        self.gpu_ids = list(config.gpus) if config.gpus is not None else detect_gpus()
        if len(set(self.gpu_ids)) != len(self.gpu_ids):
            raise ConfigError(f"gate {name}: gpus {self.gpu_ids} lists an id twice")
        self.dir = self.gate_dir()
        self.workdir_root = Path(config.workdir_root) if config.workdir_root \
            else self.dir / "nodes"
        self.agent_command = list(config.agent_command or
                                  [sys.executable, "-m", "skyport.agent"])
        self._records = RecordStore(self.dir / "clusters")
        os.chmod(self.dir / "clusters", 0o700)  # who runs what: the control plane's business
        self.isolation = choose_mode(config.isolation)
        self.state_root = Path(getattr(state_dir, "root", state_dir))
        if self.isolation == "user":
            self.workdir_root.mkdir(parents=True, exist_ok=True, mode=0o700)
            open_path_to(self.workdir_root, self.state_root)
            reap_orphan_users()  # of state directories deleted with clusters in them
        self._physical = sorted(os.sched_getaffinity(0))
        self._lock = threading.Lock()
        if config.network == "namespace":
            netns.require()
        with self._locked():  # what a gate that died midway left of its clusters' networks
            netns.reap(str(self.dir), {r.cluster_id for r in self._records.all()})

    # -- offer ----------------------------------------------------------------

    def flavors(self) -> list[Flavor]:
        return [Flavor(name=FLAVOR, cpus=self.total_cpus, mem_mb=self.total_mem_mb,
                       gpus=len(self.gpu_ids), price_per_hour=self.cfg.price_per_hour,
                       boot_s=self.cfg.boot_s, max_nodes=self.cfg.max_nodes)]

    def capacity(self) -> Capacity:
        with self._locked():
            records = self._records.all()
        used_cpus = len(set().union(*(r.vcores for r in records)))
        used_gpus = len(set().union(*(r.gpus for r in records)))
        return Capacity(total_cpus=self.total_cpus, free_cpus=self.total_cpus - used_cpus,
                        total_gpus=len(self.gpu_ids), free_gpus=len(self.gpu_ids) - used_gpus)

    # -- clusters -------------------------------------------------------------

    def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        self.check_request(request)  # the cluster id becomes a folder name
        with self._locked():
            existing = self._records.get(request.cluster_id)
            if existing is not None:
                if existing.job_id != request.job_id:
                    raise GateError(f"gate {self.name}: cluster {request.cluster_id} already "
                                    f"exists for job {existing.job_id}")
                return self._info(existing)  # a retried create gets the same cluster
            record = self._reserve(request)
            if self.isolation == "user":
                user = create_user(user_name(self.dir, request.cluster_id), self.dir)
                record = replace(record, payload_user=user.name, payload_uid=user.uid,
                                 payload_gid=user.gid)
            if self.cfg.network == "namespace":
                record = replace(record, network="namespace")
            self._records.put(record)
            try:
                if record.network == "namespace":
                    record = self._start_network(request, record)
                    self._records.put(record)
                for node in record.nodes:
                    record = record.with_node(self._start_node(request, record, node))
                    self._records.put(record)
            except Exception as exc:
                self._destroy(record)
                raise GateError(f"gate {self.name}: could not start cluster "
                                f"{request.cluster_id}: {exc}") from exc
            record = replace(record, state="running")
            self._records.put(record)
            return self._info(record)

    def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        with self._locked():
            record = self._records.get(cluster_id) if _CLUSTER_ID_RE.match(cluster_id) \
                else None
            if record is None:
                return ClusterInfo(cluster_id=cluster_id, job_id="", gate=self.name,
                                   flavor=FLAVOR, state="gone", reason="no such cluster")
            return self._info(record)

    def delete_cluster(self, cluster_id: str) -> None:
        with self._locked():
            record = self._records.get(cluster_id) if _CLUSTER_ID_RE.match(cluster_id) \
                else None
            if record is not None:
                self._destroy(record)

    def list_clusters(self) -> list[ClusterInfo]:
        with self._locked():
            return [self._info(r) for r in self._records.all()]

    # -- features: warm reuse, failures on demand (``skyport debug kill-node|preempt``) --

    def warm_idle_timeout_s(self) -> float:
        return self.cfg.idle_timeout_s

    def kill_node(self, cluster_id: str, rank: int) -> bool:
        """SIGKILL every process of one node's session, as if the machine had died.

        The record stays: the cluster then describes itself as ``failed`` with
        that node not running, which is how the Core learns of the loss.
        """
        with self._locked():
            record = self._records.get(cluster_id) if _CLUSTER_ID_RE.match(cluster_id) \
                else None
        if record is None:
            raise GateError(f"gate {self.name}: no cluster {cluster_id}")
        node = next((n for n in record.nodes if n.rank == rank), None)
        if node is None or node.pid is None:
            raise GateError(f"gate {self.name}: cluster {cluster_id} has no started node {rank}")
        return _sigkill_session(node.pid, node.start_time)

    def preempt(self, cluster_id: str, reclaim_after_s: float) -> float:
        """A preemption: every node of the cluster is SIGKILLed ``reclaim_after_s`` from now.

        The notice itself reaches the agents through the Core (their heartbeat
        answer); this is the cloud taking the machines back.  Returns the time
        (epoch seconds) of the reclaim.
        """
        def reclaim() -> None:
            with self._locked():
                record = self._records.get(cluster_id)
            for n in record.nodes if record is not None else ():
                if n.pid is not None:
                    _sigkill_session(n.pid, n.start_time)

        timer = threading.Timer(max(0.0, reclaim_after_s), reclaim)
        timer.daemon = True
        timer.start()
        return time.time() + reclaim_after_s

    # -- internals ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self.dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _reserve(self, req: ClusterRequest) -> ClusterRecord:
        """Pick free cores and GPUs for every node; CapacityError if they are not free now."""
        records = self._records.all()
        used_cores = set().union(*(r.vcores for r in records))
        used_gpus = set().union(*(r.gpus for r in records))
        used_mem = sum(r.mem_mb * len(r.nodes) for r in records)
        free_cores = [c for c in range(self.total_cpus) if c not in used_cores]
        free_gpus = [g for g in self.gpu_ids if g not in used_gpus]
        need_cores = req.nodes * req.cpus_per_node
        need_gpus = req.nodes * req.gpus_per_node
        need_mem = req.nodes * (req.mem_mb or 0)
        short = []
        if need_cores > len(free_cores):
            short.append(f"{need_cores} cores ({len(free_cores)} of {self.total_cpus} free)")
        if need_gpus > len(free_gpus):
            short.append(f"{need_gpus} GPUs ({len(free_gpus)} of {len(self.gpu_ids)} free)")
        if need_mem > self.total_mem_mb - used_mem:
            short.append(f"{need_mem} MB ({self.total_mem_mb - used_mem} of "
                         f"{self.total_mem_mb} MB free)")
        if short:
            raise CapacityError(f"gate {self.name}: cluster {req.cluster_id} does not fit now;"
                                " it needs " + ", ".join(short))
        nodes = []
        for rank in range(req.nodes):
            vcores = tuple(free_cores[rank * req.cpus_per_node:(rank + 1) * req.cpus_per_node])
            name = f"{req.cluster_id}-n{rank}"
            nodes.append(NodeRecord(
                rank=rank, name=name,
                workdir=str(self.workdir_root / req.cluster_id / name),
                vcores=vcores,
                cores=tuple(sorted({self._physical[v % len(self._physical)] for v in vcores})),
                gpus=tuple(free_gpus[rank * req.gpus_per_node:(rank + 1) * req.gpus_per_node]),
            ))
        return ClusterRecord(cluster_id=req.cluster_id, job_id=req.job_id, owner=req.owner,
                             flavor=FLAVOR, created_at=time.time(), mem_mb=req.mem_mb or 0,
                             state="creating", nodes=tuple(nodes))

    def _start_node(self, req: ClusterRequest, record: ClusterRecord,
                    node: NodeRecord) -> NodeRecord:
        workdir = Path(node.workdir)
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(workdir, 0o700)  # the agent gives it to the payload's user (if any)
        if self.isolation == "user":
            os.chmod(workdir.parent, 0o711)  # the cluster's folder: enter, not list
        bootstrap = workdir / BOOTSTRAP_NAME
        Bootstrap(control_url=req.control_url, ca_pem=req.ca_pem, token=req.token,
                  job_id=req.job_id, cluster_id=req.cluster_id, node_rank=node.rank,
                  node_name=node.name, num_nodes=req.nodes, workdir=str(workdir),
                  cpus_per_node=req.cpus_per_node, cores=node.cores,
                  gpus=node.gpus, isolation=self.isolation,
                  payload_uid=record.payload_uid, payload_gid=record.payload_gid,
                  hide=(str(self.state_root),) if self.isolation != "none" else (),
                  net_iface=netns.IFACE if record.network == "namespace" else "",
                  ).write(bootstrap)
        netns_path = self._net(record).ns_path(node.rank) if record.network == "namespace" \
            else ""
        try:  # detached: a node outlives the gate actor the way a VM outlives its control plane
            pid = detach([*self.agent_command, "--bootstrap", str(bootstrap)],
                         workdir / "agent.out", netns=netns_path, cwd=workdir,
                         env=self.agent_env(req))
        except DetachError as exc:
            raise GateError(f"gate {self.name}: the agent of {node.name} did not start: "
                            f"{exc}") from exc
        stat = proc_stat(pid)
        return replace(node, pid=pid, start_time=stat.start_time if stat else None)

    def _destroy(self, record: ClusterRecord) -> None:
        """Kill every node's session, then forget the cluster and free what it held."""
        leaders = [(n.pid, n.start_time) for n in record.nodes if n.pid is not None]
        if record.forwarder_pid is not None:
            leaders.append((record.forwarder_pid, record.forwarder_start_time))
        if not kill_sessions(leaders, grace_s=self.cfg.kill_grace_s):
            raise GateError(f"gate {self.name}: processes of cluster {record.cluster_id} "
                            "survived SIGKILL; try again")
        if record.network == "namespace":
            self._net(record).destroy()
        self._records.remove(record.cluster_id)
        shutil.rmtree(self.workdir_root / record.cluster_id, ignore_errors=True)
        if record.payload_user:  # kills what of the user escaped the sessions, first
            delete_user(PayloadUser(record.payload_user, record.payload_uid,
                                    record.payload_gid))

    def _net(self, record: ClusterRecord) -> netns.ClusterNet:
        return netns.ClusterNet(str(self.dir), record.cluster_id, len(record.nodes))

    def _start_network(self, req: ClusterRequest, record: ClusterRecord) -> ClusterRecord:
        """The cluster's namespaces and bridge, and the forwarder that is their only way
        to the control plane (``skyport.gate.netns``)."""
        net = self._net(record)
        control = netns.control_listen_address(req.control_url)
        net.create(control)
        out = self.workdir_root / record.cluster_id / "netfwd.out"
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pid, start_time = netns.start_forwarder(out, control,
                                                [net.ns_path(n.rank) for n in record.nodes],
                                                env=self.agent_env(req))
        return replace(record, forwarder_pid=pid, forwarder_start_time=start_time)

    def _info(self, record: ClusterRecord) -> ClusterInfo:
        nodes = tuple(
            NodeInfo(rank=n.rank, name=n.name,
                     alive=n.pid is not None and is_alive(n.pid, n.start_time),
                     details={"pid": n.pid, "workdir": n.workdir, "cores": list(n.cores),
                              "gpus": list(n.gpus),
                              **({"address": netns.node_address(n.rank)}
                                 if record.network == "namespace" else {})})
            for n in record.nodes)
        dead = [n.name for n in nodes if not n.alive]
        state: ClusterState
        if record.state == "creating":  # seen under the lock: its creator died midway
            state, reason = "failed", "cluster creation was interrupted"
        elif dead:
            state, reason = "failed", "node(s) not running: " + ", ".join(dead)
        elif record.forwarder_pid is not None and not is_alive(record.forwarder_pid,
                                                               record.forwarder_start_time):
            # the nodes' only way to the control plane is gone: as good as cut off
            state, reason = "failed", "the nodes' network forwarder is not running"
        else:
            state, reason = "running", ""
        return ClusterInfo(cluster_id=record.cluster_id, job_id=record.job_id, gate=self.name,
                           flavor=record.flavor, state=state, nodes=nodes,
                           created_at=record.created_at,
                           price_per_hour=self.cfg.price_per_hour * len(nodes), reason=reason)


def _sigkill_session(leader: int, start_time: int | None) -> bool:
    """SIGKILL (no SIGTERM first) every process of the session led by ``leader``."""
    if not is_alive(leader, start_time):
        return False
    for p in members(sessions={leader}):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGKILL)
    return True
