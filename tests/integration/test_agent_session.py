"""``kill_own_processes``: a session leader kills everything else in its session, not itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

LEADER = textwrap.dedent('''
    import os, signal, subprocess, sys, time
    from skyport.agent.procfs import kill_own_processes, own_processes
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    kids = [
        subprocess.Popen([sys.executable, "-c", stubborn], process_group=0),  # own group
        subprocess.Popen([sys.executable, "-c", stubborn]),  # in the leader's group
        subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], process_group=0),
        subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True),  # as MPI
    ]
    time.sleep(0.5)
    others = lambda: [p.pid for p in own_processes()]
    before = len(others())
    ok = kill_own_processes(grace_s=0.5, reap=lambda: [k.poll() for k in kids])
    print(before, ok, others(), flush=True)
''')


@pytest.mark.timeout(30)
def test_a_session_leader_kills_the_rest_of_its_session_and_survives() -> None:
    proc = subprocess.run([sys.executable, "-c", LEADER], capture_output=True, text=True,
                          timeout=30, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    before, ok, left = proc.stdout.split(maxsplit=2)
    assert int(before) >= 5 and ok == "True" and left.strip() == "[]", proc.stdout


@pytest.mark.timeout(30)
def test_a_rank_dies_with_its_parent(tmp_path) -> None:
    """``skyport.launch.rank`` sets a parent-death signal: a rank in a session of its own
    (as MPI proxies start them) that ignores SIGTERM still dies when its proxy is killed."""
    code = textwrap.dedent('''
        import os, subprocess, sys, time
        rank = subprocess.Popen([sys.executable, "-m", "skyport.launch.rank", "--", sys.executable,
                                 "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); time.sleep(60)"], start_new_session=True)
        print(rank.pid, flush=True)
        time.sleep(60)
    ''')
    proxy = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proxy.stdout is not None
    rank_pid = int(proxy.stdout.readline())
    from skyport.agent.procfs import is_alive

    time.sleep(1.0)
    assert is_alive(rank_pid)
    proxy.kill()
    proxy.wait()
    deadline = time.monotonic() + 5
    while is_alive(rank_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_alive(rank_pid)
