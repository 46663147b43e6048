"""Zero trust, as attacks: each test is one attacker position of docs/SECURITY.md.

Every test does what the attacker would, asserts that it fails, and that it
changed nothing.  They run on the shared control plane (root in CI: payloads
then run as a user of their own per cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from skyport.client import Client
from skyport.controlplane import ray_temp_dir, ray_token_path
from skyport.gate.environment import is_allowed
from skyport.models import JobState
from skyport.script import build_spec

from .conftest import ControlPlane, processes_of_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

_PROBE = """\
import sys, ray
try:
    ray.init(address=sys.argv[1], namespace="skyport", log_to_driver=False)
except ConnectionError as exc:
    print("REFUSED", exc)
    sys.exit(3)
core = ray.get_actor("core", namespace="skyport")
print("CONNECTED", core)
ray.shutdown()
"""


def _probe_ray(address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _PROBE, address], env=env, text=True,
                          capture_output=True, timeout=180, check=False)


def test_ray_plane_refuses_a_driver_without_the_token(controlplane: ControlPlane,
                                                       admin: Client) -> None:
    """Attacker: any process (any host) that reaches the GCS port, without the token."""
    info = json.loads(controlplane.state.address_path.read_text())
    address = info["ray_address"]
    before = [j.id for j in admin.jobs(all=True)]
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    bare["RAY_USAGE_STATS_ENABLED"] = "0"
    for attempt in ({**bare, "RAY_AUTH_MODE": "disabled"}, bare,
                    {**bare, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
        got = _probe_ray(address, attempt)
        assert got.returncode == 3 and "REFUSED" in got.stdout, (got.stdout, got.stderr[-2000:])
    # the token file is the control plane's alone, and with it the same probe gets in
    token = ray_token_path(controlplane.state)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    ok = _probe_ray(address, {**bare, "RAY_AUTH_MODE": "token",
                              "RAY_AUTH_TOKEN_PATH": str(token)})
    assert ok.returncode == 0 and "CONNECTED" in ok.stdout, ok.stderr[-2000:]
    assert [j.id for j in admin.jobs(all=True)] == before
    # Ray's predictable /tmp folder is a 0700 folder of the control plane's user
    parent = Path(ray_temp_dir(controlplane.state))
    st = os.lstat(parent)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
    assert stat.S_IMODE(st.st_mode) == 0o700


VICTIM = """#!/bin/bash
#SKYPORT --name=victim --time=00:05:00
echo "secret of the victim" > secret.txt
sleep 600
"""

ATTACK = r"""#!/bin/bash
#SKYPORT --name=attacker --time=00:03:00 --input={targets} --output=env.txt --output=report.txt
report() {{ echo "$1" >> report.txt; }}
env > env.txt
n=0
while IFS= read -r f; do
  n=$((n + 1))
  if head -c1 -- "$f" >/dev/null 2>&1; then report "LEAK read $f"; fi
done < targets.txt
report "TRIED $n"
for d in "$STATE" "$STATE/pki" "$STATE/storage" "$STATE/gates" "$VICTIM_WORKDIR"; do
  if ls -- "$d" >/dev/null 2>&1; then report "LEAK list $d"; fi
  if touch -- "$d/pwned" 2>/dev/null; then report "LEAK write $d"; fi
done
for p in /proc/[0-9]*; do
  if tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q 'skyport.agent\|skyport.controlplane'; then
    if head -c1 "$p/environ" >/dev/null 2>&1; then report "LEAK environ $p"; fi
    if (exec 3<"$p/mem") 2>/dev/null; then report "LEAK mem $p"; fi
  fi
done
if "$SKYPORT_PYTHON" -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$VICTIM_SOCKET" 2>/dev/null; then
  report "LEAK socket $VICTIM_SOCKET"
fi
report DONE
"""


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


def _wait_running(admin: Client, job_id: str) -> list[int]:
    deadline = time.monotonic() + 90
    while not (pids := processes_of_job(job_id)):
        assert time.monotonic() < deadline, admin.job(job_id)
        time.sleep(0.2)
    return pids


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: (size, mtime_ns); what an attack must not change."""
    found = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            p = Path(folder) / name
            if skip is not None and p.is_relative_to(skip):
                continue
            st = os.lstat(p)
            found[str(p)] = (st.st_size, st.st_mtime_ns)
    return found


