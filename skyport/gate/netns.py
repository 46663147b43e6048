"""Network namespaces for nodes that share one host (``network = "namespace"``).

The local gate, the libcloud gate's local-process driver and the ray gate
(when all its Ray nodes are on one host) use it the same way.  Each node of a
cluster gets a network namespace of its own, joined to the
cluster's other nodes by a private bridge: node ``r`` has the interface
``IFACE`` with address ``10.77.x.y`` (``node_address``), so MPI traffic
between two nodes crosses real interfaces, as between two hosts.  The bridge
has no address on the host side and the namespaces no route out: a node
reaches the control plane only through a forwarder (``skyport.gate.netfwd``),
one per cluster (or node), which listens on the control plane's address *inside* each
namespace and connects to it from the host's namespace.  Nothing else of the
host's network is reachable from a node, and nothing of the host's
interfaces is touched.

Names are derived from a scope (the gate's or driver's directory) and the
cluster id, so a restarted gate finds (``reap``) what a crashed one left
behind:

- namespaces ``skyport-<scope tag>-<cluster id>-n<rank>``;
- the bridge ``sk<hash>b`` and the host ends of the veths ``sk<hash>v<rank>``
  (interface names are at most 15 characters), each with the alias
  ``skyport <scope tag> <cluster id>``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from skyport.agent.procfs import is_alive, kill_sessions, proc_stat
from skyport.errors import ConfigError, GateError
from skyport.gate import netfwd
from skyport.gate.detach import DetachError, detach

__all__ = ["IFACE", "ClusterNet", "control_listen_address", "node_address", "reap", "require",
           "start_forwarder"]

IFACE = "sky0"
"""The node's end of its veth, inside its namespace (the same name on every node)."""

_SUBNET = ipaddress.ip_network("10.77.0.0/16")
_NS_DIR = "/run/netns"
_SYS_NET = "/sys/class/net"


def require(who: str = "local gate") -> str:
    """The ``ip`` executable; ConfigError (naming ``who``) when namespaces cannot be made."""
    if os.geteuid() != 0:
        raise ConfigError(f'{who}: network = "namespace" needs root (network namespaces, '
                          'veths and a bridge are created per cluster); use network = "host"')
    exe = _ip_exe()
    if exe is None:
        raise ConfigError(f'{who}: network = "namespace" needs iproute2 (no "ip" on PATH); '
                          'install it or use network = "host"')
    return exe


def _ip_exe() -> str | None:
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")


def gate_tag(gate_dir: str) -> str:
    return hashlib.sha256(str(gate_dir).encode()).hexdigest()[:8]


def check_control(control: tuple[str, int]) -> None:
    """GateError when the control plane's address is in the nodes' own subnet."""
    host = ipaddress.ip_address(control[0])
    if host in _SUBNET:
        raise GateError(f"the control plane's address {host} is in {_SUBNET}, the "
                        "nodes' own subnet: give the agents another control URL")


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

    def __init__(self, gate_dir: str, cluster_id: str, nodes: int,
                 who: str = "local gate") -> None:
        self.ip = require(who)
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
            check_control(control)
            self.add_bridge()
            for rank in range(self.nodes):
                self.add_node(rank, control)
        except Exception:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Remove the namespaces, veths and bridge (those that exist)."""
        for rank in range(self.nodes):
            self.remove_node(rank)
        self.remove_bridge()

    def has_bridge(self) -> bool:
        return os.path.exists(os.path.join(_SYS_NET, self.bridge))

    def add_bridge(self) -> None:
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("link", "set", self.bridge, "alias", self.alias)
        self._ip("link", "set", self.bridge, "up")

    def add_node(self, rank: int, control: tuple[str, int]) -> None:
        """Node ``rank``'s namespace on the (existing) bridge; its address
        ``node_address(rank)``, and the control plane's address on its loopback."""
        check_control(control)
        host = ipaddress.ip_address(control[0])
        ns, veth = self.namespace(rank), self.veth(rank)
        self._ip("netns", "add", ns)
        self._ip("link", "add", veth, "type", "veth", "peer", "name", IFACE, "netns", ns)
        self._ip("link", "set", veth, "alias", self.alias)
        self._ip("link", "set", veth, "master", self.bridge, "up")
        self._ip("-n", ns, "addr", "add", f"{node_address(rank)}/{_SUBNET.prefixlen}",
                 "dev", IFACE)
        self._ip("-n", ns, "link", "set", "lo", "up")
        self._ip("-n", ns, "link", "set", IFACE, "up")
        if not host.is_loopback:  # the forwarder listens on it, inside
            self._ip("-n", ns, "addr", "add", f"{host}/{host.max_prefixlen}", "dev", "lo")

    def remove_node(self, rank: int) -> None:
        _quiet(self.ip, "netns", "delete", self.namespace(rank))
        _quiet(self.ip, "link", "delete", self.veth(rank))

    def remove_bridge(self) -> None:
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
    exe = _ip_exe()
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


def start_forwarder(out: Path, control: tuple[str, int], ns_paths: list[str],
                    env: Mapping[str, str] | None = None,
                    timeout_s: float = 30.0) -> tuple[int, int | None]:
    """Start ``skyport.gate.netfwd`` for ``control`` inside ``ns_paths``, detached in a
    session of its own, and wait until it listens; (pid, start time).  It is the nodes'
    only way to the control plane: whoever starts it kills it with the nodes."""
    try:
        pid = detach([sys.executable, netfwd.__file__, control[0], str(control[1]),
                      *ns_paths], out, env=env)
    except DetachError as exc:
        raise GateError(f"the network forwarder did not start: {exc}") from exc
    stat = proc_stat(pid)
    start_time = stat.start_time if stat else None
    deadline = time.monotonic() + timeout_s
    while b"ready" not in out.read_bytes():
        if not is_alive(pid, start_time) or time.monotonic() > deadline:
            kill_sessions([(pid, start_time)], grace_s=0)
            raise GateError("the network forwarder failed: " +
                            out.read_bytes().decode(errors="replace")[-500:])
        time.sleep(0.05)
    return pid, start_time
