"""The wire protocol: one pydantic model per request and reply (placeholder subset)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from skyport.models import JobState


class IdleGrant(BaseModel):
    cluster_id: str
    credential: str


class CheckpointOrder(BaseModel):
    version: int
    id: str


class HeartbeatAnswer(BaseModel):
    state: JobState
    action: Literal["wait", "run", "stop", "idle"]
    warm: bool = False  # node 0 waits for its idle answer after the exit
    idle: IdleGrant | None = None
    checkpoint: CheckpointOrder | None = None
    notice: str | None = None  # "preempt"
    signal: str | None = None  # e.g. "SIGUSR1"
