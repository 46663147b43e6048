"""The runtime predictor and the history the caller keeps for it."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from skyport.timetable.predict import (
    CORRECTION_STEPS_S,
    RuntimeHistory,
    correct,
    owner_means,
    predict,
    same_request_mean,
)
from skyport.timetable.snapshot import Ended


def test_a_user_with_no_history_gets_their_requested_time() -> None:
    means = owner_means({"bob": (Ended(100.0, 3600.0),)})
    assert predict(means.get("alice"), 7200.0) == 7200.0


def test_the_prediction_is_the_mean_of_the_last_two_runtimes() -> None:
    history = {"alice": (Ended(8600.0, 9000.0), Ended(100.0, 3600.0), Ended(300.0, 3600.0))}
    assert predict(owner_means(history).get("alice"), 7200.0) == 200.0
    assert predict(owner_means(history, depth=3).get("alice"), 7200.0) == 3000.0


def test_a_prediction_the_job_outlives_is_corrected_up_the_ladder() -> None:
    # predicted 200 s, still running at 250 s: next step past 250 s is 300 s
    assert correct(200.0, 250.0, 7200.0) == 300.0
    # still running at 300 s: 900 s
    assert correct(300.0, 300.0, 7200.0) == 900.0
    # never past the requested time, where the job is killed
    assert correct(200.0, 5000.0, 6000.0) == 6000.0
    assert correct(200.0, CORRECTION_STEPS_S[-1] + 1, 10**7) == 10**7
    # a job not past its prediction keeps it
    assert correct(200.0, 150.0, 7200.0) == 200.0


@settings(max_examples=200, deadline=None)
@given(
    runtimes=st.lists(st.floats(0, 1e6), max_size=5),
    requested=st.floats(0, 1e6),
    elapsed=st.floats(0, 2e6),
)
def test_predictions_never_exceed_the_requested_time(
    runtimes: list[float], requested: float, elapsed: float
) -> None:
    history = RuntimeHistory(keep=3)
    for run in runtimes:
        history.record("u", run, 2 * run)
    mean = owner_means(history.view()).get("u")
    predicted = predict(mean, requested)
    assert predicted <= requested
    assert correct(predicted, elapsed, requested) <= requested
    if elapsed < requested:
        # a corrected prediction lies past what the job has already run
        assert correct(predicted, elapsed, requested) > elapsed


def test_history_keeps_the_last_jobs_and_round_trips_through_a_file(tmp_path: Path) -> None:
    history = RuntimeHistory(keep=2)
    for run in (10.0, 20.0, 30.0):
        history.record("alice", run, 60.0)
    view = history.view()
    assert view["alice"] == (Ended(20.0, 60.0), Ended(30.0, 60.0))
    history.record("alice", 40.0, 60.0)
    assert view["alice"] == (Ended(20.0, 60.0), Ended(30.0, 60.0))  # a view is a copy
    path = tmp_path / "history.json"
    history.save(path)
    again = RuntimeHistory.load(path)
    assert again.view() == history.view()
    assert not (tmp_path / "history.json.tmp").exists()
    assert RuntimeHistory.load(tmp_path / "absent.json").view() == {}


def test_jobs_that_asked_for_the_same_time_predict_each_other() -> None:
    ended = (Ended(50.0, 3600.0), Ended(3000.0, 7200.0), Ended(70.0, 3600.0), Ended(10.0, 60.0))
    assert same_request_mean(ended, 3600.0) == (True, 60.0)
    assert same_request_mean(ended, 600.0) == (False, None)  # fall back on the owner's mean
    # asked for 60 s and ran 10 s: not trusted; a job that ran its full request is
    accurate = (Ended(3600.0, 3600.0),)
    assert same_request_mean(accurate, 3600.0) == (True, None)
