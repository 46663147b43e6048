"""``RayGate``: a job's cluster is a placement group on an existing Ray cluster.

Each node of a job cluster is one bundle of a detached placement group
(``{CPU: cpus_per_node, GPU: gpus_per_node, memory: mem_mb}``), spread over
the Ray nodes (STRICT_SPREAD when the Ray cluster has as many nodes that can
each hold a bundle, else SPREAD, unless the config says otherwise).  In each
bundle a detached node actor (``gates.ray.node``) starts the node's agent on
its Ray node, detached in a session of its own.  An autoscaling Ray cluster
brings the machines for a placement group that does not fit; one that is
still not placed after ``ready_timeout_s`` is removed and the create fails
with ``CapacityError``.

With ``network = "namespace"`` (the emulation: every Ray node on the gate's
host) the gate makes the cluster's network namespaces, bridge and forwarder
(``skyport.gate.netns``) on its host before the agents start, and each node
actor starts its agent inside its node's namespace.

Names, so that a restarted control plane finds what an earlier one made::

    placement group   skyport-<gate>-<cluster id>          (detached)
    node actors       skyport-<gate>-<cluster id>-n<rank>  (detached, in ``namespace``)
    records           <gate dir>/clusters/<cluster id>.json

``list_clusters`` is the union of the records and of what Ray holds under
those names (placement groups not removed, named actors in the namespace),
so a cluster is listed, and can be deleted, even when its record or its
actors are lost.  The record is written before Ray is asked for anything and
removed last; it lets ``delete_cluster`` kill an agent whose node actor died
(by a task pinned to the agent's Ray node).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any, cast

import ray
from ray.util.placement_group import (
    PlacementGroup,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from gates.ray.config import RayGateConfig
from gates.ray.node import NodeActor, kill_agent_task, node_workdir
from gates.ray.records import ClusterRecord, NodeRecord, RecordStore
from skyport.agent.bootstrap import Bootstrap
from skyport.agent.procfs import is_alive, kill_sessions
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
    GateFeature,
    NodeInfo,
    netns,
)

__all__ = ["FLAVOR", "RayGate"]

log = logging.getLogger("skyport.gates.ray")
FLAVOR = "ray"
_MB = 1024 * 1024


class RayGate(Gate):
    type_name = "ray"
    config_model = RayGateConfig
    capabilities = GateCapabilities(unsupported={
        GateFeature.WARM_REUSE: "a job's placement group and node actors go with the job; "
        "the Ray cluster itself is the warm pool",
        GateFeature.KILL_NODE: "Ray nodes belong to the Ray cluster, not to the gate; "
        "use the local gate for failure drills",
        GateFeature.PREEMPT: "Ray nodes belong to the Ray cluster, not to the gate; "
        "use the local gate for failure drills",
    })

    def __init__(self, name: str, config: RayGateConfig, state_dir: Any) -> None:
        super().__init__(name, config, state_dir)
        self.cfg = config
        self._connect()
        self.dir = self.gate_dir()
        self._records = RecordStore(self.dir / "clusters")
        self._lock = threading.Lock()
        self._creating: set[str] = set()  # creates in progress in this process
        self.prefix = f"skyport-{name}-"
        self._who = f"ray gate {name}"
        if config.network == "namespace":
            netns.require(self._who)
            hosts = self._hosts()
            if len(hosts) > 1:
                raise ConfigError(
                    f'gate {name}: network = "namespace" is valid only when every Ray node is '
                    f"on this host (a Ray cluster emulated on one machine); the Ray nodes are "
                    f"on {', '.join(sorted(hosts))}: use network = \"host\"")
        with self._lock:  # what a gate that died midway left of its clusters' networks
            netns.reap(str(self.dir), {r.cluster_id for r in self._records.all()})

    def _connect(self) -> None:
        if not ray.is_initialized():
            ray.init(address=self.cfg.address or "auto", namespace=self.cfg.namespace,
                     log_to_driver=False)
            return
        if self.cfg.address and self.cfg.address not in ("auto",) and \
                self.cfg.address != ray.get_runtime_context().gcs_address:
            raise ConfigError(
                f"gate {self.name}: address {self.cfg.address!r} is not the Ray cluster this "
                f"process runs on ({ray.get_runtime_context().gcs_address}); start the control "
                "plane with --address to use another Ray cluster, and leave address unset")

    # -- offer ----------------------------------------------------------------

    def _nodes(self) -> list[dict[str, float]]:
        return [n["Resources"] for n in ray.nodes() if n.get("Alive")]

    def _hosts(self) -> set[str]:
        """The addresses of the live Ray nodes."""
        return {str(n.get("NodeManagerAddress")) for n in ray.nodes() if n.get("Alive")}

    def _node_shape(self) -> tuple[int, int, int]:
        """(cpus, mem_mb, gpus) of the largest Ray node, or the configured worker shape."""
        shapes = [(int(r.get("CPU", 0)), int(r.get("memory", 0) // _MB), int(r.get("GPU", 0)))
                  for r in self._nodes()]
        cpus, mem, gpus = max(shapes, key=lambda s: (s[0], s[2], s[1]), default=(0, 0, 0))
        return (self.cfg.node_cpus or cpus, self.cfg.node_mem_mb or mem,
                self.cfg.node_gpus if self.cfg.node_gpus is not None else gpus)

    def flavors(self) -> list[Flavor]:
        cpus, mem_mb, gpus = self._node_shape()
        if cpus < 1:
            return []
        return [Flavor(name=FLAVOR, cpus=cpus, mem_mb=mem_mb, gpus=gpus,
                       price_per_hour=self.cfg.price_per_hour, boot_s=self.cfg.boot_s,
                       max_nodes=self.cfg.max_nodes)]

    def capacity(self) -> Capacity:
        """What the Ray cluster holds now, or, where the worker shape is declared
        (``node_cpus`` / ``node_gpus``: an autoscaling cluster), at least ``max_nodes``
        such workers: the autoscaler brings them on demand.  Without this an autoscaling
        cluster with no worker up has no capacity, and the scheduler never plans a job on
        it (a pool of capacity 0 is refused, which fails every planning pass)."""
        total, free = ray.cluster_resources(), ray.available_resources()
        cpus, free_cpus = _grow(int(total.get("CPU", 0)), int(free.get("CPU", 0)),
                                self.cfg.node_cpus, self.cfg.max_nodes)
        gpus, free_gpus = _grow(int(total.get("GPU", 0)), int(free.get("GPU", 0)),
                                self.cfg.node_gpus, self.cfg.max_nodes)
        return Capacity(total_cpus=cpus, free_cpus=free_cpus, total_gpus=gpus,
                        free_gpus=free_gpus)

    # -- clusters -------------------------------------------------------------

    def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        self.check_request(request)  # the cluster id becomes actor and folder names
        cid = request.cluster_id
        with self._lock:
            existing = self._records.get(cid)
            if existing is not None:
                if existing.job_id != request.job_id:
                    raise GateError(f"gate {self.name}: cluster {cid} already exists for job "
                                    f"{existing.job_id}")
                if cid not in self._creating and existing.state == "running":
                    return self.describe_cluster(cid)  # a retried create gets the same cluster
                raise GateError(f"gate {self.name}: cluster {cid} is half created; delete it "
                                "first")
            strategy = self._strategy(request)
            record = ClusterRecord(
                cluster_id=cid, job_id=request.job_id, owner=request.owner, flavor=FLAVOR,
                created_at=time.time(), strategy=strategy, network=self.cfg.network,
                nodes=tuple(NodeRecord(rank=r, name=f"{cid}-n{r}")
                            for r in range(request.nodes)))
            self._records.put(record)
            self._creating.add(cid)
        try:
            pg = self._place(request, strategy)
            if record.network == "namespace":
                record = self._start_network(request, record)
                self._records.put(record)
            record = self._start_agents(request, record, pg)
            record = replace(record, state="running")
            self._records.put(record)
        except Exception as exc:
            try:
                self._destroy(cid)
            except Exception:
                log.exception("cleaning up half-created cluster %s failed", cid)
            if isinstance(exc, GateError):
                raise
            raise GateError(f"gate {self.name}: could not start cluster {cid}: {exc}") from exc
        finally:
            with self._lock:
                self._creating.discard(cid)
        return self.describe_cluster(cid)

    def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        if not _CLUSTER_ID_RE.match(cluster_id):
            return self._gone(cluster_id, "no such cluster")
        record = self._records.get(cluster_id)
        pg = self._pg_entry(cluster_id)
        ranks = range(len(record.nodes)) if record else self._actor_ranks(cluster_id)
        facts = {r: self._actor_info(cluster_id, r) for r in ranks}
        if record is None and pg is None and not any(facts.values()):
            return self._gone(cluster_id, "no such cluster")
        first = next((f for f in facts.values() if f), {})
        job_id = record.job_id if record else first.get("job_id", "")
        strategy = record.strategy if record else (pg or {}).get("strategy", "")
        nodes = []
        for rank in ranks:
            f = facts[rank] or {}
            rec = record.nodes[rank] if record else NodeRecord(rank=rank, name="")
            nodes.append(NodeInfo(
                rank=rank, name=rec.name or f.get("name", f"{cluster_id}-n{rank}"),
                alive=bool(f.get("alive")),
                details={"host": f.get("host", rec.host), "ray_node_id":
                         f.get("node_id", rec.node_id), "pid": f.get("pid", rec.pid),
                         "workdir": f.get("workdir", rec.workdir), "gpus": f.get("gpus", []),
                         **({"address": netns.node_address(rank)}
                            if record is not None and record.network == "namespace" else {}),
                         "placement_group": self.prefix + cluster_id, "strategy": strategy}))
        pg_state = (pg or {}).get("state", "REMOVED")
        ray_nodes = sorted({n.details["ray_node_id"] for n in nodes if n.details["ray_node_id"]})
        creating = cluster_id in self._creating
        dead = [n.name for n in nodes if not n.alive]
        state: ClusterState
        if creating:
            state, reason = "creating", f"placement group {pg_state.lower()} ({strategy})"
        elif record is not None and record.state == "creating":
            state, reason = "failed", "cluster creation was interrupted"
        elif pg_state != "CREATED":
            state, reason = "failed", f"placement group is {pg_state.lower()}"
        elif dead or not nodes:
            state, reason = "failed", "node(s) not running: " + ", ".join(dead)
        elif record is not None and record.forwarder_pid is not None and \
                not is_alive(record.forwarder_pid, record.forwarder_start_time):
            # the nodes' only way to the control plane is gone: as good as cut off
            state, reason = "failed", "the nodes' network forwarder is not running"
        else:
            state = "running"
            reason = (f"placement group {self.prefix + cluster_id} ({strategy}) on "
                      f"{len(ray_nodes)} Ray node(s)")
        return ClusterInfo(cluster_id=cluster_id, job_id=job_id, gate=self.name, flavor=FLAVOR,
                           state=state, nodes=tuple(nodes),
                           created_at=record.created_at if record else 0.0,
                           price_per_hour=self.cfg.price_per_hour * len(nodes), reason=reason)

    def delete_cluster(self, cluster_id: str) -> None:
        if _CLUSTER_ID_RE.match(cluster_id):
            self._destroy(cluster_id)

    def list_clusters(self) -> list[ClusterInfo]:
        ids = {r.cluster_id for r in self._records.all()}
        for entry in placement_group_table().values():
            name = entry.get("name") or ""
            if name.startswith(self.prefix) and entry.get("state") != "REMOVED":
                ids.add(name[len(self.prefix):])
        for name in self._actor_names():
            ids.add(name[len(self.prefix):].rsplit("-n", 1)[0])
        infos = [self.describe_cluster(cid) for cid in sorted(ids)]
        return [i for i in infos if i.state != "gone"]

    # -- internals ------------------------------------------------------------

    def _bundle(self, req: ClusterRequest) -> dict[str, float]:
        bundle: dict[str, float] = {"CPU": float(req.cpus_per_node)}
        if req.gpus_per_node:
            bundle["GPU"] = float(req.gpus_per_node)
        if req.mem_mb:
            bundle["memory"] = float(req.mem_mb * _MB)
        return bundle

    def _strategy(self, req: ClusterRequest) -> str:
        if self.cfg.strategy != "auto":
            return self.cfg.strategy
        bundle = self._bundle(req)
        holders = [r for r in self._nodes() if all(r.get(k, 0) >= v for k, v in bundle.items())]
        return "STRICT_SPREAD" if len(holders) >= req.nodes else "SPREAD"

    def _place(self, req: ClusterRequest, strategy: str) -> PlacementGroup:
        """Create the placement group and wait for it; remove it when it waits too long."""
        bundle = self._bundle(req)
        pg = placement_group([dict(bundle) for _ in range(req.nodes)], strategy=strategy,
                             name=self.prefix + req.cluster_id, lifetime="detached")
        if pg.wait(self.cfg.ready_timeout_s):
            return pg
        remove_placement_group(pg)
        free = ray.available_resources()
        raise CapacityError(
            f"gate {self.name}: cluster {req.cluster_id} does not fit now: its placement "
            f"group of {req.nodes} x {_fmt(bundle)} ({strategy}) was not placed within "
            f"{self.cfg.ready_timeout_s:g} s (free now: {_fmt(free)}); it was removed")

    def _start_agents(self, req: ClusterRequest, record: ClusterRecord,
                      pg: PlacementGroup) -> ClusterRecord:
        handles = []
        for node in record.nodes:
            meta = {"cluster_id": req.cluster_id, "job_id": req.job_id, "owner": req.owner,
                    "rank": node.rank, "name": node.name, "created_at": record.created_at,
                    "strategy": record.strategy}
            handles.append(cast(Any, NodeActor).options(  # a @ray.remote class
                name=self._actor_name(req.cluster_id, node.rank), namespace=self.cfg.namespace,
                lifetime="detached", num_gpus=req.gpus_per_node,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=node.rank),
            ).remote(meta))
        starts = []
        for node, actor in zip(record.nodes, handles, strict=True):
            boot = Bootstrap(control_url=req.control_url, ca_pem=req.ca_pem, token=req.token,
                             job_id=req.job_id, cluster_id=req.cluster_id, node_rank=node.rank,
                             node_name=node.name, num_nodes=req.nodes,
                             cpus_per_node=req.cpus_per_node,
                             net_iface=netns.IFACE if record.network == "namespace" else "")
            workdir = node_workdir(self.cfg.workdir_root, self.name, req.cluster_id, node.name)
            ns_path = self._net(record).ns_path(node.rank) if record.network == "namespace" \
                else ""
            starts.append(actor.start.remote(boot, str(workdir), req.gpus_per_node > 0,
                                             self.agent_env(req), ns_path))
        # actors start in their bundles at once: one wait for all of them
        infos = ray.get(starts, timeout=self.cfg.call_timeout_s + 60)
        for info in infos:
            record = record.with_node(NodeRecord(
                rank=info["rank"], name=info["name"], node_id=info["node_id"],
                host=info["host"], pid=info["pid"], start_time=info["start_time"],
                workdir=info["workdir"] or ""))
        self._records.put(record)
        return record

    def _destroy(self, cluster_id: str) -> None:
        """Kill every agent, then the actors and the placement group, then forget the record."""
        record = self._records.get(cluster_id)
        ranks = set(range(len(record.nodes))) if record else set()
        ranks |= set(self._actor_ranks(cluster_id))
        failed = []
        for rank in sorted(ranks):
            actor = self._actor(cluster_id, rank)
            rec = record.nodes[rank] if record and rank < len(record.nodes) else None
            try:
                if actor is not None:
                    ok = ray.get(actor.stop.remote(self.cfg.kill_grace_s),
                                 timeout=self.cfg.call_timeout_s)
                elif rec is not None and rec.pid is not None and self._node_alive(rec.node_id):
                    ok = ray.get(kill_agent_task.options(
                        scheduling_strategy=NodeAffinitySchedulingStrategy(rec.node_id,
                                                                           soft=False),
                    ).remote(rec.pid, rec.start_time, rec.workdir, self.cfg.kill_grace_s),
                        timeout=self.cfg.call_timeout_s)
                else:
                    ok = True  # no actor and no live Ray node: nothing of it is left running
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError):
                ok = rec is None or rec.pid is None or not self._node_alive(rec.node_id)
            except ray.exceptions.GetTimeoutError:
                ok = False
            if not ok:
                failed.append(f"{cluster_id}-n{rank}")
            if actor is not None:
                ray.kill(actor, no_restart=True)
        if failed:
            raise GateError(f"gate {self.name}: the agents of {', '.join(failed)} could not be "
                            "killed; try again")
        if record is not None and record.network == "namespace":
            self._stop_network(record)
        entry = self._pg_entry(cluster_id)
        if entry is not None:
            pg = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(entry["placement_group_id"])))
            held = sum(b.get("CPU", 0) for b in entry.get("bundles", {}).values()) \
                if entry.get("state") == "CREATED" else 0
            free_before = ray.available_resources().get("CPU", 0)
            remove_placement_group(pg)
            # removal is asynchronous: wait, so that the caller sees the resources free again
            deadline = time.monotonic() + self.cfg.call_timeout_s
            while placement_group_table(pg).get("state") != "REMOVED":
                if time.monotonic() > deadline:
                    raise GateError(f"gate {self.name}: placement group {self.prefix}"
                                    f"{cluster_id} was not removed within "
                                    f"{self.cfg.call_timeout_s:g} s; try again")
                time.sleep(0.05)
            # Ray's view of free resources lags the removal by a moment (best effort:
            # others may take the cores meanwhile)
            settle = time.monotonic() + 5.0
            while ray.available_resources().get("CPU", 0) < free_before + held and \
                    time.monotonic() < settle:
                time.sleep(0.05)
        self._records.remove(cluster_id)

    def _net(self, record: ClusterRecord) -> netns.ClusterNet:
        return netns.ClusterNet(str(self.dir), record.cluster_id, len(record.nodes),
                                who=self._who)

    def _start_network(self, req: ClusterRequest, record: ClusterRecord) -> ClusterRecord:
        """The cluster's namespaces, bridge and forwarder, on this host (where, with
        ``network = "namespace"``, every Ray node is)."""
        hosts = self._hosts()
        if len(hosts) > 1:  # an autoscaler may have added a machine since the gate started
            raise GateError(f'gate {self.name}: network = "namespace" needs every Ray node on '
                            f"this host; the Ray nodes are on {', '.join(sorted(hosts))}")
        net = self._net(record)
        control = netns.control_listen_address(req.control_url)
        net.create(control)
        try:
            out = self.dir / "netfwd" / f"{record.cluster_id}.out"
            out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            out.unlink(missing_ok=True)
            pid, start_time = netns.start_forwarder(
                out, control, [net.ns_path(n.rank) for n in record.nodes],
                env=self.agent_env(req))
        except Exception:
            net.destroy()
            raise
        return replace(record, forwarder_pid=pid, forwarder_start_time=start_time)

    def _stop_network(self, record: ClusterRecord) -> None:
        if record.forwarder_pid is not None and not kill_sessions(
                [(record.forwarder_pid, record.forwarder_start_time)],
                grace_s=self.cfg.kill_grace_s):
            raise GateError(f"gate {self.name}: the network forwarder of cluster "
                            f"{record.cluster_id} survived SIGKILL; try again")
        self._net(record).destroy()
        (self.dir / "netfwd" / f"{record.cluster_id}.out").unlink(missing_ok=True)

    def _pg_entry(self, cluster_id: str) -> dict[str, Any] | None:
        for entry in placement_group_table().values():
            if entry.get("name") == self.prefix + cluster_id and entry.get("state") != "REMOVED":
                return entry
        return None

    def _actor_name(self, cluster_id: str, rank: int) -> str:
        return f"{self.prefix}{cluster_id}-n{rank}"

    def _actor_names(self) -> list[str]:
        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == self.cfg.namespace and a["name"].startswith(self.prefix)]

    def _actor_ranks(self, cluster_id: str) -> list[int]:
        head = f"{self.prefix}{cluster_id}-n"
        return sorted(int(n[len(head):]) for n in self._actor_names()
                      if n.startswith(head) and n[len(head):].isdigit())

    def _actor(self, cluster_id: str, rank: int) -> Any:
        try:
            return ray.get_actor(self._actor_name(cluster_id, rank), namespace=self.cfg.namespace)
        except ValueError:
            return None

    def _actor_info(self, cluster_id: str, rank: int) -> dict[str, Any] | None:
        actor = self._actor(cluster_id, rank)
        if actor is None:
            return None
        try:
            return ray.get(actor.info.remote(), timeout=self.cfg.call_timeout_s)
        except (ray.exceptions.RayError, TimeoutError):
            return None

    def _node_alive(self, node_id: str) -> bool:
        return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())

    def _gone(self, cluster_id: str, reason: str) -> ClusterInfo:
        return ClusterInfo(cluster_id=cluster_id, job_id="", gate=self.name, flavor=FLAVOR,
                           state="gone", reason=reason)


def _grow(total: int, free: int, per_node: int | None, nodes: int) -> tuple[int, int]:
    """(total, free) raised to ``nodes`` declared workers of ``per_node`` where that is more:
    the autoscaler's workers not up yet count as free."""
    reach = (per_node or 0) * nodes
    if reach <= total:
        return total, free
    return reach, free + reach - total


def _fmt(resources: dict[str, float]) -> str:
    shown = []
    for key in ("CPU", "GPU", "memory"):
        if key in resources:
            v = resources[key]
            shown.append(f"{key}={int(v // _MB)}MB" if key == "memory" else f"{key}={v:g}")
    return "{" + ", ".join(shown) + "}"
