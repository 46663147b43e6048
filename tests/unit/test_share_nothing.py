"""Nodes that share nothing, the pure parts: where a launch runs, what node k stores,
what a broadcast may read and write, what the checks ask for, and the wire."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from skyport.agent.facts import parse_version
from skyport.agent.isolation import Isolation
from skyport.agent.nodes import (
    NodeOps,
    launch_cwd,
    node_output_path,
    parse_fetch,
    resolve_cwd,
)
from skyport.client.testing import BASE_URL, TestControlPlane
from skyport.core.launches import LaunchRegistry
from skyport.errors import ValidationError
from skyport.launch import bcast as bcast_mod
from skyport.launch.layout import propagated_names
from skyport.launch.mpiexec import build_command, rank_cwd_of
from skyport.launch.rank import rank_dir
from skyport.models import JobSpec

SCRIPT = "#!/bin/bash\ntrue\n"


def test_node_k_outputs_go_under_nodes_k_but_rank_outcomes_stay_together() -> None:
    assert node_output_path(0, "out/a.txt") == "outputs/out/a.txt"
    assert node_output_path(1, "out/a.txt") == "outputs/nodes/1/out/a.txt"
    assert node_output_path(3, "skyport-results/skyport-result.7.pkl") == \
        "outputs/skyport-results/skyport-result.7.pkl"


def test_a_launch_cwd_travels_relative_and_lands_in_each_nodes_own_folder(
        tmp_path: Path) -> None:
    node0, node1 = tmp_path / "n0", tmp_path / "n1"
    for d in (node0 / "sub", node1 / "sub", tmp_path / "elsewhere"):
        d.mkdir(parents=True)
    assert launch_cwd(str(node0), node0) == "."
    assert launch_cwd(str(node0 / "sub"), node0) == "sub"
    assert launch_cwd(str(tmp_path / "elsewhere"), node0) == str(tmp_path / "elsewhere")
    assert resolve_cwd("sub", node1, inside_only=False) == (node1 / "sub").resolve()
    assert resolve_cwd(".", node1, inside_only=False) == node1.resolve()
    assert resolve_cwd("missing", node1, inside_only=False) == node1  # not made here
    assert resolve_cwd("", node1, inside_only=False) == node1
    # attacks: a relative path out of the node's folder, a link out of it
    assert resolve_cwd("../n0", node1, inside_only=False) == node1
    (node1 / "out").symlink_to(tmp_path / "elsewhere")
    assert resolve_cwd("out", node1, inside_only=False) == node1
    # an absolute folder outside: as given, unless a sandbox binds only the node's own
    assert resolve_cwd(str(tmp_path / "elsewhere"), node1, inside_only=False) == \
        (tmp_path / "elsewhere").resolve()
    assert resolve_cwd(str(tmp_path / "elsewhere"), node1, inside_only=True) == node1


@pytest.mark.parametrize("entry", ["0755:../x", "0755:/etc/passwd", "9:x", "x", "0755:",
                                   "07555:x", "0644:a//b"])
def test_a_fetch_entry_outside_the_working_directory_is_refused(entry: str) -> None:
    with pytest.raises(ValidationError):
        parse_fetch(entry)


def test_a_fetch_entry_keeps_no_setuid_or_world_write() -> None:
    assert parse_fetch("4777:bin/prog") == (0o755, "bin/prog")
    assert parse_fetch("640:a") == (0o640, "a")


class _Downloads:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[str] = []

    def download(self, path: str, dest: Path) -> int:
        self.asked.append(path)
        dest.write_bytes(self.data)
        return len(self.data)


def _ops(workdir: Path, client: Any = None) -> NodeOps:
    return NodeOps(client, 1, 2, workdir, Isolation(), give=lambda: None)


def test_fetch_writes_the_file_with_its_mode_at_the_same_path(tmp_path: Path) -> None:
    client = _Downloads(b"#!/bin/sh\n")
    assert _ops(tmp_path, client).fetch([(0o750, "sub/dir/prog")]) == ["sub/dir/prog"]
    assert client.asked == ["bcast/sub/dir/prog"]
    assert (tmp_path / "sub/dir/prog").read_bytes() == b"#!/bin/sh\n"
    assert (tmp_path / "sub/dir/prog").stat().st_mode & 0o777 == 0o750


def test_fetch_refuses_a_folder_that_is_a_link_out(tmp_path: Path) -> None:
    workdir, outside = tmp_path / "w", tmp_path / "outside"
    workdir.mkdir()
    outside.mkdir()
    (workdir / "sub").symlink_to(outside)
    with pytest.raises(ValidationError, match="link out"):
        _ops(workdir, _Downloads(b"x")).fetch([(0o644, "sub/prog")])
    assert list(outside.iterdir()) == []


def test_bcast_reads_only_regular_files_inside_the_working_directory(tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    (workdir / "sub").mkdir(parents=True)
    (workdir / "sub" / "prog").write_text("x")
    os.chmod(workdir / "sub" / "prog", 0o4777)
    (tmp_path / "secret").write_text("s")
    (workdir / "link").symlink_to(tmp_path / "secret")
    ops = _ops(workdir)
    rel, real, mode = ops._bcast_source(workdir / "sub", "prog")
    assert (rel, real, mode) == ("sub/prog", (workdir / "sub" / "prog").resolve(), 0o755)
    for given, why in (("../secret", "inside the job's working directory"),
                       ("link", "link out of it"), ("nope", "an existing file"),
                       (".", "a regular file"), ("/etc/hostname", "inside the job's")):
        with pytest.raises(ValidationError, match=why):
            ops._bcast_source(workdir, given)


def test_bcast_requests_with_bad_paths_are_answered_with_an_error(tmp_path: Path) -> None:
    ops = _ops(tmp_path)
    for paths in (None, [], ["a\0b"], [1], ["x"] * 1001):
        assert "error" in ops.handle_bcast({"type": "bcast", "paths": paths, "cwd": "."})
    assert "inside" in ops.handle_bcast({"paths": ["../../etc/passwd"]})["error"]


def test_ranks_start_in_slash_and_enter_their_own_nodes_folder(tmp_path: Path) -> None:
    argv, _ = build_command("mpich", ["a", "b"], 2, ["./x"], env={}, rsh="/r", python="/py",
                            launcher="/bin/mpiexec")
    assert argv[argv.index("-wdir") + 1] == "/"
    argv, _ = build_command("openmpi", ["a"], 1, ["x"], env={}, rsh="/r", python="/py",
                            launcher="/o/bin/mpirun")
    assert argv[argv.index("--wdir") + 1] == "/"
    node0, node1 = tmp_path / "n0", tmp_path / "n1"
    (node0 / "run").mkdir(parents=True)
    (node1 / "run").mkdir(parents=True)
    assert rank_cwd_of(str(node0 / "run"), str(node0)) == "run"
    assert rank_cwd_of(str(node0), str(node0)) == "."
    assert rank_cwd_of(str(tmp_path), str(node0)) == str(tmp_path)
    assert rank_dir({"SKYPORT_WORKDIR": str(node1), "SKYPORT_RANK_CWD": "run"}) == \
        str(node1 / "run")
    assert rank_dir({"SKYPORT_WORKDIR": str(node1), "SKYPORT_RANK_CWD": "gone"}) == str(node1)


def test_home_and_tmpdir_are_each_nodes_own() -> None:
    names = propagated_names({"HOME": "/n0", "TMPDIR": "/t0", "FOO": "1",
                              "SKYPORT_RANK_CWD": "."})
    assert names == ["FOO", "SKYPORT_RANK_CWD"]


def test_the_pre_launch_check_asks_each_node_for_the_program_and_files(
        tmp_path: Path) -> None:
    (tmp_path / "in.dat").write_text("x")
    assert bcast_mod.needed_files(["./prog", "-n", "in.dat", "nope.dat"], str(tmp_path)) == \
        ["./prog", "in.dat"]
    command = bcast_mod.check_command(["./my prog", "python3"])
    assert command == ("[ -e './my prog' ] || echo './my prog'; [ -e python3 ] || command -v "
                       "python3 >/dev/null 2>&1 || echo python3; true")


def test_bcast_outside_a_job_says_so() -> None:
    with pytest.raises(bcast_mod.BcastError, match="inside a Sky Port job"):
        bcast_mod.bcast(["x"], "/", env={})


def test_the_sandbox_gives_each_node_its_own_tmp(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setattr("skyport.agent.isolation.bwrap_path", lambda: "/usr/bin/bwrap")
    own = Isolation(mode="sandbox", tmp=str(tmp_path))
    argv = own.argv(["true"], cwd=tmp_path, binds=())
    assert argv[argv.index("/tmp") - 1] == str(tmp_path.resolve())
    assert "--tmpfs" not in argv[:argv.index("/tmp")]
    bare = Isolation(mode="sandbox").argv(["true"], cwd=tmp_path, binds=())
    assert bare[bare.index("/tmp") - 1] == "--tmpfs"


def test_a_python_that_lives_under_tmp_stays_visible_over_the_nodes_tmp(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a checkout with its virtual environment in /tmp (CI's clean clone may be there):
    # without binding it back, the payload's interpreter vanishes under the node's /tmp
    monkeypatch.setattr("skyport.agent.isolation.bwrap_path", lambda: "/usr/bin/bwrap")
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr("sys.prefix", "/tmp/clone/.venv")
    monkeypatch.setattr("skyport.gate.environment.skyport_root", lambda: Path("/tmp/clone"))
    for iso in (Isolation(mode="sandbox", tmp=str(tmp_path)),
                Isolation(mode="user", uid=4242, gid=4242, tmp=str(tmp_path))):
        argv = iso.argv(["true"], cwd=tmp_path, binds=())
        view = argv.index("/tmp")
        ro = [argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"]
        assert "/tmp/clone" in ro  # bound back, after the node's /tmp
        assert argv.index("/tmp/clone") > view
        if iso.mode == "sandbox":  # once: the environment inside it comes with it
            assert "/tmp/clone/.venv" not in ro
    monkeypatch.setattr("sys.prefix", "/opt/venv")
    monkeypatch.setattr("skyport.gate.environment.skyport_root", lambda: Path("/opt/src"))
    argv = Isolation(mode="sandbox", tmp=str(tmp_path)).argv(["true"], cwd=tmp_path, binds=())
    assert not any(a.startswith("/tmp/") for a in argv[argv.index("/tmp"):argv.index("--chdir")]
                   if a != str(tmp_path.resolve()) and not a.startswith(str(tmp_path.resolve())))


def test_mpi_versions_are_read_from_hydra_and_open_mpi() -> None:
    assert parse_version("HYDRA build details:\n    Version:          5.0.2\n") == "5.0.2"
    assert parse_version("mpirun (Open MPI) 5.0.11\n\nReport bugs to") == "5.0.11"
    assert parse_version("garbage") is None


def test_launch_ops_are_a_closed_list_and_travel_in_the_order() -> None:
    reg = LaunchRegistry()
    launch = reg.create("j", 1, 2, ["stage_in"], {}, "", "stage_in")
    assert reg.claim("j", 1)["start"] == [launch.order()]
    assert launch.order()["op"] == "stage_in"
    with pytest.raises(ValidationError, match="op"):
        reg.create("j", 1, 2, ["x"], {}, "", "rm -rf")


def test_the_agent_api_takes_broadcast_files_and_refuses_unknown_ops(tmp_path: Path) -> None:
    with TestControlPlane(tmp_path) as cp:
        job = cp.client("alice").submit(JobSpec(script=SCRIPT))
        agents = cp.start(job.id)
        with httpx.Client(base_url=BASE_URL, transport=cp.agent(job.id, agents.token)
                          ._http._transport,
                          headers={"authorization": f"Bearer {agents.token}"}) as raw:
            base = f"/agent/v1/jobs/{job.id}"
            assert raw.put(f"{base}/files/bcast/prog", content=b"x").status_code == 200
            assert raw.get(f"{base}/files/bcast/prog").content == b"x"
            assert raw.put(f"{base}/files/bcast/../script.sh", content=b"x").status_code \
                in (403, 404)
            answer = raw.post(f"{base}/launches", json={"node": 0, "argv": ["x"], "op": "rm"})
            assert answer.status_code == 422 and "op" in answer.text
        assert cp.storage.get(job.id, "script.sh") == SCRIPT.encode()
