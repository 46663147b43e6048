"""Payload isolation pieces: the wrappers, the payload user, reads that never follow links."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gates.libcloud.userdata import DEFAULT_INSTALL, render_userdata
from gates.local import LocalGate
from gates.local.payloadusers import choose_mode, open_path_to, reap_orphan_users
from skyport import __version__
from skyport.agent.bootstrap import Bootstrap
from skyport.agent.checkpointer import copy_regular_files
from skyport.agent.isolation import Isolation, give_tree, resolves_inside
from skyport.agent.main import payload_env
from skyport.agent.payload import LogPump, Payload
from skyport.config import StateDir
from skyport.errors import ConfigError
from skyport.gate import make_gate
from skyport.models import JobSpec
from skyport.storage import JobStorage
from tests.integration.test_local_gate import FAKE_AGENT, request

pytestmark = pytest.mark.timeout(60)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (payload users)")
with_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")


@pytest.fixture
def home() -> Iterator[Path]:
    """A state directory whose parents others may enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="sp-iso-", dir="/tmp"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_payload_environment_is_an_allow_list() -> None:
    boot = Bootstrap(control_url="https://cp", ca_pem="", token="t", job_id="j", workdir="/w")
    spec = JobSpec.model_validate({"script": "true", "env": {"MINE": "1"}})
    base = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "AZURE_STORAGE_KEY": "k",
            "DATABASE_URL": "postgres://x", "LIBCLOUD_KEY": "k", "GITHUB_PAT": "p",
            "AWS_PROFILE": "prod", "OPENAI_API_KEY": "sk", "SKYPORT_HOME": "/state",
            "SKYPORT_AGENT_PID": "1", "RAY_ADDRESS": "x:1"}
    env = payload_env(boot, spec, base)
    assert env["LANG"] == "C.UTF-8" and env["MINE"] == "1"
    for name in ("AZURE_STORAGE_KEY", "DATABASE_URL", "LIBCLOUD_KEY", "GITHUB_PAT",
                 "AWS_PROFILE", "OPENAI_API_KEY", "SKYPORT_HOME", "SKYPORT_AGENT_PID",
                 "RAY_ADDRESS"):
        assert name not in env, name
    isolated = Bootstrap(**{**boot.__dict__, "isolation": "sandbox"})
    assert payload_env(isolated, spec, {**base, "HOME": "/root"})["HOME"] == "/w"


def test_a_sandbox_hides_the_state_dir_and_binds_the_workdir_back() -> None:
    iso = Isolation(mode="sandbox", hide=("/state",))
    if shutil.which("bwrap") is None:
        with pytest.raises(OSError, match="bubblewrap"):
            iso.argv(["bash", "s"], cwd=Path("/state/n/w"), binds=[])
        return
    argv = iso.argv(["bash", "s"], cwd=Path("/state/n/w"), binds=[Path("/tmp/rt")])
    text = " ".join(argv)
    assert "--tmpfs /state" in text and "--unshare-pid" in text and "--tmpfs /tmp" in text
    assert text.index("--tmpfs /state") < text.index("--bind /state/n/w /state/n/w")
    assert "--bind /tmp/rt /tmp/rt" in text and argv[-2:] == ["bash", "s"]
    assert iso.popen_kwargs() == {}
    with pytest.raises(ValueError, match="unprivileged"):
        Isolation(mode="user", uid=0, gid=0)


def test_give_tree_and_resolves_inside_never_follow_links(tmp_path: Path) -> None:
    work, outside = tmp_path / "w", tmp_path / "secret"
    work.mkdir()
    outside.write_text("x")
    (work / "link").symlink_to(outside)
    (work / "sub").mkdir()
    (work / "sub" / "f").write_text("y")
    (work / "agent.log").write_text("z")
    if os.geteuid() == 0:
        give_tree(work, 4321, 4321, keep=["agent.log"])
        assert os.lstat(work / "link").st_uid == 4321 and outside.stat().st_uid == 0
        assert (work / "sub" / "f").stat().st_uid == 4321
        assert (work / "agent.log").stat().st_uid == 0
    assert not resolves_inside(work / "link", work)
    assert resolves_inside(work / "sub" / "f", work)
    (work / "inner").symlink_to(work / "sub" / "f")
    assert resolves_inside(work / "inner", work)


