"""The rsh-compatible relay MPI launchers use instead of ssh.

MPICH Hydra runs it as ``-launcher ssh -launcher-exec <this>``, Open MPI as
``--mca plm_rsh_agent <this>``; either calls ``<this> [ssh options] HOST
COMMAND...``.  Instead of opening a connection to HOST, the relay hands the
request to the agent of the node it runs on, through the Unix socket
``$SKYPORT_LAUNCH_SOCKET``.  That agent asks the control plane to have the
agent of node HOST run ``/bin/sh -c COMMAND`` and streams back its output and
exit code, which the relay writes out and exits with.  The relay never holds
a credential: the job token stays inside the agent.

Socket protocol: one JSON line in, ``{"host", "argv", "cwd"}``; JSON lines
out, ``{"stream": "stdout"|"stderr", "data": <base64>}`` then ``{"exit": N}``
or ``{"error": text}``.  Closing the socket early cancels the launch (the
remote command is killed).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sys

from skyport.agent.procfs import set_parent_death_signal

__all__ = ["main", "parse_ssh_args", "undaemonize"]

# ssh options that take a value (OpenSSH); all other "-x" style flags take none
_WITH_VALUE = set("BbcDEeFIiJLlmOopQRSWw")


def parse_ssh_args(args: list[str]) -> tuple[str, str]:
    """``(host, command)`` from an ssh-style command line."""
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        opt = args[i]
        if len(opt) == 2 and opt[1] in _WITH_VALUE:
            i += 2
        else:
            i += 1
    if i < len(args) and args[i] == "--":
        i += 1
    if i >= len(args):
        raise ValueError("no host given")
    host = args[i].rsplit("@", 1)[-1]
    command = " ".join(args[i + 1:])
    if not command:
        raise ValueError(f"no command given for host {host}")
    return host, command


def undaemonize(command: str) -> str:
    """Open MPI's ``prted --daemonize`` would leave its node agent's process group; keep it
    in the foreground instead (as under Grid Engine's qrsh), so the agent owns and kills it."""
    if "prted" not in command:
        return command
    return " ".join(w for w in command.split(" ") if w != "--daemonize")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        host, command = parse_ssh_args(args)
    except ValueError as exc:
        print(f"skyport-rsh: {exc}; usage: skyport-rsh [ssh options] HOST COMMAND",
              file=sys.stderr)
        return 255
    path = os.environ.get("SKYPORT_LAUNCH_SOCKET", "")
    if not path:
        print("skyport-rsh: SKYPORT_LAUNCH_SOCKET is not set: run inside a Sky Port job",
              file=sys.stderr)
        return 255
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        print(f"skyport-rsh: cannot reach the node agent at {path}: {exc}", file=sys.stderr)
        return 255
    # a TERM/HUP from the launcher ends us; closing the socket cancels the remote command
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: os._exit(128 + 15))
    set_parent_death_signal(signal.SIGTERM)  # the launcher gone, nobody reads us
    request = {"host": host, "argv": ["/bin/sh", "-c", undaemonize(command)],
               "cwd": os.getcwd()}
    sock.sendall(json.dumps(request).encode() + b"\n")
    outs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    with sock.makefile("rb") as frames:
        for line in frames:
            frame = json.loads(line)
            if "stream" in frame:
                out = outs[frame["stream"]]
                out.write(base64.b64decode(frame["data"]))
                out.flush()
            elif "exit" in frame:
                return int(frame["exit"])
            elif "error" in frame:
                print(f"skyport-rsh: {host}: {frame['error']}", file=sys.stderr)
                return 255
    print(f"skyport-rsh: the node agent closed the connection ({host})", file=sys.stderr)
    return 255


if __name__ == "__main__":
    sys.exit(main())
