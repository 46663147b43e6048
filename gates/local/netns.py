"""Network namespaces for the local gate's nodes (``network = "namespace"``).

Each node of a cluster gets a network namespace of its own, joined to the
cluster's other nodes by a private bridge: node ``r`` has the interface
``IFACE`` with address ``10.77.x.y`` (``node_address``), so MPI traffic
between two nodes crosses real interfaces, as between two hosts.  The bridge
has no address on the host side and the namespaces no route out: a node
reaches the control plane only through a forwarder (``gates.local.netfwd``),
one per cluster, which listens on the control plane's address *inside* each
namespace and connects to it from the host's namespace.  Nothing else of the
host's network is reachable from a node, and nothing of the host's
interfaces is touched.

Names are derived from the gate directory and the cluster id, so a
restarted gate finds (``reap``) what a crashed one left behind:

- namespaces ``skyport-<gate tag>-<cluster id>-n<rank>``;
- the bridge ``sk<hash>b`` and the host ends of the veths ``sk<hash>v<rank>``
  (interface names are at most 15 characters), each with the alias
  ``skyport <gate tag> <cluster id>``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable
from urllib.parse import urlsplit

from skyport.errors import ConfigError, GateError

__all__ = ["IFACE", "ClusterNet", "control_listen_address", "node_address", "reap", "require"]

IFACE = "sky0"
"""The node's end of its veth, inside its namespace (the same name on every node)."""

_SUBNET = ipaddress.ip_network("10.77.0.0/16")
_NS_DIR = "/run/netns"
_SYS_NET = "/sys/class/net"


def require() -> str:
    """The ``ip`` executable; ConfigError when namespaces cannot be made here."""
    if os.geteuid() != 0:
        raise ConfigError('local gate: network = "namespace" needs root (network namespaces, '
                          'veths and a bridge are created per cluster); use network = "host"')
    exe = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    if exe is None:
        raise ConfigError('local gate: network = "namespace" needs iproute2 (no "ip" on PATH); '
                          'install it or use network = "host"')
    return exe


def gate_tag(gate_dir: str) -> str:
    return hashlib.sha256(str(gate_dir).encode()).hexdigest()[:8]


def node_address(rank: int) -> str:
    """Node ``rank``'s address on its cluster's bridge (every cluster has a bridge of its
    own and no route out, so clusters may reuse the same addresses)."""
    return str(_SUBNET.network_address + rank + 1)


def control_listen_address(control_url: str) -> tuple[str, int]:
    """The address (an IP) and port the agents' control URL points to."""
    parts = urlsplit(control_url)
    if parts.hostname is None:
        raise GateError(f"control URL {control_url!r} names no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        info = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise GateError(f"control URL {control_url!r}: cannot resolve "
                        f"{parts.hostname!r}: {exc}") from exc
    return str(info[0][4][0]), port


class ClusterNet:
    """The namespaces, veths and bridge of one cluster."""

    def __init__(self, gate_dir: str, cluster_id: str, nodes: int) -> None:
        self.ip = require()
        self.tag = gate_tag(gate_dir)
        self.cluster_id = cluster_id
        self.nodes = nodes
        h = hashlib.sha256(f"{gate_dir}\0{cluster_id}".encode()).hexdigest()[:9]
        self.bridge = f"sk{h}b"
        self.alias = f"skyport {self.tag} {cluster_id}"
        self._veth_prefix = f"sk{h}v"

    def namespace(self, rank: int) -> str:
        return f"skyport-{self.tag}-{self.cluster_id}-n{rank}"

    def ns_path(self, rank: int) -> str:
        return os.path.join(_NS_DIR, self.namespace(rank))

    def veth(self, rank: int) -> str:
        return f"{self._veth_prefix}{rank:x}"

    def create(self, control: tuple[str, int]) -> None:
        """Make the bridge and every node's namespace; on failure, remove what was made."""
        try:
            self._ip("link", "add", self.bridge, "type", "bridge")
            self._ip("link", "set", self.bridge, "alias", self.alias)
            self._ip("link", "set", self.bridge, "up")
            host = ipaddress.ip_address(control[0])
            if host in _SUBNET:
                raise GateError(f"the control plane's address {host} is in {_SUBNET}, the "
                                "nodes' own subnet: give the agents another control URL")
            for rank in range(self.nodes):
                ns, veth = self.namespace(rank), self.veth(rank)
                self._ip("netns", "add", ns)
                self._ip("link", "add", veth, "type", "veth", "peer", "name", IFACE,
                         "netns", ns)
                self._ip("link", "set", veth, "alias", self.alias)
                self._ip("link", "set", veth, "master", self.bridge, "up")
                self._ip("-n", ns, "addr", "add", f"{node_address(rank)}/{_SUBNET.prefixlen}",
                         "dev", IFACE)
                self._ip("-n", ns, "link", "set", "lo", "up")
                self._ip("-n", ns, "link", "set", IFACE, "up")
                if not host.is_loopback:  # the forwarder listens on it, inside
                    self._ip("-n", ns, "addr", "add", f"{host}/{host.max_prefixlen}",
                             "dev", "lo")
        except Exception:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Remove the namespaces, veths and bridge (those that exist)."""
        for rank in range(self.nodes):
            _quiet(self.ip, "netns", "delete", self.namespace(rank))
            _quiet(self.ip, "link", "delete", self.veth(rank))
        _quiet(self.ip, "link", "delete", self.bridge)

    def _ip(self, *args: str) -> None:
        r = subprocess.run([self.ip, *args], capture_output=True, text=True, timeout=30,
                           check=False, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise GateError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")


def reap(gate_dir: str, keep: Iterable[str]) -> list[str]:
    """Remove the namespaces and links of this gate's clusters not in ``keep`` (left
    behind by a gate that died midway); the ids of the clusters they belonged to."""
    if os.geteuid() != 0:
        return []
    exe = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
    if exe is None:
        return []
    keep = set(keep)
    tag = gate_tag(gate_dir)
    prefix = f"skyport-{tag}-"
    gone: set[str] = set()
    names = os.listdir(_NS_DIR) if os.path.isdir(_NS_DIR) else []
    for ns in names:
        if ns.startswith(prefix) and "-n" in ns[len(prefix):]:
            cid = ns[len(prefix):].rsplit("-n", 1)[0]
            if cid not in keep:
                _quiet(exe, "netns", "delete", ns)
                gone.add(cid)
    for name in os.listdir(_SYS_NET) if os.path.isdir(_SYS_NET) else []:
        try:  # read from sysfs: a gate on a host network starts no process for this
            with open(os.path.join(_SYS_NET, name, "ifalias")) as f:
                alias = f.read().strip()
        except OSError:
            continue
        if alias.startswith(f"skyport {tag} "):
            cid = alias.split(" ", 2)[2]
            if cid not in keep:
                _quiet(exe, "link", "delete", name)
                gone.add(cid)
    return sorted(gone)


def _quiet(exe: str, *args: str) -> None:
    subprocess.run([exe, *args], capture_output=True, timeout=30, check=False,
                   stdin=subprocess.DEVNULL)
