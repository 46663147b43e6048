"""One option table: ``#SKYPORT``, ``skyport submit`` and ``@skyport.job`` take the same options."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import skyport
from skyport.cli import cli
from skyport.client.testing import TestControlPlane
from skyport.errors import ScriptError, ValidationError
from skyport.models import Job, JobSpec, JobState
from skyport.options import ARGUMENTS, OPTIONS, get_target
from skyport.runtime.contract import RESULT_FILE, RESULTS_DIR
from skyport.script import build_spec

# directive -> (the value as a directive or command-line option, the same as a decorator argument)
SAMPLES: dict[str, tuple[str, Any]] = {
    "name": ("sim", "sim"),
    "nodes": ("2", 2),
    "cpus-per-node": ("8", 8),
    "mem": ("2G", 2048),
    "gpus-per-node": ("1", 1),
    "time": ("1:30:00", 5400),
    "ranks-per-node": ("2", 2),
    "threads-per-rank": ("4", 4),
    "mpi": ("openmpi", "openmpi"),
    "gate": ("local", "local"),
    "flavor": ("c8", "c8"),
    "max-price": ("2.5", 2.5),
    "prefer": ("cost", "cost"),
    "deadline": ("+6h", "+6h"),
    "input": ("s3://data/forcing.nc", ["s3://data/forcing.nc"]),
    "output": ("out/history.nc", ["out/history.nc"]),
    "output-node": ("0", "0"),
    "env": ("OMP_PLACES=cores", {"OMP_PLACES": "cores"}),
    "priority": ("10", 10),
    "checkpoint-every": ("5m", 300),
    "max-restarts": ("3", 3),
    "signal": ("USR1@60", "SIGUSR1@60"),
    "dependency": ("afterok:1a2b:3c4d,singleton", "afterok:1a2b:3c4d,singleton"),
    "array": ("0-9:2%3", None),  # no decorator argument: fn.map submits arrays
}
PYTHON_SAMPLES = {d: s for d, s in SAMPLES.items() if OPTIONS[d].python}

# what ``skyport submit`` has beside the job options: how it prints, not what it asks for
NOT_JOB_OPTIONS = {"json_output", "debug"}


def submit_options() -> list[click.Option]:
    command = cli.get_command(click.Context(cli), "submit")
    assert command is not None
    return [
        p for p in command.params
        if isinstance(p, click.Option) and p.name not in NOT_JOB_OPTIONS
    ]


def fn() -> int:
    return 1


def job_spec(**arguments: Any) -> JobSpec:
    return skyport.job(**arguments)(fn).spec


def test_the_table_has_every_directive_once_and_samples_for_each() -> None:
    assert list(SAMPLES) == list(OPTIONS)
    arguments = [o.argument for o in OPTIONS.values()]
    assert len(set(arguments)) == len(arguments) == 24
    fields = [o.field for o in OPTIONS.values()]
    assert len(set(fields)) == len(fields)  # an error about a field names one option
    for opt in OPTIONS.values():  # every target is a field of the spec
        model: Any = JobSpec
        for part in opt.target.split("."):
            assert part in model.model_fields, opt.target
            model = model.model_fields[part].annotation


@pytest.mark.parametrize("param", submit_options(), ids=lambda p: p.opts[0])
def test_every_submit_option_is_a_decorator_argument_and_a_directive(
    param: click.Option,
) -> None:
    (flag,) = param.opts
    directive = flag.removeprefix("--")
    assert directive in OPTIONS, f"{flag} has no row in the option table"
    if not OPTIONS[directive].python:
        assert param.name not in inspect.signature(skyport.job).parameters
        return
    assert param.name in inspect.signature(skyport.job).parameters
    assert ARGUMENTS[param.name] is OPTIONS[directive]
    text, value = SAMPLES[directive]
    # 8 cores, so that a layout option alone fits the node
    from_script = build_spec(f"#SKYPORT --cpus-per-node=8\n#SKYPORT {flag}={text}\nrun\n")
    from_python = job_spec(**{"cpus_per_node": 8, param.name: value})
    opt = OPTIONS[directive]
    got = get_target(from_python.model_dump(), opt)
    if directive == "output":
        got = got[1:]  # the function's result file comes first
    assert got == get_target(from_script.model_dump(), opt)


def test_submit_has_one_option_per_row() -> None:
    assert [p.opts[0] for p in submit_options()] == [f"--{d}" for d in OPTIONS]
    assert [p.name for p in submit_options()] == [o.argument for o in OPTIONS.values()]


def test_the_decorator_signature_is_the_table() -> None:
    params = inspect.signature(skyport.job).parameters
    assert list(params) == ["fn", *ARGUMENTS, "home", "user", "client"]
    assert params["cpus_per_node"].default == 2 and params["time"].default == "10m"
    for name in ARGUMENTS:
        assert name in (skyport.job.__doc__ or "")


def test_three_doors_give_the_same_spec(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = "#!/bin/bash\n" + "".join(
        f"#SKYPORT --{d}={text}\n" for d, (text, _) in PYTHON_SAMPLES.items()
    ) + "run\n"
    from_script = build_spec(script)

    submitted: list[JobSpec] = []

    class Recorder:  # what the CLI hands the client is what is compared: no server needed
        def __enter__(self) -> Recorder:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def close(self) -> None:
            pass

        def submit(self, spec: JobSpec, payload: bytes | None = None,
                   progress: object = None) -> Job:
            submitted.append(spec)
            return Job(id="j1", owner="alice", spec=spec, state=JobState.QUEUED,
                       submitted_at=datetime.now(UTC))

    monkeypatch.setattr("skyport.cli.app.client_factory", lambda home, user: Recorder())
    bare = tmp_path / "job.sh"
    bare.write_text("#!/bin/bash\nrun\n")
    args = [w for d, (text, _) in PYTHON_SAMPLES.items() for w in (f"--{d}", text)]
    result = CliRunner().invoke(cli, ["submit", str(bare), *args])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "j1"
    from_cli = submitted[0]

    from_python = job_spec(**{OPTIONS[d].argument: value
                              for d, (_, value) in PYTHON_SAMPLES.items()})

    dumps = [s.model_dump() for s in (from_script, from_cli, from_python)]
    dumps[2]["outputs"] = dumps[2]["outputs"][1:]  # the function's own result comes first
    for opt in OPTIONS.values():
        if not opt.python:
            continue
        assert get_target(dumps[0], opt) is not None, opt.directive
        assert get_target(dumps[0], opt) == get_target(dumps[1], opt) == \
            get_target(dumps[2], opt), opt.directive
    assert from_python.outputs == (RESULTS_DIR, "out/history.nc")  # 2 nodes x 2 ranks


@pytest.mark.parametrize(
    ("directive", "text", "value"),
    [
        ("time", "soon", "soon"),
        ("mem", "lots", "lots"),
        ("mpi", "intelmpi", "intelmpi"),
        ("signal", "SIGNOPE", "SIGNOPE"),
        ("signal", "KILL", "KILL"),
        ("env", "SKYPORT_X=1", {"SKYPORT_X": "1"}),
        ("output", "../escape", ["../escape"]),
        ("input", "", [""]),
        ("priority", "5000", 5000),
        ("output-node", "2", "2"),
        ("name", "two words", "two words"),
        ("prefer", "fastest", "fastest"),
        ("deadline", "tomorrow", "tomorrow"),
        ("deadline", "+0s", "+0s"),
        ("deadline", "2026-13-45T99:00", "2026-13-45T99:00"),
    ],
)
def test_a_bad_value_is_the_same_error_at_every_door(
    directive: str, text: str, value: Any
) -> None:
    with pytest.raises(ScriptError) as in_script:
        build_spec(f"#!/bin/bash\n#SKYPORT --{directive}={text!r}\nrun\n".replace("'", "\""))
    argument = OPTIONS[directive].argument
    with pytest.raises(ValidationError) as in_python:
        job_spec(**{argument: value})
    assert (in_script.value.field, in_script.value.line) == (f"--{directive}", 2)
    assert in_python.value.field == argument
    assert in_script.value.allowed == in_python.value.allowed
    if not isinstance(value, list | dict):
        assert in_script.value.value == text and in_python.value.value == value


def test_python_values_beside_text() -> None:
    spec = job_spec(time=90, mem=512, checkpoint_every="2m", max_price=3)
    assert (spec.resources.time_limit_s, spec.resources.mem_mb) == (90, 512)
    assert (spec.checkpoint_every_s, spec.max_price_per_hour) == (120, 3.0)
    assert job_spec(outputs="one.txt").outputs == (RESULT_FILE, "one.txt")


@pytest.mark.parametrize(
    ("arguments", "field", "allowed"),
    [
        ({"nodes": "2"}, "nodes", "a whole number (int)"),
        ({"max_price": "cheap"}, "max_price", "a number"),
        ({"max_price": float("nan")}, "max_price", "a number"),
        ({"mem": 0}, "mem", "at least 1"),
        ({"time": 1.5}, "time", "whole number"),
        ({"env": ["A=1"]}, "env", "a mapping"),
        ({"env": {"A": 1}}, "env", "a mapping"),
        ({"inputs": [3]}, "inputs", "a list of URLs"),
        ({"priority": True}, "priority", "a whole number"),
    ],
)
def test_python_type_errors_name_the_argument(
    arguments: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(ValidationError) as info:
        job_spec(**arguments)
    assert info.value.field == field and allowed in info.value.allowed


def test_new_directives_reach_the_decorator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = job_spec(mpi="openmpi", priority=-5, signal="USR1", max_price=1.25,
                    inputs=["data/in.csv", "https://h/x"], outputs=["plots"])
    assert (spec.layout.mpi, spec.priority, spec.max_price_per_hour) == ("openmpi", -5, 1.25)
    assert spec.signal is not None and spec.signal.startswith("SIGUSR1@")
    # a plain path is relative to where the decorator ran, as on the command line
    assert spec.inputs == ((tmp_path / "data/in.csv").as_uri(), "https://h/x")
    assert spec.outputs == (RESULT_FILE, "plots")


def test_an_unknown_keyword_lists_the_known_ones() -> None:
    with pytest.raises(ValidationError) as info:
        skyport.job(cpu=2)
    assert (info.value.field, info.value.value) == ("argument", "cpu")
    for name in ("cpus_per_node", "cpus", "max_price", "inputs", "home", "user", "client"):
        assert name in info.value.allowed


def test_an_alias_and_its_option_at_once() -> None:
    with pytest.raises(ValidationError, match="'cpus_per_node' means the same"):
        skyport.job(cpus=2, cpus_per_node=4)


def test_aliases_name_themselves_in_errors() -> None:
    with pytest.raises(ValidationError) as info:
        job_spec(cpus_per_node=0)
    assert info.value.field == "cpus_per_node"
    with pytest.raises(ValidationError) as info:
        job_spec(gpus=-1)
    assert info.value.field == "gpus"


def test_per_call_options(tmp_path: Path) -> None:
    cp = TestControlPlane(tmp_path, gate={"cpus": 8})
    client = cp.client("alice")

    @skyport.job(cpus=2, time="10m", priority=3, client=client)
    def square(x: int) -> int:
        return x * x

    bigger = square.options(cpus_per_node=8, time=3600, priority=None)
    assert (bigger.spec.resources.cpus_per_node, bigger.spec.resources.time_limit_s) == (8, 3600)
    assert bigger.spec.priority == 0  # None: back to the default
    assert (square.spec.resources.cpus_per_node, square.spec.priority) == (2, 3)  # unchanged
    assert bigger(3) == 9
    handle = bigger.submit(4)
    assert client.job(handle.id).spec == bigger.spec
    cp.close()
    with pytest.raises(ValidationError) as info:
        square.options(time="soon")
    assert info.value.field == "time"
    with pytest.raises(ValidationError, match="argument"):
        square.options(cores=4)
    other = square.options(home="/elsewhere", user="bob")
    assert (other.job_options.home, other.job_options.user) == ("/elsewhere", "bob")
    assert other.spec == square.spec


@pytest.mark.parametrize("path", [RESULT_FILE, RESULTS_DIR, f"{RESULTS_DIR}/x"])
def test_outputs_cannot_take_the_result_s_place(path: str) -> None:
    with pytest.raises(ValidationError) as info:
        job_spec(outputs=["fine.txt", path])
    assert (info.value.field, info.value.value) == ("outputs", path)
