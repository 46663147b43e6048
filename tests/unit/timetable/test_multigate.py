"""The harness's multi-gate mode: pools of different prices and boot times, costs, deadlines."""

from __future__ import annotations

import json

import pytest

from benchmarks.timetable.__main__ import main
from benchmarks.timetable.multigate import parse_pools, replay_pools, run_multigate, score_pools
from benchmarks.timetable.swf import Trace, TraceJob
from skyport.timetable import load_policy
from skyport.timetable.snapshot import COST, TIME

POOLS = parse_pools("cheap:4:0.1:100,fast:4:1.0:10")
# two 4-wide jobs of 50 s (requested 60 s), submitted together
JOBS = (TraceJob(1, 0.0, 50.0, 4, 60.0, "u"), TraceJob(2, 0.0, 50.0, 4, 60.0, "u"))


def test_pools_parse_and_bad_pools_name_the_part() -> None:
    assert [(p.name, p.capacity, p.price_per_hour, p.boot_s) for p in POOLS] == [
        ("cheap", 4, 0.1, 100.0), ("fast", 4, 1.0, 10.0)]
    for bad in ("cheap:4:0.1", "a:x:1:1", "a:0:1:1", "a:1:-1:1", "a:1:1:1,a:1:1:1"):
        with pytest.raises(ValueError, match="--pools"):
            parse_pools(bad)


def test_cost_fills_the_cheap_pool_time_takes_the_earliest() -> None:
    easy = load_policy("easy")
    by_cost = replay_pools(JOBS, POOLS, easy, prefer=COST)
    assert by_cost.pool == ["cheap", "cheap"] and by_cost.starts == [0.0, 150.0]
    by_time = replay_pools(JOBS, POOLS, easy, prefer=TIME)
    assert by_time.pool == ["cheap", "fast"] and by_time.starts == [0.0, 0.0]
    score = score_pools(JOBS, by_time, POOLS)
    # waits run until the job runs: boot included; cost: procs x price x (boot + run) hours
    assert score["mean_wait_s"] == pytest.approx((100 + 10) / 2)
    assert score["total_cost"] == pytest.approx(4 * 0.1 * 150 / 3600 + 4 * 1.0 * 60 / 3600)


def test_a_deadline_sends_the_second_job_to_the_fast_pool_or_ends_it() -> None:
    easy = load_policy("easy")
    # deadline = submit + 10 + slack x 60: 190 s at slack 3; cheap again only at 150 + 160
    hurried = replay_pools(JOBS, POOLS, easy, prefer=COST, slack=3)
    assert hurried.pool == ["cheap", "fast"]
    # at slack 1 nothing but the fast pool at once meets it: the second job ends unplaced
    tight = replay_pools(JOBS, POOLS, easy, prefer=COST, slack=1)
    assert tight.pool == ["fast", None] and tight.starts[1] is None
    assert score_pools(JOBS, tight, POOLS)["cancelled"] == 1


def test_baseline_is_the_fastest_pool_alone() -> None:
    out = run_multigate(Trace("t", 8, JOBS), "easy", POOLS, baseline=True)
    assert out["pools"] == "fast:4:1:10" and out["prefer"] == TIME and out["jobs_on_fast"] == 2


def test_cli(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    swf = tmp_path / "t.swf"
    swf.write_text("; MaxProcs: 4\n1 0 -1 50 4 -1 -1 4 60 -1 1 1 1 -1 -1 -1 -1 -1\n")
    assert main(["multigate", "--trace", str(swf), "--pools", "cheap:4:0.1:100,fast:4:1:10",
                 "--slack", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ran"], out["jobs_on_cheap"], out["slack"]) == (1, 1, 3.0)
    with pytest.raises(SystemExit):
        main(["multigate", "--trace", str(swf), "--slack", "0.5"])
    assert "--slack" in capsys.readouterr().err
