"""Gates end to end: the libcloud gate (local-process driver), the chaos gate,
and cleaning up after failures and control plane crashes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from skyport.config import GateEntry, StateDir
from skyport.controlplane import read_pid
from skyport.gate import make_gate
from skyport.models import JobState
from skyport.script import build_spec

from .conftest import processes_of_job
from .test_mpi import LINE, hybrid_spec

pytestmark = [pytest.mark.integration]

DRIVER = "gates.libcloud.localdriver:LocalProcessNodeDriver"
SECRET_VAR = "SKYPORT_TEST_CLOUD_SECRET"
SECRET = "cloud-s3cr3t-" + "x7" * 8


def libcloud_entry(name: str = "cloud") -> GateEntry:
    return GateEntry(name=name, type="libcloud", config={
        "provider": DRIVER, "image": "local-python", "flavors": ["lp.small", "lp.large"],
        "max_nodes": 4, "poll_s": 0.2, "boot_s": 1, "create_timeout_s": 60,
        "credentials_env": {"key": SECRET_VAR}, "prices": {"lp.large": 0.5}})


def _normalised(out: str) -> list[str]:
    """The hybrid lines, node names replaced by node 0/1 (ranks 0,1 / 2,3)."""
    lines = []
    for r in sorted(LINE.findall(out), key=lambda r: int(r[0])):
        node = "node0" if int(r[0]) < 2 else "node1"
        lines.append(f"rank {r[0]} size {r[1]} node {node} threads {r[3]} "
                     f"allreduce {r[4]} expected {r[5]}")
    return lines


def _grep_tree(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and needle in path.read_bytes():
                hits.append(str(path))
        except OSError:
            continue
    return hits


@pytest.mark.timeout(240)
def test_hybrid_on_libcloud_gate_matches_local_gate(
    admin, fresh_controlplane, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_job = admin.submit(hybrid_spec())
    monkeypatch.setenv(SECRET_VAR, SECRET)  # the control plane inherits it
    cp = fresh_controlplane(gates=[libcloud_entry()])
    disks = cp.home / "gates" / "cloud" / "localdriver"
    with cp.client() as c:
        job = c.submit(hybrid_spec(extra="env | sort\nsleep 2\n"))
        # while it runs: nothing on a node (user-data, environment) holds the secret
        deadline = time.monotonic() + 120
        while c.job(job.id).state not in (JobState.RUNNING, *[s for s in JobState
                                                               if s.is_terminal()]):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        userdata = list(disks.rglob("user-data"))
        assert len(userdata) == 2
        assert _grep_tree(disks, SECRET.encode()) == []
        for pid in processes_of_job(job.id):
            with open(f"/proc/{pid}/environ", "rb") as f:
                assert SECRET.encode() not in f.read()
        done = c.wait(job.id, timeout=150)
        out = c.logs(job.id).data.decode()
        assert done.state == JobState.SUCCEEDED, (done.reason, out)
        assert done.gate == "cloud" and done.flavor == "lp.large"
        assert done.price_per_hour == pytest.approx(1.0)  # 2 nodes x 0.5
        assert all(n.startswith("skyport-") for n in done.node_names)
        assert SECRET not in out and SECRET not in c.logs(job.id, "stderr").data.decode()
        assert all(SECRET not in e.reason for e in done.events)
        # the Core deletes the cluster once the job is over (a delete of VMs takes a moment)
        _wait_until(lambda: all(x.job_id != job.id for x in c.clusters()), 60,
                    "the job's cluster to be deleted")
    local_done = admin.wait(local_job.id, timeout=150)
    assert local_done.state == JobState.SUCCEEDED
    local_out = admin.logs(local_job.id).data.decode()
    assert len(_normalised(out)) == 4
    assert _normalised(out) == _normalised(local_out)
    # the gate deleted every node; no log or file of the control plane holds the secret
    gate = make_gate("cloud", "libcloud", libcloud_entry().config, StateDir(cp.home))
    deadline = time.monotonic() + 30
    while gate.list_clusters() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert gate.list_clusters() == []
    assert _grep_tree(cp.home, SECRET.encode()) == []


def _wait_until(check, timeout: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


@pytest.mark.timeout(300)
def test_chaos_gate_jobs_end_cleanly_and_nothing_leaks(fresh_controlplane) -> None:
    chaos = GateEntry(name="flaky", type="chaos", config={
        "inner": {"type": "local", "config": {"cpus": 8, "max_nodes": 4,
                                              "kill_grace_s": 1.0}},
        "create_failure_rate": 0.3, "delete_failure_rate": 0.3, "seed": 11})
    cp = fresh_controlplane(gates=[chaos])
    with cp.client() as c:
        ids = [c.submit(build_spec(f"#!/bin/bash\n#SKYPORT --time=2m --name=chaos{i}\n"
                                   "echo ok\n")).id for i in range(50)]
        done = [c.wait(job_id, timeout=240, poll_s=0.5) for job_id in ids]
        states = {j.state for j in done}
        assert states <= {JobState.SUCCEEDED, JobState.FAILED}, states
        for job in done:
            if job.state == JobState.FAILED:
                assert "injected create failure" in job.reason, job.events
            else:
                assert c.logs(job.id).data == b"ok\n"
        succeeded = sum(j.state == JobState.SUCCEEDED for j in done)
        print(f"chaos: {succeeded} of 50 succeeded")
        assert succeeded >= 40  # 3 tries at 30 %: ~2.7 % of jobs fail
        # the reaper deletes what failed deletes and failed creates left behind
        _wait_until(lambda: c.clusters() == [], 60, "the reaper to delete every cluster")
    assert all(processes_of_job(j) == [] for j in ids)
    inner = make_gate("flaky", "local", chaos.config["inner"]["config"], StateDir(cp.home))
    assert inner.list_clusters() == []


@pytest.mark.timeout(240)
def test_killed_control_plane_leaves_no_cluster_without_live_job(
    fresh_controlplane, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET)
    cp = fresh_controlplane(gates=[libcloud_entry()])
    with cp.client() as c:
        long = [c.submit(build_spec("#!/bin/bash\n#SKYPORT --time=2m\nsleep 15\necho done\n")).id
                for _ in range(2)]
        _wait_until(lambda: all(c.job(j).state == JobState.RUNNING for j in long), 90,
                    "both jobs to run")
        assert {x.job_id for x in c.clusters()} == set(long)
    # a cluster whose job the store never heard of (created just before a crash)
    from skyport.gate import ClusterRequest
    from tests.conformance.gate_suite import ca_pem_for_tests

    gate = make_gate("cloud", "libcloud", libcloud_entry().config, StateDir(cp.home))
    gate.create_cluster(ClusterRequest(
        cluster_id="orphan-0", job_id="orphan", owner="admin", nodes=1, cpus_per_node=1,
        gpus_per_node=0, mem_mb=None, flavor=None, control_url="https://127.0.0.1:9",
        ca_pem=ca_pem_for_tests(tmp_path), token="tok-orphan"))
    pid = read_pid(cp.state)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    cp.start()
    with cp.client() as c:
        def only_live() -> bool:
            for x in c.clusters():
                job = c.job(x.job_id) if x.job_id != "orphan" else None
                if job is None or job.state.is_terminal() or job.cluster_id != x.cluster_id:
                    return False
            return True

        _wait_until(only_live, 60, "the orphan cluster to be reaped")
        done = [c.wait(j, timeout=120) for j in long]
        assert [j.state for j in done] == [JobState.SUCCEEDED] * 2, [j.events for j in done]
        _wait_until(lambda: c.clusters() == [], 60, "every cluster to be deleted")
    assert gate.list_clusters() == []


@pytest.mark.timeout(180)
def test_failed_gate_replans_on_another_or_fails_with_reason(fresh_controlplane) -> None:
    broken = GateEntry(name="broken", type="chaos", config={
        "inner": {"type": "local", "config": {"cpus": 4}}, "create_failure_rate": 1.0,
        "leave_behind_fraction": 0.0, "seed": 1})
    good = GateEntry(name="good", type="local", config={"cpus": 4})
    cp = fresh_controlplane(gates=[broken, good])
    with cp.client() as c:
        anywhere = c.submit(build_spec("#!/bin/bash\n#SKYPORT --time=1m\necho ok\n"))
        pinned = c.submit(build_spec("#!/bin/bash\n#SKYPORT --time=1m --gate=broken\necho x\n"))
        a, p = c.wait(anywhere.id, timeout=120), c.wait(pinned.id, timeout=120)
        assert a.state == JobState.SUCCEEDED and a.gate == "good", a.events
        assert p.state == JobState.FAILED and "injected create failure" in p.reason
        if any(e.reason.startswith("gate broken failed") for e in a.events):
            assert any("re-planned on another gate" in e.reason for e in a.events)
        _wait_until(lambda: c.clusters() == [], 60, "every cluster to be deleted")