def test_checkpoint_copies_and_log_reads_never_follow_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("the key")
    src = tmp_path / "ckpt"
    (src / "d").mkdir(parents=True)
    (src / "d" / "ok.bin").write_text("state")
    (src / "link").symlink_to(secret)
    (src / "dirlink").symlink_to(tmp_path)
    assert copy_regular_files(src, tmp_path / "copy") == 1
    assert [p.name for p in (tmp_path / "copy").rglob("*") if p.is_file()] == ["ok.bin"]

    log = tmp_path / "stdout.log"
    log.write_text("mine\n")
    got: list[bytes] = []
    pump = LogPump({"stdout": log, "stderr": tmp_path / "stderr.log"},
                   lambda s, o, d: got.append(d))
    (tmp_path / "stderr.log").symlink_to(secret)  # a link from the start: never read
    assert pump.pump_once()
    log.unlink()
    log.symlink_to(secret)  # swapped in later: the pump keeps reading the file it opened
    assert pump.pump_once()
    pump.close()
    assert got == [b"mine\n"]


def test_user_isolation_without_bwrap_drops_to_the_user() -> None:
    iso = Isolation(mode="user", uid=4321, gid=4322)
    if shutil.which("bwrap") and shutil.which("setpriv"):
        argv = iso.argv(["id"], cwd=Path("/w"), binds=[])
        assert argv[argv.index("--reuid") + 1] == "4321" and "--clear-groups" in argv
        assert iso.popen_kwargs() == {}
    else:
        assert iso.popen_kwargs() == {"user": 4321, "group": 4322, "extra_groups": []}
    assert iso.allows_peer(4321) and iso.allows_peer(os.getuid()) and not iso.allows_peer(99)


@root_only
def test_a_cluster_gets_a_user_of_its_own_and_loses_it_with_the_cluster(home: Path) -> None:
    script = home / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    os.chmod(script, 0o644)
    gate = make_gate("local", "local", {"cpus": 2, "gpus": [], "kill_grace_s": 0.5,
                                        "agent_command": [sys.executable, str(script)]},
                     StateDir(home / "state"))
    assert isinstance(gate, LocalGate) and gate.isolation == "user"
    info = gate.create_cluster(request("u1", nodes=1))
    record = gate._records.get("u1")
    assert record is not None and record.payload_user.startswith("sp-")
    user = pwd.getpwnam(record.payload_user)
    assert (user.pw_uid, user.pw_gid) == (record.payload_uid, record.payload_gid)
    assert user.pw_uid > 0 and user.pw_shell.endswith("nologin")
    assert user.pw_gecos.endswith(str((home / "state" / "gates" / "local").resolve()))
    workdir = Path(info.nodes[0].details["workdir"])
    # the way to the node folder: enter, never list; the folder itself: private
    for folder in (home / "state", workdir.parent, workdir.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o711, folder
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "state" / "gates" / "local" / "clusters").stat().st_mode) \
        == 0o700
    gate.delete_cluster("u1")
    with pytest.raises(KeyError):
        pwd.getpwnam(record.payload_user)
    # a state directory removed with a cluster in it: the next gate deletes its user
    gate.create_cluster(request("u2", nodes=1))
    left = gate._records.get("u2")
    assert left is not None
    assert gate.kill_node("u2", 0)  # the node dies, the record and the user stay
    shutil.rmtree(home / "state", ignore_errors=True)
    assert left.payload_user in reap_orphan_users()
    with pytest.raises(KeyError):
        pwd.getpwnam(left.payload_user)


