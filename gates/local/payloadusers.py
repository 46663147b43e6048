"""The local gate's payload isolation: which mode, whose user, which folders open.

When the control plane runs as root, every cluster gets an unprivileged user
of its own (``useradd --system``; name ``sp-`` and 12 hex digits of the
gate's folder and the cluster id), deleted with the cluster; its payloads run
as that user (``skyport.agent.isolation``).  Otherwise payloads run under
bubblewrap, which hides the state directory.

The node working directories stay under the state directory: the folders on
the way there (the state directory, ``gates``, the gate's folder, ``nodes``,
the cluster's folder) become 0711 (enter, not list), every other entry of the
state directory is private to the control plane's user (0700/0600), and each
node's folder belongs to its cluster's user.  A payload can therefore open
its own folder and nothing else of the state directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from skyport.agent.isolation import bwrap_path
from skyport.errors import ConfigError, GateError

__all__ = ["PayloadUser", "choose_mode", "create_user", "delete_user", "kill_user_processes",
           "open_path_to", "reap_orphan_users"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PayloadUser:
    name: str
    uid: int
    gid: int


def choose_mode(configured: str) -> str:
    """``auto`` -> ``user`` as root, else ``sandbox``; a sandbox needs bubblewrap."""
    mode = configured
    if mode == "auto":
        mode = "user" if os.geteuid() == 0 else "sandbox"
    if mode == "user" and os.geteuid() != 0:
        raise ConfigError("local gate: isolation 'user' needs a control plane running as root")
    if mode == "sandbox" and bwrap_path() is None:
        raise ConfigError(
            "local gate: payloads must run in a sandbox (the control plane is not root) and "
            "bubblewrap is not installed: install it ('apt-get install bubblewrap', "
            "or 'make setup' as root), or set isolation = 'none' in the gate's config to run "
            "payloads as the control plane's own user, with access to its state directory")
    return mode


def user_name(gate_dir: Path, cluster_id: str) -> str:
    digest = hashlib.sha256(f"{gate_dir.resolve()}\0{cluster_id}".encode()).hexdigest()
    return f"sp-{digest[:12]}"


COMMENT = "skyport payload user of "


def create_user(name: str, gate_dir: Path | None = None) -> PayloadUser:
    """The system user ``name``, created if missing (no home, no login shell, own group).

    Its comment names ``gate_dir``, so that a user left behind by a state
    directory that is gone can be found and deleted (``reap_orphan_users``).
    """
    for attempt in range(20):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return PayloadUser(name=name, uid=pw.pw_uid, gid=pw.pw_gid)
        done = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--user-group",
             "--comment", COMMENT + str(gate_dir.resolve() if gate_dir else "?"), name],
            capture_output=True, text=True, check=False)
        if done.returncode == 0:
            continue
        # 9: the name exists (a concurrent create); 1: /etc/passwd locked by another useradd
        if done.returncode not in (1, 9, 10):
            raise GateError(f"useradd {name} failed ({done.returncode}): {done.stderr.strip()}")
        time.sleep(0.05 * (attempt + 1))
    raise GateError(f"could not create the payload user {name}")


def kill_user_processes(uid: int) -> int:
    """SIGKILL every process whose real or effective uid is ``uid``; how many were found."""
    found = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:3]
        except (OSError, StopIteration):
            continue
        if str(uid) in uids:
            found += 1
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
    return found


def delete_user(user: PayloadUser) -> None:
    """Kill what is left of the user's processes, then delete the user (and its group)."""
    for _ in range(10):
        if not kill_user_processes(user.uid):
            break
        time.sleep(0.1)
    for attempt in range(20):
        done = subprocess.run(["userdel", user.name], capture_output=True, text=True,
                              check=False)
        if done.returncode in (0, 6):  # 6: no such user
            return
        time.sleep(0.05 * (attempt + 1))
    log.warning("could not delete the payload user %s: %s", user.name, done.stderr.strip())


def open_path_to(folder: Path, state_root: Path) -> None:
    """Let other users walk (not list) the way from ``/`` to ``folder``.

    Folders inside ``state_root`` (and itself) become 0711; a folder outside
    it that others cannot enter is an error naming it, never changed.
    """
    root = state_root.resolve()
    folder = folder.resolve()
    for path in [folder, *folder.parents]:
        if path == root or path.is_relative_to(root):
            os.chmod(path, 0o711)
        elif not os.stat(path).st_mode & 0o001:
            raise ConfigError(f"local gate: payload users cannot enter {path} "
                              f"(on the way to {folder}): give it o+x or move workdir_root")


def reap_orphan_users() -> list[str]:
    """Delete the payload users whose gate folder no longer exists (its state directory
    was removed with clusters still in it); the names deleted."""
    gone = []
    for pw in pwd.getpwall():
        if not pw.pw_name.startswith("sp-") or not pw.pw_gecos.startswith(COMMENT):
            continue
        folder = pw.pw_gecos[len(COMMENT):]
        if folder.startswith("/") and not Path(folder).exists():
            delete_user(PayloadUser(pw.pw_name, pw.pw_uid, pw.pw_gid))
            gone.append(pw.pw_name)
    return gone
