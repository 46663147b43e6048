"""Every JSON route declares a skyport.protocol model; the heartbeat answer has one shape."""

from __future__ import annotations

from pathlib import Path

from skyport.client.testing import TestControlPlane
from skyport.models import JobState
from skyport.protocol import HeartbeatAnswer, IdleGrant

# the routes that answer bytes (files, logs), not JSON
BYTES = {("GET", "/v1/jobs/{job_id}/logs/{stream}"), ("GET", "/v1/jobs/{job_id}/files/{path}"),
         ("GET", "/agent/v1/jobs/{job_id}/files/{path}"),
         ("HEAD", "/v1/uploads/{sha256}/{name}")}  # HEAD: a status, no body


def test_every_json_route_declares_its_answer(tmp_path: Path) -> None:
    with TestControlPlane(tmp_path) as cp:
        paths = cp.app.openapi()["paths"]
    untyped, typed = set(), 0
    for path, ops in paths.items():
        for method, op in ops.items():
            ok = next(v for k, v in op["responses"].items() if k.startswith("2"))
            schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
            if schema:
                typed += 1
            else:
                untyped.add((method.upper(), path))
            assert op["responses"]["422"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"}
    assert untyped == BYTES and typed >= 30


def test_the_heartbeat_answer_reads_every_key_the_core_sends() -> None:
    answer = HeartbeatAnswer.model_validate({
        "state": "RUNNING", "action": "idle", "warm": True,
        "idle": {"cluster_id": "c1", "credential": "secret"},
        "checkpoint": {"version": 2, "id": "ab"}, "notice": "preempt", "signal": "SIGUSR1"})
    assert answer.state is JobState.RUNNING and answer.idle == IdleGrant(
        cluster_id="c1", credential="secret")
    assert answer.checkpoint is not None and answer.checkpoint.version == 2
    assert "secret" not in repr(answer)  # credentials stay out of logs
    assert HeartbeatAnswer(state=JobState.QUEUED, action="wait").model_dump(
        exclude_defaults=True) == {"state": JobState.QUEUED, "action": "wait"}