def test_a_payload_reaches_nothing_of_the_control_plane_or_other_jobs(
        controlplane: ControlPlane, admin: Client, tmp_path: Path) -> None:
    """Attacker: a job's payload, knowing every path of the machine."""
    state = controlplane.home
    victim = admin.submit(build_spec(VICTIM))
    try:
        pid = _wait_running(admin, victim.id)[0]
        env = _environ(pid)
        workdir, sock = Path(env["SKYPORT_WORKDIR"]), env["SKYPORT_LAUNCH_SOCKET"]
        deadline = time.monotonic() + 30
        while not (workdir / "secret.txt").exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        targets = tmp_path / "targets.txt"
        names = sorted(_snapshot(state))
        assert str(workdir / "secret.txt") in names
        assert any(n.endswith("ca.key") for n in names)
        targets.write_text("\n".join(names) + "\n")
        before = _snapshot(state, skip=state / "storage")
        spec = build_spec(ATTACK.format(targets=targets.as_uri()))
        spec = spec.model_copy(update={"env": {**spec.env, "STATE": str(state),
                                               "VICTIM_WORKDIR": str(workdir),
                                               "VICTIM_SOCKET": sock}})
        attack = admin.submit(spec)
        done = admin.wait(attack.id, timeout=180)
        assert done.state == JobState.SUCCEEDED, done.events
        report = admin.download(attack.id, "outputs/report.txt").decode()
        assert report == f"TRIED {len(names)}\nDONE\n", report
        # nothing of the control plane's environment but the allow-list reached it
        payload_env = dict(line.split("=", 1) for line in
                           admin.download(attack.id, "outputs/env.txt").decode().splitlines()
                           if "=" in line)
        shell_own = {"PWD", "OLDPWD", "SHLVL", "_"}  # bash sets these itself
        leaked = {k for k in os.environ if k in payload_env and not is_allowed(k)
                  and k not in spec.env and k not in shell_own
                  and not k.startswith("SKYPORT_")}
        assert not leaked, leaked
        assert {"SKYPORT_HOME", "SKYPORT_AGENT_PID"}.isdisjoint(payload_env)
        assert payload_env["HOME"] != os.environ.get("HOME")
        # and it changed nothing: no file written, none modified (the victim's included)
        after = _snapshot(state, skip=state / "storage")
        assert not [p for p in after if p.endswith("pwned")]
        def still(files: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
            """What no job may change (the database, logs and records move on their own)."""
            moving = ("jobs.db", "agent.", "audit.jsonl", "scheduler-history.json")
            return {p: v for p, v in files.items()
                    if not Path(p).name.startswith(moving)
                    and Path(p).parent.name not in ("clusters", "run")}

        assert still({p: v for p, v in after.items() if p in before}) == still(before)
        assert (workdir / "secret.txt").read_text() == "secret of the victim\n"
    finally:
        admin.cancel(victim.id)


LINKS = """#!/bin/bash
#SKYPORT --name=links --time=00:02:00 --output=leak.txt --output=dir
ln -s {secret} leak.txt
mkdir dir
ln -s {secret} dir/link.txt
echo fine > dir/fine.txt
"""


def test_output_symlinks_out_of_the_workdir_are_refused(controlplane: ControlPlane,
                                                       admin: Client) -> None:
    """Attacker: a payload declaring as outputs links to the control plane's keys."""
    secret = controlplane.state.pki / "ca.key"
    job = admin.submit(build_spec(LINKS.format(secret=secret)))
    done = admin.wait(job.id, timeout=120)
    paths = {f.path for f in admin.files(job.id)}
    assert "outputs/dir/fine.txt" in paths
    assert not {"outputs/leak.txt", "outputs/dir/link.txt"} & paths, paths
    reasons = " | ".join(e.reason for e in done.events)
    assert "outputs refused" in reasons and "leak.txt" in reasons \
        and "dir/link.txt" in reasons, reasons


def test_what_the_control_plane_creates_is_its_own(controlplane: ControlPlane,
                                                    admin: Client) -> None:
    """Attacker: another local user, after jobs have run: nothing to write, nothing to read."""
    job = admin.submit(build_spec("#!/bin/bash\n#SKYPORT --output=o.txt\necho x > o.txt\n"))
    assert admin.wait(job.id, timeout=120).state == JobState.SUCCEEDED
    state = controlplane.home
    problems = []
    for folder, dirs, files in os.walk(state):
        for name in (*dirs, *files):
            p = Path(folder) / name
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode):
                # 0711: the way to the node folders (enter, not list), nothing more
                if mode & 0o066:
                    problems.append(f"{p} {oct(mode)}")
            elif st.st_uid == os.getuid() and mode & 0o077 and p.suffix != ".crt":
                # certificates are public; keys, tokens, config, jobs' files are not
                problems.append(f"{p} {oct(mode)}")
    assert stat.S_IMODE(state.stat().st_mode) & 0o066 == 0
    assert not problems, problems


def test_joining_a_ray_cluster_without_token_auth_is_refused(tmp_path: Path) -> None:
    """Attacker: anyone on the network of an existing, unauthenticated Ray cluster that
    ``skyport start --address`` would join: the control plane refuses to join it."""
    from ray.cluster_utils import Cluster

    from skyport.controlplane import check_cluster_requires_token
    from skyport.errors import ControlPlaneError

    tmp = tempfile.mkdtemp(prefix="sot-", dir="/tmp")  # short: Ray's socket paths
    env = {k: os.environ.pop(k) for k in list(os.environ)
           if k.startswith("RAY_AUTH") or k == "RAY_TMPDIR"}
    os.environ["RAY_TMPDIR"] = tmp
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "object_store_memory": 80 * 1024**2, "include_dashboard": False})
        try:
            with pytest.raises(ControlPlaneError, match="without a token"):
                check_cluster_requires_token(cluster.address)
        finally:
            cluster.shutdown()
    finally:
        os.environ.pop("RAY_TMPDIR", None)
        os.environ.update(env)
        shutil.rmtree(tmp, ignore_errors=True)
