"""The harness: SWF conventions, replay against the independent baseline, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.timetable.__main__ import main
from benchmarks.timetable.baseline import simulate_easy
from benchmarks.timetable.metrics import score
from benchmarks.timetable.replay import replay
from benchmarks.timetable.swf import TraceJob, read_swf
from skyport.timetable import load_policy

SWF = """; MaxNodes: 8
; MaxProcs: 8
1 0 -1 100 4 -1 -1 4 200 -1 1 1 1 -1 -1 -1 -1 -1
2 5 -1 50 -1 -1 -1 6 -1 -1 1 2 2 -1 -1 -1 -1 -1
3 6 -1 -1 2 -1 -1 2 10 -1 1 2 2 -1 -1 -1 -1 -1
4 7 -1 10 9 -1 -1 9 10 -1 1 2 2 -1 -1 -1 -1 -1
5 8 -1 10 2 -1 -1 2 5 -1 1 3 3 -1 -1 -1 -1 -1
"""


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.swf"
    path.write_text(SWF)
    return path


def test_swf_conventions(trace_file: Path) -> None:
    trace = read_swf(trace_file)
    assert trace.capacity == 8
    assert [j.id for j in trace.jobs] == [1, 2, 5]
    assert trace.dropped == 2  # run < 0, wider than MaxProcs
    assert trace.jobs[1].procs == 6 and trace.jobs[1].req_s == 50  # fields 8 and 4 stand in


def test_replay_and_metrics(trace_file: Path) -> None:
    trace = read_swf(trace_file)
    result = replay(trace.jobs, trace.capacity, load_policy("easy"))
    # Job 2 (6 procs) waits for job 1; job 5 (2 procs, 5 s requested, runs 10) backfills at 8.
    assert result.starts == [0.0, 100.0, 8.0]
    metrics = score(trace.jobs, result.starts, trace.capacity)
    assert metrics["mean_wait_s"] == pytest.approx(95 / 3)
    assert metrics["makespan_s"] == 150.0


jobs_strategy = st.lists(
    st.tuples(st.integers(0, 50), st.integers(0, 60), st.integers(1, 8), st.integers(1, 60)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(rows=jobs_strategy)
def test_engine_easy_matches_the_independent_baseline(rows: list[tuple[int, ...]]) -> None:
    submit = 0
    jobs = []
    for i, (gap, run, procs, req) in enumerate(rows):
        submit += gap
        jobs.append(TraceJob(i, float(submit), float(run), procs, float(req), f"u{i % 3}"))
    engine = replay(jobs, 8, load_policy("easy")).starts
    baseline, _ = simulate_easy(jobs, 8)
    assert engine == baseline


def test_cli_json_and_windows(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--trace", str(trace_file), "--policy", "conservative", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "jobs",
        "capacity",
        "policy",
        "mean_wait_s",
        "p95_wait_s",
        "max_wait_s",
        "mean_bsld",
        "utilization",
        "makespan_s",
        "makespan_lower_bound_s",
        "passes",
        "mean_pass_ms",
        "max_pass_ms",
        "wall_s",
    ):
        assert key in out
    assert main(["--trace", str(trace_file), "--json", "--windows", "3", "--window-len", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["jobs"] == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--trace", "missing.swf"], "--trace: 'missing.swf'"),
        (["--policy", "nope"], "--policy: 'nope' is not a known policy; known policies:"),
        (["--windows", "2", "--window-len", "99"], "--window-len: 99 is larger than the trace"),
    ],
)
def test_cli_bad_input_exits_2(
    trace_file: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    argv = args if args[0] == "--trace" else ["--trace", str(trace_file), *args]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_compare_writes_table_and_plots(trace_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "compare",
                "--trace",
                str(trace_file),
                "--out",
                str(out),
                "--policy",
                "easy",
                "--policy",
                "fcfs",
            ]
        )
        == 0
    )
    assert "| tiny.swf | whole | easy |" in (out / "results.md").read_text()
    assert (out / "tiny.swf-waits.png").stat().st_size > 0
    assert (out / "tiny.swf-utilization.png").stat().st_size > 0


def test_profile_ab_plans_alike_and_restores_the_engine(tmp_path: Path) -> None:
    from benchmarks.timetable.profile_ab import compare_profiles
    from skyport.timetable import engine, profile

    here = profile.__file__
    result = compare_profiles(here, here, shape="scan", rounds=1)
    assert result["same_plan"] is True
    assert result["before_ms_best"] > 0 and result["after_ms_best"] > 0
    assert engine.AvailabilityProfile is profile.AvailabilityProfile
    broken = tmp_path / "broken.py"
    broken.write_text("X = 1\n")
    with pytest.raises(ValueError, match="defines no AvailabilityProfile"):
        compare_profiles(str(broken), here, rounds=1)
