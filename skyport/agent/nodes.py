"""Nodes that share nothing: which node stages what, broadcasts, and where a launch runs.

On a cloud the nodes of a job are separate machines: each has its own
working directory and nothing else of the others.  So:

* every node stages the script and the inputs into its own directory.  Node
  0's agent does its part and asks each other node's agent for its part
  through a launch (``op: stage_in``), and the payload starts once all have;
* after the payload, node k's outputs are staged out by its own agent
  (``op: stage_out``) under ``outputs/nodes/<k>/`` (``node_output_path``);
* ``skyport bcast FILE...`` (and ``$SKYPORT_MPIEXEC --bcast``) asks the agent,
  over its launch socket, to copy files of its working directory to the same
  path on every other node: uploaded under the job's ``bcast/`` prefix, then
  fetched by each node's agent (``op: fetch``).  The job never holds a token
  and no node opens a port;
* a launch's working directory travels relative to the node's working
  directory (``launch_cwd``), and each node resolves it in its own
  (``resolve_cwd``): ranks on node k run in node k's directory.

``NodeOps`` holds node k's side (the ops its launch runner runs) and node 0's
side (asking the others and waiting for their answers).
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from skyport.agent.client import AgentClient
from skyport.agent.isolation import Isolation
from skyport.agent.transfer import stage_in, stage_out
from skyport.errors import ControlPlaneError, SkyportError, ValidationError
from skyport.launch.bcast import check_command
from skyport.models import JobSpec, check_relative_path
from skyport.runtime.contract import RESULTS_DIR

__all__ = ["BCAST_PREFIX", "NodeOps", "launch_cwd", "node_output_path", "parse_fetch",
           "resolve_cwd"]

log = logging.getLogger(__name__)

BCAST_PREFIX = "bcast/"
MAX_BCAST_FILES = 1000
_READ_WAIT_S = 10.0


def node_output_path(rank: int, rel: str) -> str:
    """Where node ``rank``'s output ``rel`` is stored under the job's prefix.

    Node 0's as always (``outputs/REL``); node k's under ``outputs/nodes/<k>/``,
    except a function job's rank outcomes (``skyport-results/...``): their
    names are already the rank's own, and ``result()`` reads them in one place.
    """
    if rank == 0 or rel.startswith(f"{RESULTS_DIR}/"):
        return f"outputs/{rel}"
    return f"outputs/nodes/{rank}/{rel}"


def launch_cwd(cwd: str, workdir: Path) -> str:
    """A launch's working directory as it travels: relative to the node's working
    directory when inside it (``.`` for itself), else as given."""
    if not cwd:
        return ""
    try:
        rel = Path(cwd).resolve().relative_to(workdir.resolve())
    except (ValueError, OSError):
        return cwd
    return rel.as_posix() or "."


def resolve_cwd(cwd: str, workdir: Path, *, inside_only: bool) -> Path:
    """Where a launch runs on this node: a relative ``cwd`` in this node's own working
    directory; an absolute one as given where it exists (and, ``inside_only``, is inside
    the working directory); the working directory otherwise."""
    if not cwd:
        return workdir
    path = Path(cwd) if cwd.startswith("/") else workdir / cwd
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return workdir
    inside = real == workdir.resolve() or real.is_relative_to(workdir.resolve())
    if not real.is_dir() or ((inside_only or not cwd.startswith("/")) and not inside):
        return workdir
    return real


def parse_fetch(entry: str) -> tuple[int, str]:
    """``MODE:PATH`` (a fetch launch's argv entry) -> (mode, path); ValidationError else."""
    mode_text, sep, path = entry.partition(":")
    if not sep or not mode_text or len(mode_text) > 4 or \
            any(c not in "01234567" for c in mode_text):
        raise ValidationError("fetch", entry, "MODE:PATH with an octal mode")
    return int(mode_text, 8) & 0o755, _relative(path, "fetch")


def _relative(path: str, field: str) -> str:
    try:
        return check_relative_path(path, field)
    except ValueError as exc:
        raise ValidationError(field, path, "a relative path inside the working directory "
                              f"({exc})") from None


class NodeOps:
    """One node's share of a job's files, and (on node 0) the others' through launches."""

    def __init__(self, client: AgentClient, rank: int, num_nodes: int, workdir: Path,
                 isolation: Isolation, give: Callable[[], None]) -> None:
        self.client = client
        self.rank = rank
        self.num_nodes = num_nodes
        self.workdir = workdir
        self.isolation = isolation
        self.give = give  # hand the working directory to the payload's user
        self.spec: JobSpec | None = None

    # -- node k: what its launch runner runs for node 0's agent -------------------------

    def run_op(self, op: str, argv: Sequence[str]) -> tuple[int, str]:
        """Run one op here; (exit code, message for node 0)."""
        try:
            if op == "stage_in":
                got = stage_in(self.client, self.workdir, lambda text: None)
                self.give()
                return 0, f"staged in {len(got) + 1} file(s)"
            if op == "stage_out":
                problems = self.stage_out_here()
                return (1, "; ".join(problems)) if problems else (0, "")
            if op == "fetch":
                return 0, f"fetched {len(self.fetch([parse_fetch(a) for a in argv]))} file(s)"
        except (SkyportError, OSError, ValueError) as exc:
            return 1, f"{op} failed: {exc}"
        return 2, f"unknown op {op!r}"

    def stage_out_here(self) -> list[str]:
        """This node's declared outputs, stored as ``node_output_path`` says.

        Node 0 must have every declared output; node k stores what it has
        (most outputs are written by node 0 only).
        """
        outputs = self.spec.outputs if self.spec is not None else ()
        result = stage_out(self.client, self.workdir, outputs, lambda text: None,
                           stored_as=lambda rel: node_output_path(self.rank, rel),
                           required=self.rank == 0)
        return list(result.problems)

    def fetch(self, files: Sequence[tuple[int, str]]) -> list[str]:
        """Broadcast files into this node's working directory, at the same paths."""
        root = self.workdir.resolve()
        done = []
        for mode, rel in files:
            dest = self.workdir / rel
            self._make_parents(dest.parent)
            if not dest.parent.resolve().is_relative_to(root):
                raise ValidationError("fetch", rel, "a path inside the working directory "
                                      "(a folder on its way is a link out of it)")
            self.client.download(f"{BCAST_PREFIX}{rel}", dest)
            os.chmod(dest, mode, follow_symlinks=False)
            self._own(dest)
            done.append(rel)
            log.info("fetched broadcast file %s (mode %o)", rel, mode)
        return done

    def _make_parents(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and folder != self.workdir:
            missing.append(folder)
            folder = folder.parent
        for made in reversed(missing):
            made.mkdir(exist_ok=True)
            self._own(made)

    def _own(self, path: Path) -> None:
        if self.isolation.mode == "user":
            os.chown(path, self.isolation.uid, self.isolation.gid, follow_symlinks=False)

    # -- node 0: the other nodes' part -----------------------------------------------

    def on_others(self, op: str, argv: Sequence[str]) -> list[str]:
        """Run ``op`` on every other node at once; a problem per node that failed."""
        others = [k for k in range(self.num_nodes) if k != self.rank]
        if not others:
            return []
        with ThreadPoolExecutor(len(others), thread_name_prefix=f"{op}-nodes") as pool:
            answers = list(pool.map(lambda k: (k, *self._ask_safely(k, op, argv)), others))
        return [f"node {k}: {msg or f'exit code {code}'}" for k, code, msg in answers
                if code != 0]

    def _ask_safely(self, node: int, op: str, argv: Sequence[str]) -> tuple[int, str]:
        try:
            return self._ask(node, op, argv)
        except ControlPlaneError:
            raise  # nobody to report to
        except SkyportError as exc:
            return 255, f"{op} not run: {exc}"

    def _ask(self, node: int, op: str, argv: Sequence[str], cwd: str = "") -> tuple[int, str]:
        launch_id = self.client.launch_create(node, list(argv), cwd, op)
        offsets = {"stdout": 0, "stderr": 0}
        text = b""
        while True:
            got = self.client.launch_read(launch_id, offsets, _READ_WAIT_S)
            for s, data, base in (("stdout", got.stdout, got.stdout_offset),
                                  ("stderr", got.stderr, got.stderr_offset)):
                raw = base64.b64decode(data)
                text += raw
                offsets[s] = base + len(raw)
            if got.exit_code is not None:
                return got.exit_code, text.decode(errors="replace").strip()

    # -- node 0 (or any node): ``$SKYPORT_MPIEXEC``'s check, over the launch socket ---------

    def handle_check(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"type": "check", "paths": [...], "cwd": ...}`` -> ``{"missing": {node: [path,
        ...]}}`` for every other node that lacks some (run there as a launch, in the same
        directory of its own, as the payload's user: what its ranks would see)."""
        paths = request.get("paths")
        if not isinstance(paths, list) or not paths or len(paths) > MAX_BCAST_FILES or \
                not all(isinstance(p, str) and p and len(p) <= 4096 and "\0" not in p
                        for p in paths):
            return {"error": f"paths: 1 to {MAX_BCAST_FILES} paths are needed"}
        cwd = launch_cwd(str(request.get("cwd") or ""), self.workdir)
        argv = ["/bin/sh", "-c", check_command(paths)]
        others = [k for k in range(self.num_nodes) if k != self.rank]
        if not others:
            return {"missing": {}}
        try:
            with ThreadPoolExecutor(len(others), thread_name_prefix="check-nodes") as pool:
                answers = list(pool.map(lambda k: (k, *self._ask(k, "run", argv, cwd)),
                                        others))
        except SkyportError as exc:
            return {"error": f"the check could not run: {exc}"}
        missing = {}
        for k, code, text in answers:
            if code != 0:
                missing[str(k)] = [f"(the check failed: {text[-300:]})"]
            elif text:
                missing[str(k)] = text.splitlines()
        return {"missing": missing}

    # -- node 0 (or any node): ``skyport bcast`` over the launch socket ------------------

    def handle_bcast(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"type": "bcast", "paths": [...], "cwd": ...}`` -> ``{"files": [...]}`` or
        ``{"error": why}``."""
        try:
            paths = request.get("paths")
            if not isinstance(paths, list) or not paths or len(paths) > MAX_BCAST_FILES or \
                    not all(isinstance(p, str) and p and "\0" not in p for p in paths):
                raise ValidationError("paths", paths, f"1 to {MAX_BCAST_FILES} file paths")
            base = resolve_cwd(str(request.get("cwd") or ""), self.workdir, inside_only=True)
            files = [self._bcast_source(base, p) for p in paths]
            for rel, real, _mode in files:
                self.client.put_file(f"{BCAST_PREFIX}{rel}", real)
            problems = self.on_others("fetch", [f"{mode:o}:{rel}" for rel, _, mode in files])
        except (SkyportError, OSError) as exc:
            return {"error": str(exc)}
        if problems:
            return {"error": "broadcast failed: " + "; ".join(problems)}
        return {"files": [rel for rel, _, _ in files], "nodes": self.num_nodes - 1}

    def _bcast_source(self, base: Path, given: str) -> tuple[str, Path, int]:
        """(path relative to the working directory, the file to read, its mode)."""
        root = self.workdir.resolve()
        path = Path(os.path.normpath(base / given))
        try:
            rel = path.relative_to(root if path.is_relative_to(root) else self.workdir)
        except ValueError:
            raise ValidationError("file", given, "a file inside the job's working directory "
                                  f"({self.workdir})") from None
        real = path.resolve()
        if not real.is_relative_to(root):  # a link out: the agent reads as itself
            raise ValidationError("file", given, "a file that stays inside the working "
                                  "directory (it is a link out of it)")
        try:
            st = real.stat()
        except OSError:
            raise ValidationError("file", given, "an existing file on this node") from None
        if not stat.S_ISREG(st.st_mode):
            raise ValidationError("file", given, "a regular file (not a folder or device)")
        return _relative(rel.as_posix(), "file"), real, st.st_mode & 0o755
