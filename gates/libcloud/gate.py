"""``LibcloudGate``: per-job clusters of VMs on any cloud apache-libcloud drives.

A cluster is ``nodes`` VMs of one size, each tagged with the gate, the job,
the cluster and its rank, each booted with a user-data script
(``gates.libcloud.userdata``) that installs Sky Port if needed and starts the
agent.  The cloud is the only record: describe, list and delete find a
cluster's nodes by their tags, so a new gate process (after a control plane
restart) sees everything an earlier one created.  Nodes in libcloud's
``TERMINATED`` state are ignored (clouds keep destroyed VMs listed for a
while).

Tags (through ``tags_arg``, ``ex_metadata`` by default; read back from the
node's ``extra['tags']``, ``extra['metadata']`` or ``extra['labels']``)::

    skyport-scope    hash of the gate's state folder: two control planes on one
                     account never touch each other's nodes
    skyport-gate     gate name
    skyport-job, skyport-cluster, skyport-rank, skyport-flavor, skyport-created
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import replace
from typing import Any

from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeSize
from libcloud.compute.types import NodeState

from gates.libcloud.config import (
    LibcloudGateConfig,
    driver_class,
    load_prices,
    resolve_credentials,
)
from gates.libcloud.localdriver import LocalProcessNodeDriver
from gates.libcloud.userdata import render_userdata
from skyport.agent.bootstrap import Bootstrap
from skyport.errors import CapacityError, ConfigError, GateError
from skyport.gate import (
    Capacity,
    ClusterInfo,
    ClusterRequest,
    ClusterState,
    Flavor,
    Gate,
    GateCapabilities,
    GateFeature,
    NodeInfo,
    netns,
)
from skyport.gate.bootstrapcred import BootstrapVault, Exchanged

__all__ = ["LibcloudGate"]

log = logging.getLogger("skyport.gates.libcloud")

T_SCOPE, T_GATE, T_JOB, T_CLUSTER = "skyport-scope", "skyport-gate", "skyport-job", \
    "skyport-cluster"
T_RANK, T_FLAVOR, T_CREATED = "skyport-rank", "skyport-flavor", "skyport-created"
_BOOTING = {NodeState.PENDING, NodeState.STARTING, NodeState.REBOOTING,
            NodeState.RECONFIGURING, NodeState.UPDATING, NodeState.MIGRATING}


class LibcloudGate(Gate):
    type_name = "libcloud"
    config_model = LibcloudGateConfig
    capabilities = GateCapabilities(unsupported={
        GateFeature.WARM_REUSE: "cloud VMs are billed while they wait; each job gets "
        "fresh ones and they are destroyed with it",
        GateFeature.KILL_NODE: "the gate does not kill cloud VMs behind a job's back; "
        "use the local gate for failure drills",
        GateFeature.PREEMPT: "preemption comes from the cloud itself; use the local gate "
        "for failure drills",
    })

    def __init__(self, name: str, config: LibcloudGateConfig, state_dir: Any) -> None:
        super().__init__(name, config, state_dir)
        self.cfg = config
        gate_dir = self.gate_dir()
        self.scope = hashlib.sha256(str(gate_dir.resolve()).encode()).hexdigest()[:12]
        self.prices = load_prices(config)
        cls = driver_class(config.provider)
        kwargs = {**config.driver_args, **resolve_credentials(config)}
        if config.region:
            kwargs["region"] = config.region
        if getattr(cls, "type", None) == "skyport-local-process":
            kwargs.setdefault("root", str(gate_dir / "localdriver"))
        try:
            self.driver: NodeDriver = cls(**kwargs)
        except ConfigError as exc:  # ours (the local driver's): names no credential
            raise ConfigError(f"gate {name}: {exc}") from None
        except Exception as exc:  # never echo kwargs: they hold the credentials
            raise ConfigError(f"gate {name}: cannot make a {config.provider} driver: "
                              f"{type(exc).__name__}") from None
        self._list_args = _list_filters(self.driver, self.scope, name)
        self._sizes: dict[str, NodeSize] | None = None
        self._lock = threading.Lock()
        self._pending = 0  # nodes being created by this instance, not yet listed
        self.vault = BootstrapVault(name, gate_dir / "bootstrap-credentials.json",
                                    ttl_s=config.bootstrap_ttl_s)

    # -- offer ----------------------------------------------------------------

    def flavors(self) -> list[Flavor]:
        return [self._flavor(s) for s in self._offered().values()]

    def capacity(self) -> Capacity:
        per = max((f.cpus for f in self.flavors()), default=0)
        used = len(self._nodes())
        gpus = max((f.gpus for f in self.flavors()), default=0)
        free_nodes = max(0, self.cfg.max_nodes - used - self._pending)
        return Capacity(total_cpus=per * self.cfg.max_nodes, free_cpus=per * free_nodes,
                        total_gpus=gpus * self.cfg.max_nodes, free_gpus=gpus * free_nodes)

    # -- clusters -------------------------------------------------------------

    def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        self.check_request(request)  # the cluster id becomes node names and tags
        flavor = self.pick_flavor(request.cpus_per_node, request.gpus_per_node,
                                  request.mem_mb, request.nodes, request.flavor)
        size = self._offered()[flavor.name]
        with self._lock:
            nodes = self._nodes()
            mine = [n for n in nodes if _tags(n).get(T_CLUSTER) == request.cluster_id]
            if mine:
                if _tags(mine[0]).get(T_JOB) != request.job_id:
                    raise GateError(f"gate {self.name}: cluster {request.cluster_id} already "
                                    f"exists for job {_tags(mine[0]).get(T_JOB)}")
                if len(mine) == request.nodes:
                    return self._wait_running(request.cluster_id)  # a retried create
                self._destroy_quietly(request.cluster_id)  # half of an earlier try
                nodes = [n for n in nodes if n not in mine]
            free = self.cfg.max_nodes - len(nodes) - self._pending
            if request.nodes > free:
                raise CapacityError(f"gate {self.name}: cluster {request.cluster_id} does not "
                                    f"fit now; it needs {request.nodes} nodes ({max(free, 0)} "
                                    f"of {self.cfg.max_nodes} free)")
            self._pending += request.nodes
        try:
            self._create_nodes(request, size, flavor)
        except Exception as exc:
            self._destroy_quietly(request.cluster_id)
            raise GateError(f"gate {self.name}: could not create cluster "
                            f"{request.cluster_id}: {_why(exc)}") from exc
        finally:
            with self._lock:
                self._pending -= request.nodes
        return self._wait_running(request.cluster_id)

    def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        return self._info(cluster_id, [n for n in self._nodes()
                                       if _tags(n).get(T_CLUSTER) == cluster_id])

    def exchange_bootstrap(self, credential: str) -> Exchanged:
        """The job token for a node's one-time bootstrap credential (the REST route's side)."""
        return self.vault.exchange(credential)

    def delete_cluster(self, cluster_id: str) -> None:
        deadline = time.monotonic() + self.cfg.delete_timeout_s
        while True:
            left = [n for n in self._nodes() if _tags(n).get(T_CLUSTER) == cluster_id]
            if not left:
                return
            failed = []
            for node in left:
                if node.state == NodeState.UNKNOWN:  # e.g. EC2's shutting-down
                    continue
                try:
                    if not self.driver.destroy_node(node):
                        failed.append(node.name)
                except Exception as exc:
                    failed.append(f"{node.name} ({_why(exc)})")
            if failed and time.monotonic() > deadline:
                raise GateError(f"gate {self.name}: could not destroy node(s) of cluster "
                                f"{cluster_id}: {', '.join(failed)}")
            if time.monotonic() > deadline:
                names = ", ".join(n.name for n in left)
                raise GateError(f"gate {self.name}: node(s) of cluster {cluster_id} still "
                                f"listed {self.cfg.delete_timeout_s:.0f} s after destroy: "
                                f"{names}")
            if failed or any(n.state == NodeState.UNKNOWN for n in left):
                time.sleep(self.cfg.poll_s)

    def list_clusters(self) -> list[ClusterInfo]:
        groups: dict[str, list[Node]] = {}
        for node in self._nodes():
            cid = _tags(node).get(T_CLUSTER)
            if cid:
                groups.setdefault(cid, []).append(node)
        return [self._info(cid, nodes) for cid, nodes in sorted(groups.items())]

    # -- internals ------------------------------------------------------------

    def _offered(self) -> dict[str, NodeSize]:
        if self._sizes is None:
            try:
                sizes = {s.id: s for s in self.driver.list_sizes()}
            except Exception as exc:
                raise GateError(f"gate {self.name}: cannot list sizes: {_why(exc)}") from exc
            missing = [f for f in self.cfg.flavors if f not in sizes]
            if missing:
                raise ConfigError(f"gate {self.name}: flavors {missing} are not offered by "
                                  f"{self.cfg.provider} (some offered: "
                                  f"{', '.join(sorted(sizes)[:20])})")
            self._sizes = {f: sizes[f] for f in self.cfg.flavors}
        return self._sizes

    def _flavor(self, size: NodeSize) -> Flavor:
        extra = size.extra or {}
        # EC2's sizes say "vcpu", others "cpus", "vcpus", "cores", ...
        cpus = next((int(extra[k]) for k in ("cpus", "cpu", "vcpus", "vcpu", "cores")
                     if str(extra.get(k, "")).isdigit()), 1)
        gpus = next((int(extra[k]) for k in ("gpus", "gpu") if str(extra.get(k, "")).isdigit()),
                    0)
        price = self.prices.get(size.id)
        if price is None:
            price = float(size.price or 0.0)  # some drivers say "" for unknown
        return Flavor(name=size.id, cpus=cpus, mem_mb=int(size.ram or 0), gpus=gpus,
                      price_per_hour=price, boot_s=self.cfg.boot_s,
                      max_nodes=self.cfg.max_nodes)

    def _nodes(self) -> list[Node]:
        """This gate's nodes that exist (not TERMINATED)."""
        try:
            nodes = self.driver.list_nodes(**self._list_args)
        except Exception as exc:
            raise GateError(f"gate {self.name}: cannot list nodes: {_why(exc)}") from exc
        return [n for n in nodes if n.state != NodeState.TERMINATED
                and _tags(n).get(T_SCOPE) == self.scope and _tags(n).get(T_GATE) == self.name]

    def _create_nodes(self, req: ClusterRequest, size: NodeSize, flavor: Flavor) -> None:
        image = NodeImage(id=self.cfg.image, name=self.cfg.image, driver=self.driver)
        created = str(time.time())
        # the local-process driver's nodes in network namespaces: a subnet per cluster,
        # the control plane their only way out, MPI on the subnet's interface
        iface, net_args = "", {}
        if isinstance(self.driver, LocalProcessNodeDriver) and self.driver.network == "namespace":
            iface = self.driver.node_iface
            net_args = {"ex_network": req.cluster_id,
                        "ex_egress": netns.control_listen_address(req.control_url)}
        for rank in range(req.nodes):
            name = f"{self.cfg.name_prefix}-{req.cluster_id}-n{rank}"
            boot = Bootstrap(control_url=req.control_url, ca_pem=req.ca_pem, token=req.token,
                             job_id=req.job_id, cluster_id=req.cluster_id, node_rank=rank,
                             node_name=name, num_nodes=req.nodes,
                             cpus_per_node=req.cpus_per_node, net_iface=iface)
            if self.cfg.userdata_secret == "exchange":  # user-data outlives the exchange
                boot = replace(boot, token="", bootstrap_credential=self.vault.issue(
                    req.token, req.job_id, rank))
            tags = {T_SCOPE: self.scope, T_GATE: self.name, T_JOB: req.job_id,
                    T_CLUSTER: req.cluster_id, T_RANK: str(rank), T_FLAVOR: flavor.name,
                    T_CREATED: created}
            kwargs = {**self.cfg.create_args, **net_args,
                      self.cfg.userdata_arg: render_userdata(boot, self.cfg.install_command)}
            if self.cfg.tags_arg:
                kwargs[self.cfg.tags_arg] = tags
            self.driver.create_node(name=name, size=size, image=image, **kwargs)

    def _wait_running(self, cluster_id: str) -> ClusterInfo:
        deadline = time.monotonic() + self.cfg.create_timeout_s
        while True:
            info = self.describe_cluster(cluster_id)
            if info.state == "running":
                return info
            if info.state in ("failed", "gone") or time.monotonic() > deadline:
                why = info.reason or f"not running after {self.cfg.create_timeout_s:.0f} s"
                self._destroy_quietly(cluster_id)
                raise GateError(f"gate {self.name}: cluster {cluster_id} did not come up: "
                                f"{why}")
            time.sleep(self.cfg.poll_s)

    def _destroy_quietly(self, cluster_id: str) -> None:
        try:
            self.delete_cluster(cluster_id)
        except Exception:  # the reaper deletes what is left: every node is tagged
            log.exception("gate %s: cleaning up cluster %s failed", self.name, cluster_id)

    def _info(self, cluster_id: str, nodes: list[Node]) -> ClusterInfo:
        if not nodes:
            return ClusterInfo(cluster_id=cluster_id, job_id="", gate=self.name, flavor="",
                               state="gone", reason="no such cluster")
        tags = _tags(nodes[0])
        nodes = sorted(nodes, key=lambda n: int(_tags(n).get(T_RANK, "0") or 0))
        infos = tuple(NodeInfo(rank=int(_tags(n).get(T_RANK, "0") or 0), name=n.name,
                               alive=n.state == NodeState.RUNNING,
                               details={"id": n.id, "state": str(n.state),
                                        "private_ips": list(n.private_ips or [])})
                      for n in nodes)
        booting = [n.name for n in nodes if n.state in _BOOTING]
        dead = [n.name for n in nodes
                if n.state != NodeState.RUNNING and n.state not in _BOOTING]
        state: ClusterState
        if dead:
            state, reason = "failed", "node(s) not running: " + ", ".join(dead)
        elif booting:
            state, reason = "creating", "booting: " + ", ".join(booting)
        else:
            state, reason = "running", ""
        flavor = tags.get(T_FLAVOR, "")
        size = (self._sizes or {}).get(flavor)
        price = self._flavor(size).price_per_hour if size else self.prices.get(flavor, 0.0)
        try:
            created_at = float(tags.get(T_CREATED, "0"))
        except ValueError:
            created_at = 0.0
        return ClusterInfo(cluster_id=cluster_id, job_id=tags.get(T_JOB, ""), gate=self.name,
                           flavor=flavor, state=state, nodes=infos, created_at=created_at,
                           price_per_hour=price * len(nodes), reason=reason)


def _list_filters(driver: NodeDriver, scope: str, gate: str) -> dict[str, Any]:
    """``list_nodes`` keyword arguments that make the cloud itself pick this gate's nodes.

    EC2-API drivers take DescribeInstances filters: without them every poll lists
    (and parses, and looks up the addresses of) every instance of the account,
    terminated ones included.  Other drivers list everything; ``_nodes`` filters
    by tag in both cases.
    """
    from libcloud.compute.drivers.ec2 import BaseEC2NodeDriver

    if not isinstance(driver, BaseEC2NodeDriver):
        return {}
    return {"ex_filters": {f"tag:{T_SCOPE}": scope, f"tag:{T_GATE}": gate,
                           "instance-state-name": ["pending", "running", "shutting-down",
                                                   "stopping", "stopped"]}}


def _tags(node: Node) -> dict[str, str]:
    extra = node.extra or {}
    for key in ("tags", "metadata", "labels"):
        value = extra.get(key)
        if isinstance(value, dict) and value:
            return {str(k): str(v) for k, v in value.items()}
    return {}


def _why(exc: BaseException) -> str:
    """A short reason; a driver's message never holds our credentials (we never pass
    them per call), but keep it short for events."""
    text = str(exc) or type(exc).__name__
    return text[:300]
