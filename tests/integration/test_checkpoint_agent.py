"""The agent's checkpointer: restore, upload layout, and the launch-socket request."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from skyport import checkpoint
from skyport.agent.checkpointer import Checkpointer
from skyport.agent.launchsock import LaunchSocket
from skyport.models import JobState
from skyport.protocol import (
    CheckpointOrder,
    CheckpointRecord,
    HeartbeatAnswer,
    LatestAnswer,
    PartAnswer,
    SizeAnswer,
)


class FakeClient:
    """Just the agent-client calls the checkpointer makes, over a dict 'storage'."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.latest: dict[str, Any] | None = None
        self.pending: int | None = None
        self.parts: list[tuple[int, str, int, list[dict[str, Any]]]] = []
        self.log_base: dict[str, int] = {}

    def checkpoint_latest(self) -> LatestAnswer:
        latest = None if self.latest is None else CheckpointRecord(
            version=self.latest["version"], time="now", files=self.latest["files"])
        return LatestAnswer(latest=latest, pending=self.pending,
                            log_sizes={"stdout": 12, "stderr": 0})

    def checkpoint_request(self, reason: str = "") -> CheckpointOrder:
        self.pending = (self.latest or {}).get("version", 0) + 1
        return CheckpointOrder(version=self.pending, id="abc")

    def checkpoint_part(self, version: int, ck_id: str, rank: int,
                        files: list[dict[str, Any]]) -> PartAnswer:
        self.parts.append((version, ck_id, rank, files))
        self.latest = {"version": version, "files": files}
        self.pending = None
        return PartAnswer(committed=True, version=version)

    def put_file(self, path: str, src: Path) -> SizeAnswer:
        self.stored[path] = src.read_bytes()
        return SizeAnswer(size=len(self.stored[path]))

    def download(self, path: str, dest: Path) -> int:
        dest.write_bytes(self.stored[path])
        return len(self.stored[path])


def test_upload_then_restore_on_a_fresh_node(tmp_path: Path) -> None:
    client = FakeClient()
    first = Checkpointer.restored(client, tmp_path / "a", 0, 0)  # type: ignore[arg-type]
    assert client.log_base == {"stdout": 12, "stderr": 0}
    (first.shared_dir / "sub").mkdir()
    (first.shared_dir / "sub" / "state.bin").write_bytes(b"42")
    (first.node_dir / "rank0").write_text("r0")
    (first.shared_dir / ".half.tmp").write_text("ignored")
    files = first.upload(1, "abc")
    assert sorted(f["path"] for f in files) == ["v1/nodes/0/rank0", "v1/shared/sub/state.bin"]
    assert not list((tmp_path / "a").glob(".skyport-checkpoint-staging-*"))

    again = Checkpointer.restored(client, tmp_path / "b", 0, 1)  # type: ignore[arg-type]
    assert (again.shared_dir / "sub" / "state.bin").read_bytes() == b"42"
    assert (again.node_dir / "rank0").read_text() == "r0"
    assert again.env["SKYPORT_RESTART_COUNT"] == "1"
    other = Checkpointer.restored(client, tmp_path / "c", 1, 1)  # type: ignore[arg-type]
    assert "SKYPORT_CHECKPOINT_DIR" not in other.env  # node 0's directory only
    assert not any(other.node_dir.iterdir())


def test_the_job_asks_through_the_socket_and_gets_the_version(tmp_path: Path,
                                                              monkeypatch) -> None:
    client = FakeClient()
    ck = Checkpointer(client, tmp_path, 0, poll_s=0.01)  # type: ignore[arg-type]
    sock_path = tmp_path / "launch.sock"
    sock = LaunchSocket(client, sock_path, lambda: ["n0"])  # type: ignore[arg-type]
    env: dict[str, str] = {}
    listeners: list[Any] = []
    ck.attach(env, sock, listeners)
    sock.start()
    try:
        # the node uploads when the heartbeat asks, as the agent's loop would
        def beat() -> None:
            while client.pending is None:
                threading.Event().wait(0.01)
            listeners[0](HeartbeatAnswer(
                state=JobState.RUNNING, action="run",
                checkpoint=CheckpointOrder(version=client.pending, id="abc")))

        threading.Thread(target=beat, daemon=True).start()
        monkeypatch.setenv("SKYPORT_LAUNCH_SOCKET", str(sock_path))
        assert checkpoint.request(timeout_s=10) == 1
        assert client.parts and client.parts[0][:3] == (1, "abc", 0)
    finally:
        sock.close()
        ck.close()
