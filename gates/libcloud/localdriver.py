"""``LocalProcessNodeDriver``: a libcloud compute driver whose nodes are local processes.

It is how a user rehearses a cloud gate on a laptop, and how the tests drive
the real ``LibcloudGate`` code (user-data, tags, listing, destroying) without
a cloud.  A node "boots" by running its user-data script with ``bash`` as a
process in a session of its own (so it outlives the driver's process, the
way a VM outlives the control plane), in a folder that plays its disk.  The
script's environment is the agent allow-list's (``skyport.gate.environment``),
like a VM booted from this machine's image: none of the control plane's
credentials reaches it.

State lives in ``root`` so that a new driver instance sees the nodes of an
earlier one::

    <root>/nodes/<node id>.json     the record: name, size, image, tags, pid
    <root>/disks/<node id>/         the node's "disk": user-data, console.log,
                                    var/ (what the script sees as SKYPORT_NODE_ROOT)

States: ``RUNNING`` while the node's session leader runs, ``STOPPED`` once it
has exited (a VM whose OS halted: it still exists until destroyed), and a
destroyed node is gone from ``list_nodes`` (real clouds show it
``TERMINATED`` for a while; callers ignore those).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeLocation, NodeSize
from libcloud.compute.types import NodeState

from skyport.agent.procfs import is_alive, kill_sessions, proc_stat
from skyport.gate.environment import agent_environment

__all__ = ["LOCAL_IMAGE", "LocalProcessNodeDriver"]

LOCAL_IMAGE = "local-python"
# id: (cpus, ram MB, price per hour as the "provider" lists it)
_SIZES: dict[str, tuple[int, int, float]] = {
    "lp.small": (1, 1024, 0.01),
    "lp.medium": (2, 4096, 0.02),
    "lp.large": (4, 8192, 0.04),
    "lp.xlarge": (8, 16384, 0.08),
}

# started through a short-lived intermediate so the node is nobody's child
_DETACH = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "p = subprocess.Popen(['bash', sys.argv[2]], cwd=sys.argv[3], stdin=subprocess.DEVNULL,"
    " stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)\n"
    "print(p.pid)\n"
)


class LocalProcessNodeDriver(NodeDriver):
    """Nodes are ``bash <user-data>`` sessions on this machine.

    ``key``/``secret`` are accepted like any driver's credentials and kept on
    the driver object only (tests check that they never reach a node).
    ``root`` is the state folder (default: a folder under the temp dir).
    """

    type = "skyport-local-process"
    name = "Sky Port local processes"
    website = "https://github.com/skyport"
    features = {"create_node": []}  # noqa: RUF012 (libcloud's class attribute)

    def __init__(self, key: str = "local", secret: str | None = None,
                 root: str | None = None, kill_grace_s: float = 3.0, **_: Any) -> None:
        super().__init__(key=key, secret=secret)
        self.root: Path = Path(root or Path(tempfile.gettempdir()) / "skyport-localdriver")
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)
        (self.root / "disks").mkdir(parents=True, exist_ok=True)
        self.kill_grace_s = kill_grace_s

    # -- catalog ------------------------------------------------------------------

    def list_sizes(self, location: NodeLocation | None = None) -> list[NodeSize]:
        return [NodeSize(id=sid, name=sid, ram=ram, disk=10, bandwidth=None, price=price,
                         driver=self, extra={"cpus": cpus})
                for sid, (cpus, ram, price) in _SIZES.items()]

    def list_images(self, location: NodeLocation | None = None,
                    ex_only_active: bool = True) -> list[NodeImage]:
        return [NodeImage(id=LOCAL_IMAGE, name="this machine's Python, Sky Port importable",
                          driver=self, extra={"python": sys.executable})]

    def list_locations(self) -> list[NodeLocation]:
        return [NodeLocation(id="local", name="this machine", country="", driver=self)]

    # -- nodes --------------------------------------------------------------------

    def create_node(self, name: str, size: NodeSize, image: NodeImage,
                    location: NodeLocation | None = None, auth: Any = None,
                    ex_userdata: str | None = None,
                    ex_metadata: dict[str, str] | None = None) -> Node:
        """Boot a node: run ``ex_userdata`` with bash in a session of its own."""
        if size.id not in _SIZES:
            raise ValueError(f"unknown size {size.id!r} (known: {', '.join(_SIZES)})")
        if image.id != LOCAL_IMAGE:
            raise ValueError(f"unknown image {image.id!r} (known: {LOCAL_IMAGE})")
        node_id = "lp-" + secrets.token_hex(6)
        disk = self.root / "disks" / node_id
        (disk / "var").mkdir(parents=True, mode=0o700)
        script = disk / "user-data"
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(ex_userdata or "#!/bin/bash\nexec sleep infinity\n")
        record: dict[str, Any] = {
            "id": node_id, "name": name, "size": size.id, "image": image.id,
            "tags": dict(ex_metadata or {}), "created_at": time.time(),
            "pid": None, "start_time": None,
        }
        self._put(record)  # first: a crash while booting leaves a node that can be destroyed
        starter = subprocess.run(
            [sys.executable, "-c", _DETACH, str(disk / "console.log"), str(script), str(disk)],
            stdin=subprocess.DEVNULL, capture_output=True, env=_vm_env(disk), timeout=60,
            check=False)
        try:
            pid = int(starter.stdout.decode().strip())
        except ValueError:
            self._put({**record, "pid": None})
            raise RuntimeError(f"node {name} did not boot: "
                               f"{starter.stderr.decode(errors='replace')[-300:]}") from None
        stat = proc_stat(pid)
        record.update(pid=pid, start_time=stat.start_time if stat else None)
        self._put(record)
        return self._node(record)

    def list_nodes(self, ex_node_ids: list[str] | None = None) -> list[Node]:
        nodes = []
        for path in sorted((self.root / "nodes").glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                continue
            if ex_node_ids is None or record["id"] in ex_node_ids:
                nodes.append(self._node(record))
        return nodes

    def destroy_node(self, node: Node) -> bool:
        """Kill the node's whole session and forget it; a gone node is not an error."""
        path = self.root / "nodes" / f"{node.id}.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return True
        if record.get("pid") and not kill_sessions([(record["pid"], record["start_time"])],
                                                   grace_s=self.kill_grace_s):
            return False
        path.unlink(missing_ok=True)
        shutil.rmtree(self.root / "disks" / str(node.id), ignore_errors=True)
        return True

    def reboot_node(self, node: Node) -> bool:
        return False

    # -- internals ------------------------------------------------------------------

    def _put(self, record: dict[str, Any]) -> None:
        path = self.root / "nodes" / f"{record['id']}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def _node(self, record: dict[str, Any]) -> Node:
        pid = record.get("pid")
        if pid is None:
            state = NodeState.PENDING if time.time() - record["created_at"] < 60 \
                else NodeState.ERROR
        else:
            state = NodeState.RUNNING if is_alive(pid, record.get("start_time")) \
                else NodeState.STOPPED
        size = _SIZES.get(record["size"], (0, 0, 0.0))
        return Node(id=record["id"], name=record["name"], state=state,
                    public_ips=[], private_ips=["127.0.0.1"], driver=self,
                    extra={"tags": dict(record["tags"]), "pid": pid, "size": record["size"],
                           "image": record["image"], "cpus": size[0],
                           "disk": str(self.root / "disks" / record["id"])},
                    created_at=None)


def _vm_env(disk: Path) -> dict[str, str]:
    """A VM booted from "this machine's image": what the agent allow-list lets through
    (``skyport.gate.environment``: so none of the driver's credentials), the node's
    disk as its home and ``SKYPORT_NODE_ROOT``, and ``SKYPORT_PYTHON`` (with
    ``PYTHONPATH`` from the allow-list: this machine's Python, Sky Port importable)."""
    env = agent_environment()
    env.setdefault("LANG", "C.UTF-8")
    env.update(HOME=str(disk / "var"), SKYPORT_NODE_ROOT=str(disk / "var"),
               SKYPORT_PYTHON=sys.executable)
    return env
