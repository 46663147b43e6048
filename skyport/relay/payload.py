"""Inside a job: ask this node's agent for a relay port or a secret (``$SKYPORT_LAUNCH_SOCKET``).

``python -m skyport.relay.payload listen NAME`` prints a port on 127.0.0.1 whose
connections reach the forwarder listening as NAME (``skyport forward --reverse``);
``python -m skyport.relay.payload secret NAME`` prints a secret the job's owner put
(``PUT /v1/jobs/{id}/secrets/{name}``), waiting for it.  The payload holds no
token: the agent answers for it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from skyport.errors import SkyportError

__all__ = ["ask_agent", "relay_listen", "secret"]


class RelayPayloadError(SkyportError):
    pass


def ask_agent(request: dict[str, Any], timeout_s: float = 120.0) -> dict[str, Any]:
    path = os.environ.get("SKYPORT_LAUNCH_SOCKET")
    if not path:
        raise RelayPayloadError("not inside a Sky Port job: $SKYPORT_LAUNCH_SOCKET is not set")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        answer = json.loads(sock.makefile("rb").readline() or b"{}")
    if not isinstance(answer, dict) or "error" in answer:
        why = answer.get("error") if isinstance(answer, dict) else answer
        raise RelayPayloadError(f"the agent refused {request.get('type')}: {why}")
    return answer


def relay_listen(name: str) -> int:
    return int(ask_agent({"type": "relay-listen", "name": name})["port"])


def secret(name: str, wait_s: float = 60.0) -> str:
    answer = ask_agent({"type": "secret", "name": name, "wait_s": wait_s},
                       timeout_s=wait_s + 30)
    return str(answer["value"])


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("listen", "secret"):
        print("usage: python -m skyport.relay.payload listen|secret NAME", file=sys.stderr)
        return 2
    try:
        print(relay_listen(argv[1]) if argv[0] == "listen" else secret(argv[1]))
    except (SkyportError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
