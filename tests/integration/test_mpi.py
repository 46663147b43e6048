"""Multi-node MPI + OpenMP jobs: real mpiexec, real ranks under two node agents."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from skyport.errors import ValidationError
from skyport.launch.mpi import missing_mpi
from skyport.models import JobState
from skyport.script import build_spec, cli_directives

from .conftest import processes_of_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LINE = re.compile(r"^rank (\d+) size (\d+) node (\S+) threads (\d+) allreduce (\d+) "
                  r"expected (\d+)$", re.M)

# Each rank walks up its parent chain to the node agent that started it and
# prints that agent's node directory (the local gate names it after the node).
CHAIN = r'''
import os, sys
pid, agent = os.getpid(), None
while pid > 1:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    if b"skyport.agent" in argv:
        agent = (pid, os.path.basename(os.path.dirname(
            argv[argv.index(b"--bootstrap") + 1].decode())))
        break
    with open(f"/proc/{pid}/stat") as f:
        pid = int(f.read().rsplit(")", 1)[1].split()[1])
print("chain", os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK"),
      os.environ["SKYPORT_NODE_NAME"], agent and agent[1], agent and agent[0],
      sorted(os.sched_getaffinity(0)), flush=True)
'''


def hybrid_spec(mpi: str = "mpich", extra: str = ""):
    script = (EXAMPLES / "hybrid" / "job.sh").read_text().replace(
        "--mpi=mpich", f"--mpi={mpi}")
    script += extra
    return build_spec(script, cli_directives(
        [("input", (EXAMPLES / "hybrid" / "hybrid.c").as_uri())]))


def check_hybrid(admin, job_id: str) -> tuple[str, list[tuple[str, ...]]]:
    done = admin.wait(job_id, timeout=120)
    out = admin.logs(job_id).data.decode()
    err = admin.logs(job_id, "stderr").data.decode()
    assert done.state == JobState.SUCCEEDED, (done.reason, out, err)
    ranks = LINE.findall(out)
    assert sorted(int(r[0]) for r in ranks) == [0, 1, 2, 3], out
    assert {r[1] for r in ranks} == {"4"}
    assert all(r[3] == "2" for r in ranks), out  # 2 OpenMP threads really ran per rank
    assert all(r[4] == r[5] == "10" for r in ranks), out  # 1+2+3+4 across both nodes
    by_node: dict[str, list[int]] = {}
    for r in ranks:
        by_node.setdefault(r[2], []).append(int(r[0]))
    assert sorted(by_node) == sorted(done.node_names), by_node
    # node order: ranks 0,1 on node 0 and 2,3 on node 1
    assert {n: sorted(v) for n, v in by_node.items()} == {
        done.node_names[0]: [0, 1], done.node_names[1]: [2, 3]}
    assert processes_of_job(job_id) == []
    return out, ranks


def test_hybrid_2x2x2_runs_two_ranks_under_each_node_agent(admin, tmp_path: Path) -> None:
    extra = (f"cat > chain.py <<'PY'\n{CHAIN}\nPY\n"
             'skyport bcast chain.py\n'  # written on node 0 only: the nodes share nothing
             '$SKYPORT_MPIEXEC "$SKYPORT_PYTHON" chain.py\n'
             'echo "hostfile:"; cat "$SKYPORT_HOSTFILE"\n')
    job = admin.submit(hybrid_spec(extra=extra))
    out, _ = check_hybrid(admin, job.id)
    print(out)
    chains = re.findall(r"^chain (\d) (\S+) (\S+) (\d+) \[([\d, ]+)\]$", out, re.M)
    assert len(chains) == 4, out
    agents = {}
    for _rank, node, agent_node, agent_pid, _cores in chains:
        assert agent_node == node, out  # the rank's own agent is its node's agent
        agents.setdefault(node, set()).add(agent_pid)
    assert len(agents) == 2 and all(len(p) == 1 for p in agents.values())
    assert len(set().union(*agents.values())) == 2  # two distinct agent processes
    names = admin.job(job.id).node_names
    assert f"hostfile:\n{names[0]}:2\n{names[1]}:2\n" in out


@pytest.mark.skipif(missing_mpi("openmpi") is not None,
                    reason=f"Open MPI not installed: {missing_mpi('openmpi')}")
def test_hybrid_with_openmpi(admin) -> None:
    job = admin.submit(hybrid_spec("openmpi"))
    check_hybrid(admin, job.id)


def test_layout_beyond_the_cores_is_rejected_at_submit(admin) -> None:
    with pytest.raises(ValidationError, match="exceeds cpus-per-node"):
        admin.submit(build_spec("#SKYPORT --nodes=2 --cpus-per-node=2 --ranks-per-node=2 "
                                "--threads-per-rank=2\necho\n"))


STUBBORN = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('stubborn', flush=True); time.sleep(600)")


def _launch_processes_of(job_id: str, workdirs: list[str]) -> list[tuple[int, str]]:
    """MPI proxies and Sky Port launch processes that belong to ``job_id``: by their
    environment or by a node working directory on their command line."""
    marker = f"SKYPORT_JOB_ID={job_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if not any(w in cmdline for w in ("hydra_pmi_proxy", "skyport.launch", "skyport-rsh")):
            continue
        if marker in env or any(w and w in cmdline for w in workdirs):
            found.append((int(entry), cmdline[:200]))
    return found


def test_cancel_kills_every_rank_proxy_and_relay_even_if_they_ignore_sigterm(admin) -> None:
    script = ("#!/bin/bash\n#SKYPORT --name=stubborn --time=5m\n"
              "#SKYPORT --nodes=2 --cpus-per-node=2 --ranks-per-node=2 --threads-per-rank=1\n"
              "trap '' TERM\n"
              f'$SKYPORT_MPIEXEC "$SKYPORT_PYTHON" -c "{STUBBORN}"\n')
    job = admin.submit(build_spec(script))
    deadline = time.monotonic() + 90
    while admin.logs(job.id).data.count(b"stubborn") < 4:
        assert time.monotonic() < deadline, admin.logs(job.id, "stderr").data
        assert not admin.job(job.id).state.is_terminal(), admin.job(job.id).reason
        time.sleep(0.5)
    running = processes_of_job(job.id)
    workdirs = [d for d in {_cwd(p) for p in running} if d]
    assert len(_launch_processes_of(job.id, workdirs)) >= 2  # proxies/launches exist now
    admin.cancel(job.id)
    deadline = time.monotonic() + GRACE_S + 10
    while (processes_of_job(job.id) or _launch_processes_of(job.id, workdirs)) \
            and time.monotonic() < deadline:
        time.sleep(0.25)
    assert processes_of_job(job.id) == []
    assert _launch_processes_of(job.id, workdirs) == []


GRACE_S = 5.0  # the agent's SIGTERM-to-SIGKILL grace (the local gate's is shorter)


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""
