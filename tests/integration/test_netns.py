"""Nodes in network namespaces of their own (``network = "namespace"``): the local
gate, the libcloud gate's local-process driver, and Open MPI there (the ray gate's
test is in test_ray_gate.py, with its Ray cluster).

Each node sees only its loopback and its interface on the cluster's bridge;
MPI ranks on different nodes talk over the bridge; the agents reach the
control plane through the gate's forwarder alone; and nothing of the
cluster's network is left once the job is over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from gates.local import LocalGate, LocalGateConfig
from skyport import pki
from skyport.config import GateEntry, StateDir
from skyport.errors import GateError
from skyport.gate import ClusterRequest, make_gate
from skyport.gate.netns import ClusterNet, gate_tag
from skyport.launch.mpi import missing_mpi
from skyport.script import build_spec, cli_directives

from .test_mpi import check_hybrid

IP = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")

pytestmark = [
    pytest.mark.integration, pytest.mark.timeout(400),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(IP is None, reason="network namespaces need iproute2 (no `ip`)"),
]

HYBRID_C = Path(__file__).resolve().parents[2] / "examples" / "hybrid" / "hybrid.c"
ADDR = re.compile(r"^addr (\d+) (\d+) (\S+)$", re.M)
LINKS = re.compile(r"^links (\d) (.*)$", re.M)

SCRIPT = """#!/bin/bash
#SKYPORT --name=netns --time=00:05:00
#SKYPORT --nodes=2 --ranks-per-node=2 --threads-per-rank=2
#SKYPORT --mpi=mpich
set -e
export PATH="$PATH:/usr/sbin:/sbin"
mpicc -fopenmp -O2 -o hybrid hybrid.c
$SKYPORT_MPIEXEC --bcast ./hybrid
$SKYPORT_MPIEXEC sh -c 'echo "addr $SKYPORT_RANK $SKYPORT_NODE_RANK \
$(ip -o -4 addr show dev $SKYPORT_NET_IFACE | awk "{print \\$4}")"'
echo "links 0 $(ip -o link | awk -F': ' '{print $2}' | sort | tr '\\n' ' ')"
echo "addrs 0 $(ip -o addr | awk '{print $2}' | sort -u | tr '\\n' ' ')"
$SKYPORT_RSH $(echo $SKYPORT_NODE_NAMES | cut -d, -f2) 'export PATH="$PATH:/usr/sbin:/sbin"; \
echo "links 1 $(ip -o link | awk -F": " "{print \\$2}" | sort | tr "\\n" " ")"; \
echo "addrs 1 $(ip -o addr | awk "{print \\$2}" | sort -u | tr "\\n" " ")"'
"""


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _leftovers(cluster_id: str) -> list[str]:
    """The cluster's namespaces, links (by alias) and forwarder processes still there."""
    assert IP is not None
    ns = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    links = json.loads(subprocess.run([IP, "-j", "link", "show"], capture_output=True,
                                      text=True).stdout or "[]")
    return sorted([line.split()[0] for line in ns.splitlines() if f"-{cluster_id}-n" in line] +
                  [f"{link['ifname']} ({link.get('ifalias')})" for link in links
                   if str(link.get("ifalias", "")).endswith(f" {cluster_id}")] +
                  [f"pid {p}" for p in _pids()
                   if "netfwd" in _cmdline(p) and f"-{cluster_id}-n" in _cmdline(p)])


def netns_spec(mpi: str = "mpich"):  # type: ignore[no-untyped-def]
    return build_spec(SCRIPT.replace("--mpi=mpich", f"--mpi={mpi}"),
                      cli_directives([("input", HYBRID_C.as_uri())]))


