"""Table and Gantt rendering: pure functions, exact output."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from skyport.cli.render import (
    GanttEntry,
    format_size,
    format_when,
    gantt,
    job_rows,
    key_values,
    table,
    timing,
)
from skyport.models import Job, JobSpec, JobState

NOW = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def make_job(state: JobState, **kw: object) -> Job:
    return Job(
        id="j1",
        owner="alice",
        spec=JobSpec(name="train", script="echo"),
        state=state,
        submitted_at=NOW - 60 * MIN,
        **kw,
    )


def test_table_aligns_columns_and_shows_missing_values() -> None:
    assert table(["ID", "STATE"], [["j1", "RUNNING"], ["j10", None]]) == (
        "ID   STATE\nj1   RUNNING\nj10  -"
    )


def test_key_values() -> None:
    assert key_values([("id", "j1"), ("exit code", None)]) == "id:        j1\nexit code: -"


def test_timing_eta_elapsed_duration() -> None:
    assert timing(make_job(JobState.QUEUED, planned_start_at=NOW + 5 * MIN), NOW) == "in 00:05:00"
    assert timing(make_job(JobState.QUEUED, planned_start_at=NOW - MIN), NOW) == "now"
    assert timing(make_job(JobState.QUEUED), NOW) == "-"
    predicted = make_job(
        JobState.QUEUED, planned_start_at=NOW + 5 * MIN, planned_start_predicted=True
    )
    assert timing(predicted, NOW) == "~in 00:05:00"  # planned on predicted runtimes
    assert timing(make_job(JobState.RUNNING, started_at=NOW - 90 * MIN), NOW) == "01:30:00"
    done = make_job(JobState.SUCCEEDED, started_at=NOW - 50 * MIN, ended_at=NOW - 20 * MIN)
    assert timing(done, NOW) == "00:30:00"
    assert timing(make_job(JobState.CANCELLED, ended_at=NOW), NOW) == "-"


def test_format_when_is_short_for_today() -> None:
    assert format_when(NOW - MIN, NOW, UTC) == "09:59:00"
    assert format_when(NOW - timedelta(days=2), NOW, UTC) == "04-29 10:00"
    assert format_when(NOW - timedelta(days=400), NOW, UTC) == "2023-03-28"
    assert format_when(None, NOW, UTC) == "-"


def test_job_rows() -> None:
    row = job_rows([make_job(JobState.RUNNING, started_at=NOW - 10 * MIN)], NOW, UTC)[0]
    assert row == ["j1", "train", "alice", "RUNNING", "1", "09:00:00", "09:50:00", "00:10:00", ""]


def test_format_size() -> None:
    assert [format_size(n) for n in (0, 1023, 1536, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 GiB",
    ]


def test_gantt_rows_axis_and_now_marker() -> None:
    entries = [
        GanttEntry("j2 post", "QUEUED", NOW + 30 * MIN, NOW + 90 * MIN),
        GanttEntry("j1 train", "RUNNING", NOW - 30 * MIN, NOW + 30 * MIN),
        GanttEntry("j3 tiny", "SCHEDULED", NOW + 10 * MIN, NOW + 11 * MIN),
    ]
    assert gantt(entries, NOW, width=40, tz=UTC) == "\n".join(
        [
            "j1 train  RUNNING    ████████████████████",
            "j3 tiny   SCHEDULED            │  ▒",
            "j2 post   QUEUED               │         ▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒",
            "                     ──────────┴─────────────────────────────",
            "                     09:30    now                       11:30",
            "█ running  ▒ planned  │ now (10:00:00)  one cell = 00:03:00",
        ]
    )


def test_gantt_from_timetable_json_and_empty() -> None:
    entry = GanttEntry.from_timetable(
        {
            "job_id": "j1",
            "name": "a",
            "state": "QUEUED",
            "start": "2024-05-01T10:00:00Z",
            "end": "2024-05-01T11:00:00+00:00",
        }
    )
    assert entry.label == "j1 a" and entry.end - entry.start == 60 * MIN
    assert gantt([], NOW) == "(timetable is empty)"
