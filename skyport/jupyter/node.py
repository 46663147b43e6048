"""On node 0 of a notebook job: start the single-user server with the hub's environment.

``python -m skyport.jupyter.node -- jupyterhub-singleuser [ARGS]``.  The server's
environment (the hub's API token among it) is a secret the spawner put for the job
(``PUT /v1/jobs/{id}/secrets/jupyter-env``); the agent hands it over the
launch socket, so it is never in the script, an event or a log.  The hub's API
is reached through a reverse relay stream (``listen hub``): the URLs it names
are pointed at that local port.  Without a hub (``skyport jupyter``) the secret
holds the server's own token and no reverse stream is needed.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from skyport.relay.payload import relay_listen, secret

__all__ = ["ENV_SECRET", "HUB_RELAY", "pick_node_port", "pointed_at"]

ENV_SECRET = "jupyter-env"
HUB_RELAY = "hub"
_HUB_URLS = ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL")
# The server's port on the node is chosen before the node exists, so it must be one
# nothing there takes by itself: above Ray's worker ports (10002-19999) and below
# Linux's ephemeral range (32768-60999), where every outgoing connection and every
# bind to port 0 lands -- a port drawn from there was at times already taken.
_NODE_PORTS = (20000, 32767)


def pick_node_port() -> int:
    """A port for a notebook server on its node (``--port-retries=0``: the relay needs it)."""
    return random.randint(*_NODE_PORTS)


def pointed_at(url: str, port: int) -> str:
    """``url`` with its scheme and host:port replaced by http://127.0.0.1:``port``."""
    parts = urlsplit(url)
    return urlunsplit(("http", f"127.0.0.1:{port}", parts.path, parts.query, parts.fragment))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m skyport.jupyter.node -- COMMAND [ARGS]", file=sys.stderr)
        return 2
    env = json.loads(secret(ENV_SECRET, wait_s=120))
    if any(env.get(key) for key in _HUB_URLS):
        hub_port = relay_listen(HUB_RELAY)
        for key in _HUB_URLS:
            if env.get(key):
                env[key] = pointed_at(env[key], hub_port)
    here = Path.cwd()
    # the payload's own home: its working directory (nodes share nothing)
    env.setdefault("HOME", str(here))
    env.setdefault("JUPYTER_RUNTIME_DIR", str(here / ".jupyter-runtime"))
    env.setdefault("IPYTHONDIR", str(here / ".ipython"))
    os.environ.update({k: str(v) for k, v in env.items()})
    os.execvp(argv[0], argv)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
