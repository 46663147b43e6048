"""Linux process facts read from ``/proc``, and killing whole process groups or sessions.

Used by the agent (its payload's process group) and by the local gate (a
node's whole session).  Two facts keep this safe against pid reuse:

* a process is identified by ``(pid, start_time)``: ``start_time`` is field 22
  of ``/proc/<pid>/stat`` (clock ticks since boot), which a reused pid does not
  share;
* Linux never hands out a pid while a process group or session with that id
  still has a member, so the members of session ``S`` are the original
  session's as long as the leader ``S`` is gone or still the original one.

Zombies (state ``Z``/``X``) count as gone: they run no code and hold no core.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass

__all__ = ["ProcStat", "is_alive", "kill_group", "kill_own_processes", "kill_sessions", "members",
           "own_processes", "proc_stat", "set_child_subreaper", "set_parent_death_signal",
           "descendants"]


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_time: int

    @property
    def running(self) -> bool:
        return self.state not in ("Z", "X", "x")


def proc_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) is in parentheses and may itself hold spaces or ')'
    rest = raw[raw.rindex(")") + 2:].split()
    return ProcStat(pid=pid, state=rest[0], ppid=int(rest[1]), pgrp=int(rest[2]),
                    session=int(rest[3]), start_time=int(rest[19]))


def is_alive(pid: int, start_time: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, if given, started at ``start_time``."""
    st = proc_stat(pid)
    if st is None or not st.running:
        return False
    return start_time is None or st.start_time == start_time


def members(*, pgrp: int | None = None, sessions: Set[int] = frozenset()) -> list[ProcStat]:
    """Running processes of a process group or of any of the sessions."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st is None or not st.running:
            continue
        if (pgrp is not None and st.pgrp == pgrp) or st.session in sessions:
            found.append(st)
    return found


def _signal_groups(pgids: set[int], sig: int) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _signal_each(procs: Iterable[ProcStat], sig: int) -> None:
    for p in procs:
        try:
            os.kill(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _kill(find: Callable[[], list[ProcStat]], grace_s: float, reap: Callable[[], object],
          poll_s: float = 0.05, kill_wait_s: float = 5.0,
          signal_all: Callable[[list[ProcStat], int], None] | None = None) -> bool:
    """SIGTERM every group found, wait ``grace_s``, SIGKILL what is left."""
    if signal_all is None:
        def signal_all(procs: list[ProcStat], sig: int) -> None:
            _signal_groups({p.pgrp for p in procs}, sig)
    procs = find()
    if not procs:
        reap()
        return True
    signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while True:
        reap()
        procs = find()
        if not procs:
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    deadline = time.monotonic() + kill_wait_s
    while procs and time.monotonic() < deadline:
        signal_all(procs, signal.SIGKILL)
        time.sleep(poll_s)
        reap()
        procs = find()
    return not procs


def kill_group(pgid: int, grace_s: float = 5.0,
               reap: Callable[[], object] = lambda: None) -> bool:
    """Kill every process of group ``pgid``; True when none is left running.

    ``reap`` is called while waiting so that the caller can collect its own
    child (e.g. ``Popen.poll``), which would otherwise linger as a zombie.
    """
    return _kill(lambda: members(pgrp=pgid), grace_s, reap)


def kill_sessions(leaders: Iterable[tuple[int, int | None]], grace_s: float = 5.0,
                  reap: Callable[[], object] = lambda: None) -> bool:
    """Kill every process of the sessions led by ``(pid, start_time)``; True when none is left.

    All sessions get SIGTERM at once and share one grace period.  If a
    different process (another start time) now holds a leader's pid, that
    session has no member left (see the module docstring) and is skipped.
    """
    sessions: dict[int, int | None] = {}
    for sid, start in leaders:
        leader = proc_stat(sid)
        if leader is not None and start is not None and leader.start_time != start:
            continue
        sessions[sid] = start

    def find() -> list[ProcStat]:
        found = []
        for p in members(sessions=set(sessions)):
            start = sessions[p.session]
            if start is None or p.start_time >= start:
                found.append(p)
        return found

    return _kill(find, grace_s, reap)


def _running() -> list[ProcStat]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st.running:
                found.append(st)
    return found


def descendants(pid: int, procs: Iterable[ProcStat] | None = None) -> list[ProcStat]:
    """Running processes below ``pid`` in the parent tree (``pid`` itself not included)."""
    children: dict[int, list[ProcStat]] = {}
    for p in _running() if procs is None else procs:
        children.setdefault(p.ppid, []).append(p)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def set_child_subreaper() -> bool:
    """Make the caller adopt its orphaned descendants (``PR_SET_CHILD_SUBREAPER``), so that
    ``descendants`` still finds them after their parent died; False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` to the caller when its parent dies (kept across
    ``exec``); False where unsupported or when the parent is already gone."""
    ppid = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(sig), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            return False
    except (OSError, AttributeError):
        return False
    return os.getppid() == ppid  # the parent may have died before the call


def own_processes() -> list[ProcStat]:
    """What the caller started: its descendants and, if it leads its session, every other
    member of that session (MPI launchers move ranks to sessions of their own, so the
    session alone is not enough, and a process may leave its parent's tree by daemonising,
    which the subreaper (``set_child_subreaper``) undoes)."""
    me = os.getpid()
    procs = _running()
    mine = {p.pid: p for p in descendants(me, procs)}
    if os.getsid(0) == me:
        mine.update({p.pid: p for p in procs if p.session == me and p.pid != me})
    return list(mine.values())


def kill_own_processes(grace_s: float = 5.0, reap: Callable[[], object] = lambda: None) -> bool:
    """Kill every process the caller started (``own_processes``); True when none is left.

    Each is signalled by pid, never through ``killpg``, so the caller (and anything else
    in a group it shares) survives to report.
    """
    return _kill(own_processes, grace_s, reap, signal_all=_signal_each)
