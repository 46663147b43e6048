"""The hub's progress bar from a notebook job's own events (pure: no I/O, no clock).

queued (with the plan's start estimate), scheduled, cluster being created,
node up (staging in), server starting (running), then ready (the spawner's own
last step); a job that ends shows its state and reason.
"""

from __future__ import annotations

from typing import Any

from skyport.models import Event, Job, JobState

__all__ = ["failure_message", "progress_for"]

_STEPS: dict[JobState, tuple[int, str]] = {
    JobState.QUEUED: (5, "queued"),
    JobState.SCHEDULED: (20, "scheduled"),
    JobState.PROVISIONING: (35, "cluster being created"),
    JobState.STAGING_IN: (55, "node up"),
    JobState.RUNNING: (75, "server starting"),
    JobState.STAGING_OUT: (95, "server stopping"),
}


def failure_message(job: Job, stderr_tail: str = "") -> str:
    """Why a server's job ended, with the last lines its server wrote, when there are any."""
    text = f"Sky Port job {job.id} is {job.state.value}: {job.reason or 'no reason given'}"
    said = [line.strip() for line in stderr_tail.splitlines() if line.strip()][-3:]
    return text + (f"; the server said: {' | '.join(said)[-400:]}" if said else "")


def progress_for(job: Job, event: Event) -> dict[str, Any]:
    """One progress message (JupyterHub's ``{"progress", "message"}``) for one job event."""
    if event.state.is_terminal():
        return {"progress": 100, "message": failure_message(job)
                if event.state != JobState.SUCCEEDED else f"job {job.id} ended"}
    pct, step = _STEPS.get(event.state, (50, event.state.value.lower()))
    message = f"{step}: {event.reason}" if event.reason else step
    if event.state == JobState.QUEUED and job.state == JobState.QUEUED:
        if job.planned_start_at is not None:
            message += f" (ETA {job.planned_start_at:%H:%M:%S} UTC)"
        if job.wait_detail:
            message += f"; {job.wait_detail}"
    if event.state == JobState.PROVISIONING and job.gate:
        message += f" on gate {job.gate}" + (f", flavor {job.flavor}" if job.flavor else "")
    return {"progress": pct, "message": message}
