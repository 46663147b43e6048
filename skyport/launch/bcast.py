"""``skyport bcast FILE...``: copy files of this node's working directory to every node.

Like Slurm's ``sbcast``: the files go to the same paths, relative to each
node's own working directory, with their modes.  The request goes over the
node agent's Unix socket (``$SKYPORT_LAUNCH_SOCKET``); the agent uploads them
and has every other node's agent fetch them (``skyport.agent.nodes``), so the
job needs no token and no node opens a port.  ``$SKYPORT_MPIEXEC --bcast``
does the same for its program before it starts the ranks.

``missing_on_nodes`` is the check ``$SKYPORT_MPIEXEC`` makes before it starts
ranks: the files a command needs that are not on some node, found by the
agent running ``check_command`` there (MPICH's launcher would otherwise wait
forever for a rank that could not start).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BcastError", "bcast", "check_command", "main", "missing_on_nodes", "needed_files",
           "program_inside"]


class BcastError(RuntimeError):
    """The broadcast could not be done; the message says why."""


def _ask_agent(request: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    path = env.get("SKYPORT_LAUNCH_SOCKET", "")
    if not path:
        raise BcastError("SKYPORT_LAUNCH_SOCKET is not set: run it inside a Sky Port job")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            with sock.makefile("rb") as frames:
                line = frames.readline()
        except OSError as exc:
            raise BcastError(f"cannot reach the node agent at {path}: {exc}") from exc
    if not line:
        raise BcastError("the node agent closed the connection without an answer")
    answer: dict[str, Any] = json.loads(line)
    return answer


def bcast(paths: Sequence[str], cwd: str | None = None,
          env: dict[str, str] | None = None) -> list[str]:
    """Copy ``paths`` (relative to ``cwd``, inside the working directory) to every other
    node; the paths as copied, relative to the working directory."""
    answer = _ask_agent({"type": "bcast", "paths": list(paths), "cwd": cwd or os.getcwd()},
                        dict(os.environ) if env is None else env)
    if "error" in answer:
        raise BcastError(str(answer["error"]))
    return [str(f) for f in answer.get("files", [])]


def needed_files(cmd: Sequence[str], cwd: str) -> list[str]:
    """What a command needs on every node: its program, and each argument naming a file
    that exists here (``./prog in.dat``: both)."""
    need = [cmd[0]]
    for arg in cmd[1:]:
        if arg and not arg.startswith("-") and os.path.isfile(os.path.join(cwd, arg)):
            need.append(arg)
    return need


def check_command(files: Sequence[str]) -> str:
    tests = []
    for f in files:
        q = shlex.quote(f)
        if "/" in f:
            tests.append(f"[ -e {q} ] || echo {q}")
        else:  # a program found on PATH, or in the working directory as an argument
            tests.append(f"[ -e {q} ] || command -v {q} >/dev/null 2>&1 || echo {q}")
    return "; ".join(tests) + "; true"


def missing_on_nodes(files: Sequence[str], cwd: str | None = None,
                     env: dict[str, str] | None = None) -> dict[int, list[str]]:
    """``{node rank: [file, ...]}`` for every other node that lacks some of ``files``.

    The node agent runs ``check_command`` on each other node, in the same
    directory of that node's own, as a launch: what its ranks would see.
    """
    answer = _ask_agent({"type": "check", "paths": list(files), "cwd": cwd or os.getcwd()},
                        dict(os.environ) if env is None else env)
    if "error" in answer:
        raise BcastError(str(answer["error"]))
    return {int(k): [str(f) for f in v] for k, v in dict(answer.get("missing", {})).items()}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: skyport bcast FILE...\n  copy files of this node's working directory "
              "to the same paths on every node of the job", file=sys.stderr)
        return 0 if args else 2
    try:
        files = bcast(args)
    except BcastError as exc:
        print(f"skyport bcast: {exc}", file=sys.stderr)
        return 1
    print(f"skyport bcast: {', '.join(files)} on every node")
    return 0


def program_inside(program: str, cwd: str, workdir: str, path_env: str) -> str | None:
    """The program's path relative to ``cwd`` when it is a file of the working directory
    (what ``--bcast`` copies), else None."""
    found = program if "/" in program else None
    if found is None:
        from shutil import which

        found = which(program, path=path_env)
    if found is None:
        return None
    real = Path(cwd, found).resolve()
    root = Path(workdir).resolve() if workdir else None
    if root is None or not real.is_relative_to(root) or not real.is_file():
        return None
    return os.path.relpath(Path(cwd, found), cwd)


if __name__ == "__main__":
    sys.exit(main())
