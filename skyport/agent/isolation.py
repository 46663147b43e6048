"""Keeping a node's payload away from its agent, the control plane and other jobs.

The agent runs as the control plane's user (on the local gate: the same
machine, the same user).  Its payload is code the control plane does not
trust, so it runs in one of two ways (``Isolation.mode``):

``user``
    The agent runs as root: the payload runs as an unprivileged user of its
    own (``uid``/``gid``, one per cluster, chosen by the gate), with no
    supplementary groups.  The node's working directory belongs to that user;
    everything else of the state directory, other jobs' working directories
    (other users), the agent's memory (``/proc/PID/mem`` of a root process)
    and other agents' launch sockets are out of its reach by plain Unix
    permissions.  Where bubblewrap is installed the payload also gets a mount
    namespace in which ``hide`` (the state directory) is an empty folder, and
    where the Python that runs Sky Port lives in a folder other users cannot
    enter (pyenv under ``/root``), that folder is replaced by an empty one
    with only the interpreter's installation bound back in, read-only;
    bubblewrap runs as root and ``setpriv`` drops to the payload's user.

``sandbox``
    The agent is not root: the payload runs under bubblewrap (``bwrap``),
    with ``hide`` (the state directory) replaced by an empty folder and
    ``/tmp`` by the node's own temporary folder (``tmp``: shared by the node's
    processes, by no other node), its working directory and the agent's
    runtime folder (launch socket, hostfile, shims) bound back in, and a PID namespace of its own
    (it cannot see, signal or read the memory of any process outside).

``none``
    No isolation: for a node that is a machine of its own (a VM made for
    this one job), or an operator's explicit choice.

In every mode the agent makes itself non-dumpable (``make_undumpable``), so
that a process of the same user cannot attach to it or read its memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import pwd
import shutil
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["NO_ISOLATION", "PRIVATE_TMP", "Isolation", "IsolationMode", "bwrap_path", "give_tree",
           "make_undumpable", "resolves_inside"]

log = logging.getLogger(__name__)

IsolationMode = Literal["none", "user", "sandbox"]
PRIVATE_TMP = "tmp"
"""The node's own temporary folder inside the agent's runtime folder: the payload's,
its ``TMPDIR``, and its ``/tmp`` under bubblewrap."""
_PR_SET_DUMPABLE = 4


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@dataclass(frozen=True)
class Isolation:
    mode: IsolationMode = "none"
    uid: int = -1
    gid: int = -1
    hide: tuple[str, ...] = ()
    tmp: str = ""  # this node's temporary folder: the payload's /tmp under bubblewrap

    def __post_init__(self) -> None:
        if self.mode == "user" and (self.uid <= 0 or self.gid <= 0):
            raise ValueError(f"isolation 'user' needs an unprivileged uid and gid, "
                             f"not {self.uid}:{self.gid}")

    def env(self, workdir: Path) -> dict[str, str]:
        """Variables the payload gets because of the isolation (its own ``HOME``)."""
        if self.mode == "none":
            return {}
        env = {"HOME": str(workdir)}
        if self.mode == "user":
            with contextlib.suppress(KeyError):
                env["USER"] = env["LOGNAME"] = pwd.getpwuid(self.uid).pw_name
        return env

    def _wrapped_user(self) -> bool:
        """``user`` mode through bubblewrap and ``setpriv`` (both installed)."""
        return self.mode == "user" and bwrap_path() is not None \
            and shutil.which("setpriv") is not None

    def argv(self, argv: Sequence[str], *, cwd: Path, binds: Iterable[Path]) -> list[str]:
        """``argv`` as started under this isolation (bubblewrap's command line)."""
        if self.mode == "sandbox":
            bwrap = bwrap_path()
            if bwrap is None:
                raise OSError("isolation 'sandbox' needs bubblewrap (bwrap), "
                              "which is not installed")
            cmd = [bwrap, "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc",
                   "--unshare-pid", *self._tmp_view()]
            for path in self.hide:
                cmd += ["--tmpfs", path]
            for bound in dict.fromkeys(Path(b).resolve() for b in (cwd, *binds)):
                cmd += ["--bind", str(bound), str(bound)]
            return [*cmd, "--chdir", str(cwd), "--", *argv]
        if self._wrapped_user():
            cmd = [str(bwrap_path()), "--bind", "/", "/", "--dev-bind", "/dev", "/dev",
                   *self._tmp_view()]
            hidden = [Path(h).resolve() for h in self.hide]
            for hidden_path in hidden:
                cmd += ["--perms", "0711", "--tmpfs", str(hidden_path)]
            cmd += interpreter_exposure()
            made: set[Path] = set()
            for real in dict.fromkeys(Path(b).resolve() for b in (cwd, *binds)):
                top = next((h for h in hidden if real.is_relative_to(h)), None)
                if top is not None:  # its folders in the empty tmpfs: enterable, not listable
                    cmd += _folders_between(top, real, made, "0711")
                cmd += ["--bind", str(real), str(real)]
            return [*cmd, "--chdir", str(cwd), "--", str(shutil.which("setpriv")),
                    "--reuid", str(self.uid), "--regid", str(self.gid), "--clear-groups",
                    "--no-new-privs", "--", *argv]
        return list(argv)

    def _tmp_view(self) -> list[str]:
        """``/tmp`` as the payload sees it: the node's own folder, shared by every process
        of the node and by no other node (an empty one per process without it)."""
        if self.tmp:
            view = ["--bind", str(Path(self.tmp).resolve()), "/tmp"]
        elif self.mode == "sandbox":
            view = ["--tmpfs", "/tmp"]
        else:
            return []
        # the Python (and Sky Port) that runs the payload may itself live under /tmp, e.g.
        # a checkout with its virtual environment there: bound back over the new /tmp,
        # read-only, or the payload's interpreter is gone (exit 127)
        tmp = Path("/tmp").resolve()
        under: list[Path] = []
        for target in _runtime_targets():
            if target.is_relative_to(tmp) and not any(target.is_relative_to(u) for u in under):
                under.append(target)
                view += ["--ro-bind", str(target), str(target)]
        return view

    def popen_kwargs(self) -> dict[str, Any]:
        """``subprocess.Popen`` arguments that drop to the payload's user (``user`` mode
        without bubblewrap; with it, ``setpriv`` does)."""
        if self.mode != "user" or self._wrapped_user():
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def allows_peer(self, uid: int) -> bool:
        """Whether a process of ``uid`` may use this node's launch socket."""
        return uid == os.getuid() or (self.mode == "user" and uid == self.uid)

    def share_runtime(self, folder: Path) -> None:
        """Let the payload use the agent's runtime folder (socket, shims, hostfile).

        The folder stays the agent's; the payload's group may read and enter
        it and connect to the socket, nobody else may (other jobs' payloads
        have other groups).
        """
        if self.mode != "user":
            return
        paths = [folder]
        for top, dirs, files in os.walk(folder):
            if Path(top) == folder and PRIVATE_TMP in dirs:
                dirs.remove(PRIVATE_TMP)  # the payload's own: never touched
            paths += [Path(top, n) for n in (*dirs, *files)]
        for path in paths:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            os.chown(path, -1, self.gid, follow_symlinks=False)
            if stat.S_ISSOCK(st.st_mode):
                os.chmod(path, 0o660)
            elif stat.S_ISDIR(st.st_mode) or st.st_mode & 0o100:
                os.chmod(path, 0o750)
            else:
                os.chmod(path, 0o640)

    def give(self, workdir: Path, keep: Iterable[str] = ()) -> None:
        """Hand the working directory to the payload's user (``user`` mode).

        ``keep`` names entries of ``workdir`` that stay the agent's (its log).
        """
        if self.mode == "user":
            give_tree(workdir, self.uid, self.gid, keep=keep)


NO_ISOLATION = Isolation()


def give_tree(root: Path, uid: int, gid: int, keep: Iterable[str] = ()) -> None:
    """``chown -R`` that never follows a symbolic link; ``keep``: top-level names skipped."""
    kept = set(keep)
    os.chown(root, uid, gid, follow_symlinks=False)
    for entry in os.scandir(root):
        if entry.name in kept:
            continue
        os.chown(entry.path, uid, gid, follow_symlinks=False)
        if entry.is_dir(follow_symlinks=False):
            for folder, dirs, files in os.walk(entry.path):
                for name in (*dirs, *files):
                    os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _enterable_by_others(path: Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o001)
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def interpreter_exposure() -> tuple[str, ...]:
    """bubblewrap arguments that let another user run this Python and import Sky Port.

    For each of the interpreter's installation, the virtual environment and
    Sky Port's root: the first folder on its way that other users cannot
    enter becomes an empty 0755 folder, the folders below it are made (0755),
    and the installation itself is bound back in, read-only.  Nothing when
    every folder is enterable already.
    """

    args: list[str] = []
    hidden: set[Path] = set()
    made: set[Path] = set()
    bound: set[Path] = set()
    for target in _runtime_targets():
        chain = [*reversed(target.parents), target]
        blocked = next((p for p in chain if not _enterable_by_others(p)), None)
        if blocked is None or blocked == target:
            continue
        if any(target.is_relative_to(b) for b in bound):
            continue
        if not any(blocked.is_relative_to(h) for h in hidden):
            args += ["--perms", "0755", "--tmpfs", str(blocked)]
            hidden.add(blocked)
        args += _folders_between(blocked, target, made, "0755")
        args += ["--ro-bind", str(target), str(target)]
        bound.add(target)
    return tuple(args)


def _runtime_targets() -> list[Path]:
    """The interpreter's installation, the virtual environment, Sky Port's root and the
    interpreter's folder: what a payload needs to run this Python, shortest first."""
    from skyport.gate.environment import skyport_root

    return sorted({Path(p).resolve() for p in (sys.base_prefix, sys.prefix, skyport_root(),
                                               os.path.dirname(os.path.realpath(
                                                   sys.executable)))})


def _folders_between(top: Path, target: Path, made: set[Path], perms: str) -> list[str]:
    """``--dir`` arguments for the folders strictly between ``top`` and ``target``."""
    args: list[str] = []
    for p in reversed(target.parents):
        if p.is_relative_to(top) and p != top and p not in made:
            args += ["--perms", perms, "--dir", str(p)]
            made.add(p)
    return args


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``: no ptrace, no ``/proc/PID/mem`` for same-user processes."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0:
            return True
    log.warning("could not make the agent non-dumpable")
    return False


def resolves_inside(path: Path, root: Path) -> bool:
    """Whether ``path``, every symbolic link followed, stays inside ``root``."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return real == root.resolve() or real.is_relative_to(root.resolve())
