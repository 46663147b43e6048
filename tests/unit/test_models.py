"""JobSpec validation and the job-state enum."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from skyport.models import JobSpec, JobState, check_relative_path

SCRIPT = "#!/bin/bash\necho hi\n"


def spec(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({"script": SCRIPT, **fields})


def test_defaults() -> None:
    s = spec()
    assert (s.name, s.kind, s.resources.nodes, s.resources.cpus_per_node) == ("job", "script", 1, 1)
    assert s.resources.time_limit_s == 3600
    assert s.layout.mpi == "mpich"
    assert s.priority == 0


@pytest.mark.parametrize("name", ["a", "job-1", "A.b_c", "9lives", "x" * 64])
def test_good_names(name: str) -> None:
    assert spec(name=name).name == name


@pytest.mark.parametrize(
    "name", ["", "-job", ".hidden", "_x", "a b", "a/b", "x" * 65, "job\n", "jöb", "job;rm"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="name"):
        spec(name=name)


@pytest.mark.parametrize("key", ["1X", "A-B", "", "X\n", "SKYPORT_JOB_ID", "A B"])
def test_bad_env_keys(key: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="env key"):
        spec(env={key: "1"})


def test_good_env() -> None:
    assert spec(env={"_A": "x", "OMP_PLACES": "cores"}).env == {"_A": "x", "OMP_PLACES": "cores"}


@pytest.mark.parametrize("path", ["out.txt", "results/a.h5", "a/b/c", "./x", "results/",
                                  "*.h5", "results/**/*.csv"])
def test_good_outputs(path: str) -> None:
    assert spec(outputs=[path]).outputs == (path,)


@pytest.mark.parametrize(
    "path", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "dir//", "/", "a\\b", "a\nb",
             "a\0b"]
)
def test_outputs_must_stay_inside_the_job_directory(path: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="relative path inside the job directory"):
        spec(outputs=[path])
    with pytest.raises(ValueError):
        check_relative_path(path, "output")


@pytest.mark.parametrize("url", ["", "s3://b/x\n"])
def test_bad_inputs(url: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="input"):
        spec(inputs=[url])


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"resources": {"nodes": 0}}, "nodes"),
        ({"resources": {"cpus_per_node": 0}}, "cpus_per_node"),
        ({"resources": {"gpus_per_node": -1}}, "gpus_per_node"),
        ({"resources": {"time_limit_s": 0}}, "time_limit_s"),
        ({"resources": {"mem_mb": 0}}, "mem_mb"),
        ({"priority": 1001}, "priority"),
        ({"priority": -1001}, "priority"),
        ({"max_price_per_hour": 0}, "max_price_per_hour"),
        ({"layout": {"mpi": "intelmpi"}}, "mpi"),
        ({"layout": {"ranks_per_node": 0}}, "ranks_per_node"),
        ({"kind": "container"}, "kind"),
        ({"colour": "red"}, "colour"),  # unknown fields are refused, not ignored
        ({"resources": {"node": 2}}, "node"),
    ],
)
def test_out_of_range_fields(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=match):
        spec(**fields)


def test_ranks_times_threads_must_fit_the_node() -> None:
    ok = spec(resources={"cpus_per_node": 8}, layout={"ranks_per_node": 4, "threads_per_rank": 2})
    assert ok.threads_per_rank == 2
    with pytest.raises(pydantic.ValidationError, match="4 x 3 exceeds cpus-per-node = 8"):
        spec(resources={"cpus_per_node": 8}, layout={"ranks_per_node": 4, "threads_per_rank": 3})
    with pytest.raises(pydantic.ValidationError, match="exceeds cpus-per-node = 2"):
        spec(resources={"cpus_per_node": 2}, layout={"ranks_per_node": 4})


def test_threads_default_to_the_cores_shared_among_ranks() -> None:
    s = spec(resources={"nodes": 3, "cpus_per_node": 16}, layout={"ranks_per_node": 4})
    assert s.threads_per_rank == 4
    assert s.total_cpus == 48


def test_script_job_needs_a_script() -> None:
    with pytest.raises(pydantic.ValidationError, match="script must not be empty"):
        JobSpec(script="  \n")
    assert JobSpec(kind="function").script == ""


def test_spec_is_frozen() -> None:
    s = spec()
    with pytest.raises(pydantic.ValidationError):
        s.name = "other"  # type: ignore[misc]


def test_json_round_trip() -> None:
    s = spec(name="x", env={"A": "1"}, inputs=["s3://b/k"], outputs=["o"], priority=5)
    assert JobSpec.model_validate_json(s.model_dump_json()) == s


TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT}


@pytest.mark.parametrize("state", list(JobState))
def test_is_terminal(state: JobState) -> None:
    assert state.is_terminal() == (state in TERMINAL)


def test_states_with_a_cluster() -> None:
    assert {s for s in JobState if s.has_cluster()} == {
        JobState.PROVISIONING,
        JobState.STAGING_IN,
        JobState.RUNNING,
        JobState.STAGING_OUT,
    }


def test_running_spans_are_each_attempts_running_stretch() -> None:
    from datetime import UTC, datetime, timedelta

    from skyport.models import Event, Job

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    states = [(0, JobState.QUEUED), (1, JobState.RUNNING), (3, JobState.QUEUED),
              (4, JobState.RUNNING), (9, JobState.STAGING_OUT), (10, JobState.SUCCEEDED)]
    job = Job(id="j", owner="o", spec=JobSpec(script="true"), state=JobState.SUCCEEDED,
              submitted_at=t0,
              events=[Event(time=t0 + timedelta(seconds=s), state=st, reason="r")
                      for s, st in states])
    base = t0.timestamp()
    assert [(a - base, b - base) for a, b in job.running_spans()] == [(1.0, 3.0), (4.0, 9.0)]
    still_running = job.model_copy(update={"events": job.events[:4]})
    assert still_running.running_spans() == [(base + 1, base + 3)]


def test_a_layout_without_cpus_per_node_gets_ranks_x_threads_cores_as_sbatch_does() -> None:
    from skyport.script import build_spec

    spec = build_spec("#!/bin/bash\n#SKYPORT --ranks-per-node=2 --threads-per-rank=2\ntrue\n")
    assert (spec.resources.cpus_per_node, spec.threads_per_rank) == (4, 2)
    assert build_spec("#!/bin/bash\n#SKYPORT --ranks-per-node=3\ntrue\n") \
        .resources.cpus_per_node == 3
    # an explicit --cpus-per-node stays as asked, and is still checked against the layout
    assert build_spec("#!/bin/bash\n#SKYPORT --ranks-per-node=2 --cpus-per-node=8\ntrue\n") \
        .resources.cpus_per_node == 8
    with pytest.raises(Exception, match="exceeds cpus-per-node = 1"):
        build_spec("#!/bin/bash\n#SKYPORT --ranks-per-node=2 --threads-per-rank=2 "
                   "--cpus-per-node=1\ntrue\n")
