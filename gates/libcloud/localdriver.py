"""``LocalProcessNodeDriver``: a libcloud compute driver whose nodes are local processes.

It is how a user rehearses a cloud gate on a laptop, and how the tests drive
the real ``LibcloudGate`` code (user-data, tags, listing, destroying) without
a cloud.  A node "boots" by running its user-data script with ``bash`` as a
process in a session of its own (so it outlives the driver's process, the
way a VM outlives the control plane), in a folder that plays its disk.  The
script's environment is the agent allow-list's (``skyport.gate.environment``),
like a VM booted from this machine's image: none of the control plane's
credentials reaches it.

State lives in ``root`` so that a new driver instance sees the nodes of an
earlier one::

    <root>/nodes/<node id>.json     the record: name, size, image, tags, pid
    <root>/disks/<node id>/         the node's "disk": user-data, console.log,
                                    var/ (what the script sees as SKYPORT_NODE_ROOT),
                                    netfwd.out (its forwarder's, with namespaces)

With ``network="namespace"`` (a driver argument; needs root and iproute2) each
node boots in a network namespace of its own (``skyport.gate.netns``): the
nodes created with the same ``ex_network`` share a private bridge, as the VMs
of one cloud subnet do, each with the address ``10.77.x.y`` on ``sky0``
(``node_iface``, its ``private_ips``); the host's network is out of reach but
for ``ex_egress``, one ``(host, port)`` the node's forwarder connects it to
(the libcloud gate gives its control plane's).  The namespace, the node's end
of the bridge and its forwarder go with the node; the bridge with the
network's last node.

States: ``RUNNING`` while the node's session leader runs, ``STOPPED`` once it
has exited (a VM whose OS halted: it still exists until destroyed),
``ERROR`` when its network forwarder is gone (a VM cut off), and a
destroyed node is gone from ``list_nodes`` (real clouds show it
``TERMINATED`` for a while; callers ignore those).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeLocation, NodeSize
from libcloud.compute.types import NodeState

from skyport.agent.procfs import is_alive, kill_sessions, proc_stat
from skyport.errors import ConfigError
from skyport.gate import netns
from skyport.gate.detach import DetachError, detach
from skyport.gate.environment import agent_environment

__all__ = ["LOCAL_IMAGE", "LocalProcessNodeDriver"]

LOCAL_IMAGE = "local-python"
# id: (cpus, ram MB, price per hour as the "provider" lists it)
_SIZES: dict[str, tuple[int, int, float]] = {
    "lp.small": (1, 1024, 0.01),
    "lp.medium": (2, 4096, 0.02),
    "lp.large": (4, 8192, 0.04),
    "lp.xlarge": (8, 16384, 0.08),
}

_NETWORK_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
_WHO = "libcloud local-process driver"


class LocalProcessNodeDriver(NodeDriver):
    """Nodes are ``bash <user-data>`` sessions on this machine.

    ``key``/``secret`` are accepted like any driver's credentials and kept on
    the driver object only (tests check that they never reach a node).
    ``root`` is the state folder (default: a folder under the temp dir).
    ``network`` is ``"host"`` (default: nodes share this machine's network) or
    ``"namespace"`` (see the module docstring).
    """

    type = "skyport-local-process"
    name = "Sky Port local processes"
    website = "https://github.com/skyport"
    features = {"create_node": []}  # noqa: RUF012 (libcloud's class attribute)

    def __init__(self, key: str = "local", secret: str | None = None,
                 root: str | None = None, kill_grace_s: float = 3.0, network: str = "host",
                 **_: Any) -> None:
        super().__init__(key=key, secret=secret)
        if network not in ("host", "namespace"):
            raise ConfigError(f"{_WHO}: network {network!r} is not one of 'host', 'namespace'")
        if network == "namespace":
            netns.require(_WHO)
        self.network = network
        self.node_iface = netns.IFACE if network == "namespace" else ""
        self.root: Path = Path(root or Path(tempfile.gettempdir()) / "skyport-localdriver")
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)
        (self.root / "disks").mkdir(parents=True, exist_ok=True)
        self.kill_grace_s = kill_grace_s
        with self._locked():  # what a driver that died midway left of its networks
            netns.reap(str(self.root), {r["network"] for r in self._records()
                                        if r.get("network")})

    # -- catalog ------------------------------------------------------------------

    def list_sizes(self, location: NodeLocation | None = None) -> list[NodeSize]:
        return [NodeSize(id=sid, name=sid, ram=ram, disk=10, bandwidth=None, price=price,
                         driver=self, extra={"cpus": cpus})
                for sid, (cpus, ram, price) in _SIZES.items()]

    def list_images(self, location: NodeLocation | None = None,
                    ex_only_active: bool = True) -> list[NodeImage]:
        return [NodeImage(id=LOCAL_IMAGE, name="this machine's Python, Sky Port importable",
                          driver=self, extra={"python": sys.executable})]

    def list_locations(self) -> list[NodeLocation]:
        return [NodeLocation(id="local", name="this machine", country="", driver=self)]

    # -- nodes --------------------------------------------------------------------

    def create_node(self, name: str, size: NodeSize, image: NodeImage,
                    location: NodeLocation | None = None, auth: Any = None,
                    ex_userdata: str | None = None,
                    ex_metadata: dict[str, str] | None = None, ex_network: str = "default",
                    ex_egress: tuple[str, int] | None = None) -> Node:
        """Boot a node: run ``ex_userdata`` with bash in a session of its own (in a network
        namespace on ``ex_network``'s bridge, with ``network="namespace"``)."""
        if size.id not in _SIZES:
            raise ValueError(f"unknown size {size.id!r} (known: {', '.join(_SIZES)})")
        if image.id != LOCAL_IMAGE:
            raise ValueError(f"unknown image {image.id!r} (known: {LOCAL_IMAGE})")
        if not _NETWORK_RE.match(ex_network):
            raise ValueError(f"ex_network {ex_network!r} must be 1-128 of a-z, 0-9, '-'")
        node_id = "lp-" + secrets.token_hex(6)
        disk = self.root / "disks" / node_id
        (disk / "var").mkdir(parents=True, mode=0o700)
        script = disk / "user-data"
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(ex_userdata or "#!/bin/bash\nexec sleep infinity\n")
        record: dict[str, Any] = {
            "id": node_id, "name": name, "size": size.id, "image": image.id,
            "tags": dict(ex_metadata or {}), "created_at": time.time(),
            "pid": None, "start_time": None,
        }
        ns_path = ""
        if self.network == "namespace":
            path = self.root / "nodes" / f"{node_id}.json"
            try:
                record = self._attach(record, ex_network, ex_egress)
            except Exception:  # nothing of the node is left: no VM was made
                with contextlib.suppress(FileNotFoundError, ValueError):
                    self._detach_net(json.loads(path.read_text()))
                path.unlink(missing_ok=True)
                shutil.rmtree(disk, ignore_errors=True)
                raise
            ns_path = self._net(record).ns_path(record["net_index"])
        self._put(record)  # first: a crash while booting leaves a node that can be destroyed
        try:  # nobody's child: the node outlives the driver's process as a VM would
            pid = detach(["bash", str(script)], disk / "console.log", netns=ns_path, cwd=disk,
                         env=_vm_env(disk))
        except DetachError as exc:
            raise RuntimeError(f"node {name} did not boot: {str(exc)[-300:]}") from None
        stat = proc_stat(pid)
        record.update(pid=pid, start_time=stat.start_time if stat else None)
        self._put(record)
        return self._node(record)

    def list_nodes(self, ex_node_ids: list[str] | None = None) -> list[Node]:
        nodes = []
        for path in sorted((self.root / "nodes").glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                continue
            if ex_node_ids is None or record["id"] in ex_node_ids:
                nodes.append(self._node(record))
        return nodes

    def destroy_node(self, node: Node) -> bool:
        """Kill the node's whole session and forget it; a gone node is not an error."""
        path = self.root / "nodes" / f"{node.id}.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return True
        leaders = [(record[k], record.get(t)) for k, t in (("pid", "start_time"),
                                                           ("fwd_pid", "fwd_start_time"))
                   if record.get(k)]
        if leaders and not kill_sessions(leaders, grace_s=self.kill_grace_s):
            return False
        self._detach_net(record)
        path.unlink(missing_ok=True)
        shutil.rmtree(self.root / "disks" / str(node.id), ignore_errors=True)
        return True

    def reboot_node(self, node: Node) -> bool:
        return False

    # -- internals ------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Network changes of every driver instance on ``root``, one at a time."""
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _records(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted((self.root / "nodes").glob("*.json")):
            with contextlib.suppress(FileNotFoundError, ValueError):
                out.append(json.loads(path.read_text()))
        return out

    def _net(self, record: dict[str, Any]) -> netns.ClusterNet:
        return netns.ClusterNet(str(self.root), record["network"], record["net_index"] + 1,
                                who=_WHO)

    def _attach(self, record: dict[str, Any], network: str,
                egress: tuple[str, int] | None) -> dict[str, Any]:
        """The node's namespace on its network's bridge, and its forwarder to ``egress``."""
        with self._locked():
            used = {r["net_index"] for r in self._records() if r.get("network") == network}
            index = min(set(range(len(used) + 1)) - used)
            record = {**record, "network": network, "net_index": index,
                      "address": netns.node_address(index)}
            self._put(record)  # before anything is made: destroy_node finds it all
            net = self._net(record)
            if not net.has_bridge():
                net.add_bridge()
            net.add_node(index, egress or ("127.0.0.1", 0))
        if egress is not None:
            disk = self.root / "disks" / record["id"]
            pid, start = netns.start_forwarder(disk / "netfwd.out", egress,
                                               [net.ns_path(index)], env=_vm_env(disk))
            record = {**record, "fwd_pid": pid, "fwd_start_time": start}
        return record

    def _detach_net(self, record: dict[str, Any]) -> None:
        """Remove the node's namespace and veth, and its network's bridge if it was the last."""
        if record.get("network") is None or record.get("net_index") is None:
            return
        with self._locked():
            net = self._net(record)
            net.remove_node(record["net_index"])
            others = [r for r in self._records()
                      if r.get("network") == record["network"] and r["id"] != record["id"]]
            if not others:
                net.remove_bridge()

    def _put(self, record: dict[str, Any]) -> None:
        path = self.root / "nodes" / f"{record['id']}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def _node(self, record: dict[str, Any]) -> Node:
        pid = record.get("pid")
        if pid is None:
            state = NodeState.PENDING if time.time() - record["created_at"] < 60 \
                else NodeState.ERROR
        else:
            state = NodeState.RUNNING if is_alive(pid, record.get("start_time")) \
                else NodeState.STOPPED
            if state == NodeState.RUNNING and record.get("fwd_pid") and \
                    not is_alive(record["fwd_pid"], record.get("fwd_start_time")):
                state = NodeState.ERROR  # cut off from the control plane
        size = _SIZES.get(record["size"], (0, 0, 0.0))
        return Node(id=record["id"], name=record["name"], state=state,
                    public_ips=[], private_ips=[record.get("address") or "127.0.0.1"],
                    driver=self,
                    extra={"tags": dict(record["tags"]), "pid": pid, "size": record["size"],
                           "image": record["image"], "cpus": size[0],
                           "network": record.get("network"),
                           "disk": str(self.root / "disks" / record["id"])},
                    created_at=None)


def _vm_env(disk: Path) -> dict[str, str]:
    """A VM booted from "this machine's image": what the agent allow-list lets through
    (``skyport.gate.environment``: so none of the driver's credentials), the node's
    disk as its home and ``SKYPORT_NODE_ROOT``, and ``SKYPORT_PYTHON`` (with
    ``PYTHONPATH`` from the allow-list: this machine's Python, Sky Port importable)."""
    env = agent_environment()
    env.setdefault("LANG", "C.UTF-8")
    env.update(HOME=str(disk / "var"), SKYPORT_NODE_ROOT=str(disk / "var"),
               SKYPORT_PYTHON=sys.executable)
    return env