def check_on_own_networks(client, job_id: str) -> str:  # type: ignore[no-untyped-def]
    """The job ran the hybrid program right, its ranks on two nodes with an address of
    their own each, every node seeing lo and sky0 only, and nothing of the cluster's
    network (namespaces, links, forwarders) is left afterwards.  The job's output."""
    out, _ranks = check_hybrid(client, job_id)  # 4 ranks over 2 nodes, allreduce right
    names = client.wait(job_id, timeout=60).node_names
    addrs = {int(r): (int(n), a) for r, n, a in ADDR.findall(out)}
    assert sorted(addrs) == [0, 1, 2, 3], out
    by_node = {n: a for n, a in addrs.values()}
    assert all(addrs[r][0] == r // 2 for r in addrs), out
    assert len({n for n, _ in addrs.values()}) == 2 and len(set(by_node.values())) == 2, out
    assert all(a.startswith("10.77.") for a in by_node.values()), out
    for node in ("0", "1"):  # each node sees its loopback and its bridge interface, only
        links = dict(LINKS.findall(out)).get(node, "").split()
        assert [link.split("@")[0] for link in links] == ["lo", "sky0"], out
        assert f"addrs {node} lo sky0 " in out, out
    cluster_id = _cluster_of(names[0])
    deadline = time.monotonic() + 120
    while _leftovers(cluster_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _leftovers(cluster_id) == []
    return out


def _cluster_of(node_name: str) -> str:
    """The cluster id in a node name (``<id>-n<rank>``, or ``skyport-<id>-n<rank>`` for the
    libcloud gate)."""
    cid = node_name.rsplit("-n", 1)[0]
    return cid.removeprefix("skyport-")


def test_mpi_ranks_talk_over_each_nodes_own_bridge_interface(fresh_controlplane) -> None:
    local = GateEntry(name="local", type="local", config={"cpus": 8, "network": "namespace"})
    cp = fresh_controlplane(gates=[local])
    with cp.client() as c:
        check_on_own_networks(c, c.submit(netns_spec()).id)


def _host_address() -> str | None:
    """An IPv4 address of this machine's, not a loopback one, or None."""
    assert IP is not None
    for entry in json.loads(subprocess.run([IP, "-j", "-4", "addr", "show"],
                                           capture_output=True, text=True).stdout or "[]"):
        for a in entry.get("addr_info", []):
            if not a["local"].startswith("127.") and not a["local"].startswith("10.77."):
                return str(a["local"])
    return None


@pytest.mark.skipif(missing_mpi("openmpi") is not None,
                    reason=f"Open MPI not installed: {missing_mpi('openmpi')}")
def test_open_mpi_ranks_talk_over_each_nodes_own_bridge_interface(fresh_controlplane) -> None:
    """Open MPI's daemons and ranks are told to use sky0.  The control plane is on an
    address of the host's, so each node also has that address on its loopback (where the
    forwarder listens): an address every node has, which must carry no MPI traffic."""
    host = _host_address()
    if host is None:
        pytest.skip("this machine has no IPv4 address but loopback ones")
    local = GateEntry(name="local", type="local", config={"cpus": 8, "network": "namespace"})
    cp = fresh_controlplane(gates=[local])
    cp.stop()
    config = cp.state.load_config()
    config.api_host = host
    cp.state.save_config(config)
    pki.issue_server_cert(cp.state.pki, ["localhost", host])
    cp.start()
    with cp.client() as c:
        check_on_own_networks(c, c.submit(netns_spec("openmpi")).id)


def test_libcloud_local_driver_nodes_talk_over_their_own_subnet(fresh_controlplane) -> None:
    cloud = GateEntry(name="cloud", type="libcloud", config={
        "provider": "gates.libcloud.localdriver:LocalProcessNodeDriver",
        "driver_args": {"network": "namespace"}, "image": "local-python",
        "flavors": ["lp.large"], "max_nodes": 4, "poll_s": 0.2, "boot_s": 1,
        "create_timeout_s": 60})
    cp = fresh_controlplane(gates=[cloud])
    with cp.client() as c:
        job = c.submit(netns_spec())
        check_on_own_networks(c, job.id)
        assert c.job(job.id).gate == "cloud"
    disks = cp.home / "gates" / "cloud" / "localdriver" / "disks"
    assert list(disks.iterdir()) == []  # the nodes, forwarders and all, are gone


# -- the gate alone, with a stand-in agent ------------------------------------------

# Reports its network namespace, its interfaces, what the control plane's address
# answers (through the forwarder) and whether another port of the host answers.
NET_AGENT = r'''
import json, os, socket, sys, time
boot = json.load(open(sys.argv[sys.argv.index("--bootstrap") + 1]))
host, port, other = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def talk(p):
    try:
        with socket.create_connection((host, p), timeout=5) as s:
            s.sendall(b"hello %d" % boot["node_rank"])
            return s.recv(100).decode()
    except OSError as exc:
        return "error " + type(exc).__name__
report = {"ns": os.readlink("/proc/self/ns/net"), "ifaces": sorted(n for _, n in
          socket.if_nameindex()), "control": talk(port), "other": talk(other),
          "iface": boot["net_iface"]}
tmp = os.path.join(boot["workdir"], "net.json.tmp")
json.dump(report, open(tmp, "w"))
os.replace(tmp, os.path.join(boot["workdir"], "net.json"))
time.sleep(300)
'''


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"echo " + conn.recv(100))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def _net_gate(tmp_path: Path, port: int, other: int, **overrides: object) -> LocalGate:
    script = tmp_path / "net_agent.py"
    script.write_text(NET_AGENT)
    config = {"cpus": 4, "mem_mb": 4096, "max_nodes": 4, "kill_grace_s": 0.5,
              "isolation": "none", "network": "namespace",
              "agent_command": [sys.executable, str(script), "127.0.0.1", str(port),
                                str(other)], **overrides}
    gate = make_gate("local", "local", config, StateDir(tmp_path / "home"))
    assert isinstance(gate, LocalGate)
    return gate


def _request(cluster_id: str, port: int, nodes: int = 2) -> ClusterRequest:
    return ClusterRequest(cluster_id=cluster_id, job_id=f"job-{cluster_id}", owner="alice",
                          nodes=nodes, cpus_per_node=1, gpus_per_node=0, mem_mb=None,
                          flavor=None, control_url=f"https://127.0.0.1:{port}",
                          ca_pem="-----BEGIN CERTIFICATE-----\n", token="tok-" + "x" * 30)


def _reports(gate: LocalGate, cluster_id: str) -> list[dict]:
    paths = [Path(n.details["workdir"]) / "net.json"
             for n in gate.describe_cluster(cluster_id).nodes]
    deadline = time.monotonic() + 30
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, "the stand-in agents did not report"
        time.sleep(0.05)
    return [json.loads(p.read_text()) for p in paths]


def test_each_node_has_its_own_namespace_and_only_the_control_plane_outside(
        tmp_path: Path) -> None:
    control, _ = _echo_server()
    other, _ = _echo_server()  # a service of the host the nodes must not reach
    port, other_port = control.getsockname()[1], other.getsockname()[1]
    try:
        gate = _net_gate(tmp_path, port, other_port)
        info = gate.create_cluster(_request("nx1", port))
        got = _reports(gate, "nx1")
        host_ns = os.readlink("/proc/self/ns/net")
        assert len({r["ns"] for r in got} | {host_ns}) == 3, got  # one each, not the host's
        for rank, r in enumerate(got):
            assert r["ifaces"] == ["lo", "sky0"] and r["iface"] == "sky0", r
            assert r["control"] == f"echo hello {rank}", r  # through the forwarder
            assert r["other"] == "error ConnectionRefusedError", r
        assert [n.details["address"] for n in info.nodes] == ["10.77.0.1", "10.77.0.2"]
        assert _leftovers("nx1") != []
        fwd = [int(x.split()[1]) for x in _leftovers("nx1") if x.startswith("pid ")]
        assert len(fwd) == 1 and gate.describe_cluster("nx1").state == "running"
        os.kill(fwd[0], signal.SIGKILL)  # the nodes are cut off from the control plane
        deadline = time.monotonic() + 30
        while gate.describe_cluster("nx1").state == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "network forwarder is not running" in gate.describe_cluster("nx1").reason
        gate.delete_cluster("nx1")
        assert _leftovers("nx1") == []
        assert gate.list_clusters() == []
    finally:
        control.close()
        other.close()


def test_a_restarted_gate_removes_the_networks_of_clusters_it_has_no_record_of(
        tmp_path: Path) -> None:
    control, _ = _echo_server()
    port = control.getsockname()[1]
    try:
        gate = _net_gate(tmp_path, port, 1)
        gate.create_cluster(_request("kept", port, nodes=1))
        # as if a gate had died between making a cluster's network and recording it
        ClusterNet(str(gate.dir), "orphan", 2).create(("127.0.0.1", port))
        other_gate_dir = tmp_path / "elsewhere"
        ClusterNet(str(other_gate_dir), "orphan", 1).create(("127.0.0.1", port))
        theirs = [x for x in _leftovers("orphan") if gate_tag(str(other_gate_dir)) in x]
        assert len(theirs) == 1 + 2 and len(_leftovers("orphan")) == 3 + 5  # ns, bridge, veth
        again = _net_gate(tmp_path, port, 1)
        assert _leftovers("orphan") == theirs  # another gate's: not touched
        assert _leftovers("kept") != [] and _reports(again, "kept")[0]["control"]
        again.delete_cluster("kept")
        assert _leftovers("kept") == []
    finally:
        ClusterNet(str(tmp_path / "elsewhere"), "orphan", 1).destroy()
        control.close()
    assert _leftovers("orphan") == []


def test_a_control_plane_inside_the_nodes_subnet_is_refused_and_leaves_nothing(
        tmp_path: Path) -> None:
    gate = _net_gate(tmp_path, 1, 1)
    req = dataclasses.replace(_request("nf2", 1), control_url="https://10.77.0.9:1")
    with pytest.raises(GateError, match="10.77.0.9 is in 10.77.0.0/16"):
        gate.create_cluster(req)
    assert gate.list_clusters() == [] and _leftovers("nf2") == []


def test_an_agent_that_cannot_start_leaves_no_network_behind(tmp_path: Path) -> None:
    gate = _net_gate(tmp_path, 1, 1, agent_command=[str(tmp_path / "no-such-agent")])
    with pytest.raises(GateError, match="could not start"):
        gate.create_cluster(_request("nf1", 1))
    assert gate.list_clusters() == [] and _leftovers("nf1") == []
    assert not any("netfwd" in _cmdline(p) and "nf1" in _cmdline(p) for p in _pids())


def test_the_network_setting_is_checked(tmp_path: Path) -> None:
    assert LocalGateConfig().network == "host"  # nothing changes unless chosen
    with pytest.raises(ValidationError, match="network"):
        LocalGateConfig(network="bridge")


# -- the libcloud local-process driver alone ------------------------------------------

NODE_USERDATA = r'''#!/bin/bash
"$SKYPORT_PYTHON" - <<'PY'
import json, os, socket
def talk(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"hi")
            return s.recv(100).decode()
    except OSError as exc:
        return "error " + type(exc).__name__
report = {"ns": os.readlink("/proc/self/ns/net"),
          "ifaces": sorted(n for _, n in socket.if_nameindex()),
          "control": talk(%(port)d), "other": talk(%(other)d)}
json.dump(report, open("net.json.tmp", "w"))
os.replace("net.json.tmp", "net.json")
PY
exec sleep 300
'''


def test_libcloud_local_driver_puts_each_node_on_its_networks_bridge(tmp_path: Path) -> None:
    from libcloud.compute.types import NodeState

    from gates.libcloud.localdriver import LocalProcessNodeDriver

    control, _ = _echo_server()
    other, _ = _echo_server()  # a service of the host the nodes must not reach
    port, other_port = control.getsockname()[1], other.getsockname()[1]
    driver = LocalProcessNodeDriver(root=str(tmp_path / "d"), network="namespace",
                                    kill_grace_s=0.5)
    size = next(s for s in driver.list_sizes() if s.id == "lp.small")
    image = driver.list_images()[0]
    userdata = NODE_USERDATA % {"port": port, "other": other_port}
    try:
        nodes = [driver.create_node(f"n{i}", size, image, ex_userdata=userdata,
                                    ex_network=net, ex_egress=("127.0.0.1", port))
                 for i, net in enumerate(["lca", "lca", "lcb"])]
        assert [n.private_ips for n in nodes] == [["10.77.0.1"], ["10.77.0.2"], ["10.77.0.1"]]
        reports = []
        for n in nodes:
            path = Path(n.extra["disk"]) / "net.json"  # the boot script's folder
            deadline = time.monotonic() + 60
            while not path.exists():
                assert time.monotonic() < deadline, "the node did not report"
                time.sleep(0.05)
            reports.append(json.loads(path.read_text()))
        assert len({r["ns"] for r in reports} | {os.readlink("/proc/self/ns/net")}) == 4
        for r in reports:
            assert r["ifaces"] == ["lo", "sky0"] and r["control"] == "echo hi", r
            assert r["other"] == "error ConnectionRefusedError", r
        assert len(_leftovers("lca")) == 2 + 3 + 2  # namespaces, bridge and veths, forwarders
        # a node whose forwarder dies is cut off: an ERROR node, as the gate sees it
        fwd = [int(x.split()[1]) for x in _leftovers("lcb") if x.startswith("pid ")]
        assert len(fwd) == 1
        os.kill(fwd[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while driver.list_nodes([nodes[2].id])[0].state != NodeState.ERROR:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert driver.destroy_node(nodes[0])
        assert _leftovers("lca") != []  # its network's other node still needs the bridge
        for n in nodes[1:]:
            assert driver.destroy_node(n)
        assert _leftovers("lca") == [] and _leftovers("lcb") == [] and driver.list_nodes() == []
    finally:
        for n in driver.list_nodes():
            driver.destroy_node(n)
        control.close()
        other.close()
