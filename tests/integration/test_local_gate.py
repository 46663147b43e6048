"""The local gate: capacity, real node processes, persistence across gate instances."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from gates.local import LocalGate, LocalGateConfig
from skyport.agent.procfs import is_alive, proc_stat
from skyport.config import StateDir
from skyport.errors import CapacityError, GateError
from skyport.gate import ClusterRequest, make_gate
from skyport.gate.environment import is_allowed
from skyport.gate.runner import GateRunner

pytestmark = pytest.mark.timeout(60)

TOKEN = "tok-" + "s3cr3t" * 6

# Stands in for the agent: reports what its bootstrap told it, starts a child in a
# process group of its own (as the real agent does with its payload), and sleeps.
FAKE_AGENT = r'''
import json, os, stat, subprocess, sys, time
path = sys.argv[sys.argv.index("--bootstrap") + 1]
boot = json.load(open(path))
child = subprocess.Popen(["sleep", "300"], process_group=0)
report = {"rank": boot["node_rank"], "cores": boot["cores"], "gpus": boot["gpus"],
          "name": boot["node_name"], "num_nodes": boot["num_nodes"],
          "token": boot["token"],
          "mode": stat.S_IMODE(os.stat(path).st_mode), "child": child.pid,
          "affinity": sorted(os.sched_getaffinity(0)), "env": dict(os.environ)}
tmp = os.path.join(boot["workdir"], "fake.json.tmp")
json.dump(report, open(tmp, "w"))
os.replace(tmp, os.path.join(boot["workdir"], "fake.json"))
time.sleep(300)
'''


def make(tmp_path: Path, **overrides: object) -> LocalGate:
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    # isolation: the fake agent runs no payload, and pytest's tmp_path is 0700 (no payload
    # user could enter it); the payload users are tested with a home of their own below
    config = {"cpus": 4, "mem_mb": 4096, "gpus": ["0", "1"], "max_nodes": 4,
              "agent_command": [sys.executable, str(script)], "kill_grace_s": 0.5,
              "isolation": "none", **overrides}
    gate = make_gate("local", "local", config, StateDir(tmp_path / "home"))
    assert isinstance(gate, LocalGate)
    return gate


def request(cluster_id: str, nodes: int = 2, cpus: int = 1, gpus: int = 0,
            mem_mb: int | None = None) -> ClusterRequest:
    return ClusterRequest(cluster_id=cluster_id, job_id=f"job-{cluster_id}", owner="alice",
                          nodes=nodes, cpus_per_node=cpus, gpus_per_node=gpus, mem_mb=mem_mb,
                          flavor=None, control_url="https://127.0.0.1:1",
                          ca_pem="-----BEGIN CERTIFICATE-----\n", token=TOKEN)


def reports(gate: LocalGate, cluster_id: str, nodes: int) -> list[dict]:
    info = gate.describe_cluster(cluster_id)
    paths = [Path(n.details["workdir"]) / "fake.json" for n in info.nodes]
    deadline = time.monotonic() + 20
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, "fake agents did not report"
        time.sleep(0.05)
    assert len(paths) == nodes
    return [json.loads(p.read_text()) for p in paths]


def test_flavor_and_config_defaults(tmp_path: Path) -> None:
    gate = make(tmp_path)
    (flavor,) = gate.flavors()
    assert (flavor.name, flavor.cpus, flavor.gpus, flavor.mem_mb, flavor.max_nodes,
            flavor.price_per_hour) == ("local", 4, 2, 4096, 4, 0.0)
    assert LocalGateConfig().isolation == "auto"
    default = LocalGate("d", LocalGateConfig(isolation="none"), StateDir(tmp_path / "home"))
    assert default.total_cpus == os.cpu_count()
    assert default.agent_command[1:] == ["-m", "skyport.agent"]
    assert default.workdir_root == tmp_path / "home" / "gates" / "d" / "nodes"


def test_capacity_accounting_and_capacity_error(tmp_path: Path) -> None:
    gate = make(tmp_path)
    cap = gate.capacity()
    assert (cap.total_cpus, cap.free_cpus, cap.total_gpus, cap.free_gpus) == (4, 4, 2, 2)
    gate.create_cluster(request("a", nodes=3, cpus=1, gpus=0))
    cap = gate.capacity()
    assert (cap.free_cpus, cap.free_gpus) == (1, 2)
    with pytest.raises(CapacityError, match="2 cores .1 of 4 free"):
        gate.create_cluster(request("b", nodes=1, cpus=2))
    assert [c.cluster_id for c in gate.list_clusters()] == ["a"]
    gate.delete_cluster("a")
    assert gate.capacity().free_cpus == 4
    gate.create_cluster(request("b", nodes=1, cpus=2))
    gate.delete_cluster("b")


def test_never_fitting_request_is_gate_error_not_capacity_error(tmp_path: Path) -> None:
    gate = make(tmp_path)
    for req in (request("x", nodes=5), request("x", nodes=1, cpus=5),
                request("x", nodes=1, gpus=3), request("x", nodes=1, mem_mb=5000),
                request("bad/id")):
        with pytest.raises(GateError) as info:
            gate.create_cluster(req)
        assert not isinstance(info.value, CapacityError)
    assert gate.capacity().free_cpus == 4


def test_nodes_run_with_their_share_and_the_token_stays_private(tmp_path: Path) -> None:
    gate = make(tmp_path)
    info = gate.create_cluster(request("c1", nodes=2, cpus=2, gpus=1))
    assert info.state == "running"
    assert [n.name for n in info.nodes] == ["c1-n0", "c1-n1"]
    got = reports(gate, "c1", 2)
    assert [r["rank"] for r in got] == [0, 1]
    assert all(r["num_nodes"] == 2 and r["token"] == TOKEN and r["mode"] == 0o600
               for r in got)
    assert sorted(g for r in got for g in r["gpus"]) == ["0", "1"]
    physical = sorted(os.sched_getaffinity(0))
    for r in got:
        assert r["cores"] and set(r["cores"]) <= set(physical)
    for node in gate.describe_cluster("c1").nodes:
        assert node.alive
        pid = node.details["pid"]
        assert TOKEN.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert TOKEN.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    for record in (gate.dir / "clusters").iterdir():
        assert TOKEN not in record.read_text()
    gate.delete_cluster("c1")


def test_new_gate_instance_lists_and_deletes_and_nothing_survives(tmp_path: Path) -> None:
    first = make(tmp_path)
    first.create_cluster(request("c2", nodes=2, cpus=1))
    got = reports(first, "c2", 2)
    pids = [n.details["pid"] for n in first.describe_cluster("c2").nodes]
    pids += [r["child"] for r in got]
    assert all(is_alive(p) for p in pids)

    second = make(tmp_path)  # as if the gate actor had been restarted
    assert [c.cluster_id for c in second.list_clusters()] == ["c2"]
    assert second.describe_cluster("c2").state == "running"
    assert second.capacity().free_cpus == 2
    with pytest.raises(CapacityError):
        second.create_cluster(request("c3", nodes=1, cpus=3))
    second.delete_cluster("c2")
    time.sleep(0.2)  # let the first gate's zombies be seen as such
    first.list_clusters()  # reaps the first instance's children
    assert not any(is_alive(p) for p in pids)
    assert second.describe_cluster("c2").state == "gone"
    assert second.list_clusters() == [] and first.list_clusters() == []
    assert second.capacity().free_cpus == 4
    second.delete_cluster("c2")  # idempotent
    second.delete_cluster("never-existed")
    assert not (second.workdir_root / "c2").exists()


def test_a_dead_node_is_reported_and_pid_reuse_is_not_mistaken(tmp_path: Path) -> None:
    gate = make(tmp_path)
    gate.create_cluster(request("c4", nodes=2, cpus=1))
    reports(gate, "c4", 2)
    node0 = gate.describe_cluster("c4").nodes[0]
    os.kill(node0.details["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while gate.describe_cluster("c4").nodes[0].alive:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = gate.describe_cluster("c4")
    assert info.state == "failed" and "c4-n0" in info.reason and info.nodes[1].alive
    # a record whose start time does not match the live pid's is not that process
    path = gate.dir / "clusters" / "c4.json"
    raw = json.loads(path.read_text())
    real = raw["nodes"][1]["start_time"]
    raw["nodes"][1]["start_time"] = real - 1
    path.write_text(json.dumps(raw))
    assert not gate.describe_cluster("c4").nodes[1].alive
    raw["nodes"][1]["start_time"] = real
    path.write_text(json.dumps(raw))
    pid1 = raw["nodes"][1]["pid"]
    gate.delete_cluster("c4")
    assert not is_alive(pid1)


def test_gpus_are_never_handed_to_two_clusters(tmp_path: Path) -> None:
    gate = make(tmp_path, gpus=["0", "1", "2"])
    a = gate.create_cluster(request("g1", nodes=2, cpus=1, gpus=1))
    with pytest.raises(CapacityError, match="GPUs"):
        gate.create_cluster(request("g2", nodes=2, cpus=1, gpus=1))
    b = gate.create_cluster(request("g3", nodes=1, cpus=1, gpus=1))
    gpus_a = {g for n in a.nodes for g in n.details["gpus"]}
    gpus_b = {g for n in b.nodes for g in n.details["gpus"]}
    assert len(gpus_a) == 2 and len(gpus_b) == 1 and not gpus_a & gpus_b
    assert gate.capacity().free_gpus == 0
    gate.delete_cluster("g1")
    c = gate.create_cluster(request("g4", nodes=2, cpus=1, gpus=1))
    assert {g for n in c.nodes for g in n.details["gpus"]} == gpus_a
    for cid in ("g3", "g4"):
        gate.delete_cluster(cid)


def test_a_retried_create_returns_the_same_cluster(tmp_path: Path) -> None:
    gate = make(tmp_path)
    first = gate.create_cluster(request("r1", nodes=1))
    again = gate.create_cluster(request("r1", nodes=1))
    assert [n.details["pid"] for n in first.nodes] == [n.details["pid"] for n in again.nodes]
    assert gate.capacity().free_cpus == 3
    gate.delete_cluster("r1")


def test_an_agent_that_cannot_start_leaves_nothing_behind(tmp_path: Path) -> None:
    gate = make(tmp_path, agent_command=[str(tmp_path / "no-such-agent")])
    with pytest.raises(GateError, match="could not start"):
        gate.create_cluster(request("f1", nodes=2))
    assert gate.list_clusters() == [] and gate.capacity().free_cpus == 4


def test_the_real_agent_command_is_started_with_a_bootstrap(tmp_path: Path) -> None:
    # the default agent command, pointed at a control plane that is not there
    gate = make(tmp_path, agent_command=None)
    info = gate.create_cluster(request("ra", nodes=1))
    workdir = Path(info.nodes[0].details["workdir"])
    deadline = time.monotonic() + 20
    while (workdir / ".skyport-bootstrap.json").exists():
        assert time.monotonic() < deadline, "the agent did not consume its bootstrap"
        time.sleep(0.05)
    pid = info.nodes[0].details["pid"]
    st = proc_stat(pid)
    assert st is not None and st.session == st.pid  # its own session
    gate.delete_cluster("ra")
    assert not is_alive(pid) and not workdir.exists()


def test_the_agent_gets_only_the_allow_listed_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets = {"GITHUB_PAT": "ghp_local", "DATABASE_URL": "postgres://u:p@db/x",
               "AZURE_STORAGE_KEY": "az", "RAY_ADDRESS": "10.0.0.1:6379"}
    for name, value in {**secrets, "OMPI_MCA_btl": "self,tcp"}.items():
        monkeypatch.setenv(name, value)
    runner = GateRunner(make(tmp_path))
    runner.create_cluster(request("envc", nodes=1))
    try:
        (report,) = reports(runner.gate, "envc", 1)  # type: ignore[arg-type]
        env = report["env"]
        assert not set(secrets) & set(env), env
        assert all(is_allowed(k) for k in env), sorted(env)
        assert env["OMPI_MCA_btl"] == "self,tcp" and env["PATH"] == os.environ["PATH"]
    finally:
        runner.delete_cluster("envc")
