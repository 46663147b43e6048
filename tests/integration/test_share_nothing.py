"""Nodes that share nothing: each node of the local gate has its own directory.

What node 0's script makes is on node 0 only until it is broadcast; every
node gets the script and the inputs; every node's outputs come back; and
whether the nodes have the job's MPI is what their agents report.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from skyport.config import GateEntry
from skyport.models import JobState
from skyport.script import build_spec, cli_directives

from .conftest import processes_of_job
from .test_mpi import check_hybrid

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HYBRID_C = Path(__file__).resolve().parents[2] / "examples" / "hybrid" / "hybrid.c"
WHERE = re.compile(r"^where (\d+) (\d+) (\S+) (\S+) (\S+) (\S+) (\d+)$", re.M)

# 2 nodes x 2 ranks x 2 threads, no --cpus-per-node: the Slurm-like default (4 cores a node)
HEAD = """#!/bin/bash
#SKYPORT --name=share-nothing --time=00:04:00
#SKYPORT --nodes=2 --ranks-per-node=2 --threads-per-rank=2
#SKYPORT --output=where.txt
set -e
mpicc -fopenmp -O2 -o hybrid hybrid.c
"""


def _spec(body: str):
    return build_spec(HEAD + body, cli_directives([("input", HYBRID_C.as_uri())]))


def test_hybrid_job_built_on_node_0_runs_everywhere_with_bcast(admin, tmp_path: Path) -> None:
    job = admin.submit(_spec(
        "$SKYPORT_MPIEXEC --bcast ./hybrid\n"
        # each rank: where it runs, and the staged input as its own node has it
        "$SKYPORT_MPIEXEC sh -c 'echo \"where $SKYPORT_RANK $SKYPORT_NODE_RANK $PWD "
        "$SKYPORT_WORKDIR $HOME $TMPDIR $(wc -c < hybrid.c)\"; "
        "echo \"rank $SKYPORT_RANK on node $SKYPORT_NODE_RANK\" >> where.txt'\n"))
    out, _ranks = check_hybrid(admin, job.id)  # 4 ranks, 2 threads each, allreduce 10
    where = {int(m[0]): m[1:] for m in WHERE.findall(out)}
    assert sorted(where) == [0, 1, 2, 3], out
    size = str(HYBRID_C.stat().st_size)
    dirs = {}
    for rank, (node, pwd, workdir, home, tmpdir, input_size) in where.items():
        assert int(node) == rank // 2, out  # ranks 0,1 on node 0; 2,3 on node 1
        assert pwd == workdir == home, out  # the rank runs in its own node's directory
        assert input_size == size, out  # the input was staged to this node too
        dirs.setdefault(node, set()).add((workdir, tmpdir))
    assert all(len(v) == 1 for v in dirs.values()), dirs
    (dir0, tmp0), = dirs["0"]
    (dir1, tmp1), = dirs["1"]
    assert dir0 != dir1 and tmp0 != tmp1  # nothing shared between the nodes
    # every node's outputs come back: node 1's under nodes/1/
    admin.fetch(job.id, tmp_path, prefix="outputs/")
    assert sorted((tmp_path / "outputs" / "where.txt").read_text().splitlines()) == [
        "rank 0 on node 0", "rank 1 on node 0"]
    assert sorted((tmp_path / "outputs" / "nodes" / "1" / "where.txt").read_text()
                  .splitlines()) == ["rank 2 on node 1", "rank 3 on node 1"]
    listed = {f.path for f in admin.files(job.id)}
    assert {"outputs/where.txt", "outputs/nodes/1/where.txt"} <= listed


def test_without_bcast_the_launch_fails_fast_naming_the_missing_file(admin) -> None:
    job = admin.submit(_spec("$SKYPORT_MPIEXEC ./hybrid\n"))
    done = admin.wait(job.id, timeout=240)
    err = admin.logs(job.id, "stderr").data.decode()
    out = admin.logs(job.id).data.decode()
    assert done.state == JobState.FAILED, (done.reason, err)
    names = done.node_names
    assert f"node 1 ({names[1]}) has no ./hybrid" in err, err
    assert "skyport bcast" in err and "--bcast" in err, err
    assert "allreduce" not in out  # no rank was started anywhere
    assert processes_of_job(job.id) == []


def test_skyport_bcast_copies_files_with_their_mode_and_refuses_links_out(admin) -> None:
    script = ("#!/bin/bash\n#SKYPORT --nodes=2 --time=00:03:00\n"
              "mkdir -p sub && printf 'echo from $SKYPORT_NODE_RANK\\n' > sub/run.sh\n"
              "chmod 750 sub/run.sh\n"
              "skyport bcast sub/run.sh\n"
              "ln -s /etc/hostname out-link\n"
              "skyport bcast out-link || echo refused $?\n"
              "skyport bcast ../escape || echo refused $?\n"
              "$SKYPORT_RSH $(echo $SKYPORT_NODE_NAMES | cut -d, -f2) "
              "'stat -c %a sub/run.sh; ./sub/run.sh; test -e out-link || echo no-link'\n")
    job = admin.submit(build_spec(script))
    done = admin.wait(job.id, timeout=240)
    out = admin.logs(job.id).data.decode()
    err = admin.logs(job.id, "stderr").data.decode()
    assert done.state == JobState.SUCCEEDED, (done.reason, out, err)
    assert "sub/run.sh on every node" in out, out
    assert out.count("refused 1") == 2, (out, err)
    assert "link out of it" in err and "inside the job's working directory" in err, err
    assert "750\nfrom 1\nno-link\n" in out, out


def test_a_job_asking_for_an_mpi_its_nodes_lack_fails_at_once(fresh_controlplane) -> None:
    # node images without Open MPI: the agents look for it where there is none
    local = GateEntry(name="local", type="local", config={
        "cpus": 8, "agent_command": ["env", "SKYPORT_OPENMPI_HOME=/nonexistent/openmpi",
                                     sys.executable, "-m", "skyport.agent"]})
    cp = fresh_controlplane(gates=[local])
    with cp.client() as c:
        job = c.submit(build_spec("#!/bin/bash\n#SKYPORT --nodes=2 --ranks-per-node=2 "
                                  "--mpi=openmpi --time=00:03:00\necho ran\n"))
        done = c.wait(job.id, timeout=240)
        assert done.state == JobState.FAILED, done.reason
        assert "has no Open MPI, which the job asks for (--mpi=openmpi)" in done.reason
        assert "its agent found: MPICH" in done.reason
        assert c.logs(job.id).data == b""  # the script never ran
        assert JobState.RUNNING not in [e.state for e in done.events]