@root_only
@with_bwrap
def test_a_payload_user_cannot_read_the_state_dir_and_owns_its_workdir(home: Path) -> None:
    state, work = home / "state", home / "state" / "gates" / "l" / "nodes" / "c" / "n0"
    work.mkdir(parents=True)
    (state / "ca.key").write_text("key")
    os.chmod(state / "ca.key", 0o600)
    name = "sp-unit-" + os.urandom(3).hex()
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                    "/usr/sbin/nologin", "--user-group", name], check=True)
    try:
        pw = pwd.getpwnam(name)
        open_path_to(work.parent, state)
        iso = Isolation(mode="user", uid=pw.pw_uid, gid=pw.pw_gid, hide=(str(state),))
        iso.give(work)
        script = ("id -u; ls " + str(state) + " 2>/dev/null && echo LISTED; "
                  "cat " + str(state / "ca.key") + " 2>/dev/null && echo READ; "
                  "echo mine > own.txt && echo WROTE; "
                  + sys.executable + " -c 'import skyport; print(\"PY\")'")
        out = home / "out"
        p = Payload(["bash", "-c", script], cwd=work, env={"PATH": "/usr/bin:/bin"},
                    stdout_path=out, stderr_path=home / "err", isolation=iso)
        assert p.run().exit_code == 0, (home / "err").read_text()
        assert out.read_text().split() == [str(pw.pw_uid), "WROTE", "PY"]
        assert (work / "own.txt").stat().st_uid == pw.pw_uid
    finally:
        subprocess.run(["userdel", name], check=False)


@with_bwrap
def test_a_sandboxed_payload_sees_its_folder_and_nothing_else_of_the_state_dir(
        home: Path) -> None:
    state, work = home / "state", home / "state" / "gates" / "l" / "nodes" / "c" / "n0"
    work.mkdir(parents=True)
    (state / "ca.key").write_text("key")
    (state / "gates" / "l" / "nodes" / "c" / "n1").mkdir()
    iso = Isolation(mode="sandbox", hide=(str(state),))
    script = ("ls " + str(state) + "; ls " + str(work.parent) + "; "
              "cat " + str(state / "ca.key") + " 2>/dev/null && echo READ; "
              "echo mine > own.txt && echo WROTE; echo $$")
    out = home / "out"
    p = Payload(["bash", "-c", script], cwd=work, env={"PATH": "/usr/bin:/bin"},
                stdout_path=out, stderr_path=home / "err", isolation=iso)
    assert p.run().exit_code == 0, (home / "err").read_text()
    # the state dir holds only the way to this node's folder; other nodes' are not there
    lines = out.read_text().split()
    assert lines[:3] == ["gates", "n0", "WROTE"], lines
    assert int(lines[3]) < 10  # a PID namespace of its own: no agent is visible
    assert (work / "own.txt").read_text() == "mine\n" and (state / "ca.key").exists()


def test_choose_mode_refuses_a_sandbox_without_bubblewrap(monkeypatch: pytest.MonkeyPatch,
                                                          home: Path) -> None:
    monkeypatch.setattr("gates.local.payloadusers.bwrap_path", lambda: None)
    assert choose_mode("none") == "none"
    with pytest.raises(ConfigError, match="bubblewrap"):
        choose_mode("sandbox")
    locked = home / "locked"
    (locked / "in").mkdir(parents=True)
    os.chmod(locked, 0o700)
    with pytest.raises(ConfigError, match="cannot enter"):
        open_path_to(locked / "in", home / "elsewhere")


def test_nodes_install_the_control_planes_own_version_pinned() -> None:
    boot = Bootstrap(control_url="https://cp", ca_pem="PEM", token="t", job_id="j",
                     node_name="n0", cluster_id="c")
    text = render_userdata(boot)
    assert f'"skyport=={__version__}"' in DEFAULT_INSTALL and DEFAULT_INSTALL in text
    assert f'skyport.__version__ != "{__version__}"' in text
    assert "pip install skyport\n" not in text


def test_local_storage_the_control_plane_creates_is_private(home: Path) -> None:
    old = os.umask(0o022)  # even under a lax umask, the storage root is 0700
    try:
        JobStorage((home / "elsewhere" / "store").as_uri())
    finally:
        os.umask(old)
    assert stat.S_IMODE((home / "elsewhere" / "store").stat().st_mode) == 0o700
