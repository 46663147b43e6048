"""``#SKYPORT`` directives: reading, command-line overrides and error messages."""

from __future__ import annotations

import json
import re

import pytest

from skyport.errors import ScriptError, ValidationError
from skyport.script import Directive, build_spec, cli_directives, read_directives


def script(*directives: str, body: str = "srun ./app\n") -> str:
    return "#!/bin/bash\n" + "".join(f"#SKYPORT {d}\n" for d in directives) + body


def options(text: str) -> list[tuple[int, str, str]]:
    return [(d.line, d.option, d.value) for d in read_directives(text)]


# -- reading ------------------------------------------------------------------


def test_equals_and_space_forms() -> None:
    assert options(script("--nodes=2", "--time 1:00:00")) == [
        (2, "nodes", "2"),
        (3, "time", "1:00:00"),
    ]


def test_several_options_on_one_line() -> None:
    text = script("--nodes=2 --cpus-per-node 8 --name=sim")
    assert options(text) == [(2, "nodes", "2"), (2, "cpus-per-node", "8"), (2, "name", "sim")]


def test_quoted_values_keep_their_spaces() -> None:
    assert options(script("--env 'GREETING=hello world'")) == [(2, "env", "GREETING=hello world")]


def test_reading_stops_at_the_first_command() -> None:
    text = "#!/bin/bash\n#SKYPORT --nodes=2\necho start\n#SKYPORT --nodes=9\n"
    assert options(text) == [(2, "nodes", "2")]
    assert build_spec(text).resources.nodes == 2


def test_blank_lines_and_comments_do_not_stop_reading() -> None:
    text = (
        "#!/bin/sh\n\n# a comment\n   \n#SKYPORT --nodes=3\n#SBATCH -N 9\n#SKYPORT --name=x\nrun\n"
    )
    assert options(text) == [(5, "nodes", "3"), (7, "name", "x")]


def test_shebang_is_ignored_and_not_needed() -> None:
    assert options("#!/usr/bin/env bash\n#SKYPORT --nodes=2\n") == [(2, "nodes", "2")]
    assert options("#SKYPORT --nodes=2\nrun\n") == [(1, "nodes", "2")]


@pytest.mark.parametrize(
    "line", ["#SKYPORTX --nodes=2", "#SKYPORT--nodes=2", "# SKYPORT --nodes=2"]
)
def test_lookalike_prefixes_are_not_directives(line: str) -> None:
    assert options(f"#!/bin/bash\n{line}\nrun\n") == []


def test_directive_with_no_options() -> None:
    assert options("#SKYPORT\n#SKYPORT   \nrun\n") == []


# -- building a spec ------------------------------------------------------------


def test_values_are_converted() -> None:
    s = build_spec(
        script(
            "--name=sim --nodes=4 --cpus-per-node=32 --gpus-per-node=2",
            "--mem=2G --time=1-02:00 --max-price=3.5 --priority=-5",
        )
    )
    assert s.name == "sim"
    assert (s.resources.nodes, s.resources.cpus_per_node, s.resources.gpus_per_node) == (4, 32, 2)
    assert s.resources.mem_mb == 2048
    assert s.resources.time_limit_s == 26 * 3600
    assert s.max_price_per_hour == 3.5
    assert s.priority == -5


def test_script_text_is_kept() -> None:
    text = script("--nodes=2")
    assert build_spec(text).script == text


def test_env_repeated() -> None:
    s = build_spec(script("--env A=1", "--env B=x=y --env=C="))
    assert s.env == {"A": "1", "B": "x=y", "C": ""}


def test_inputs_and_outputs_repeat_in_order() -> None:
    s = build_spec(script("--input s3://b/a --input=https://h/b", "--output=r/1 --output r/2"))
    assert s.inputs == ("s3://b/a", "https://h/b")
    assert s.outputs == ("r/1", "r/2")


def test_later_directive_wins_for_a_scalar() -> None:
    assert build_spec(script("--nodes=2", "--nodes=5")).resources.nodes == 5


@pytest.mark.parametrize("mpi", ["mpich", "openmpi"])
def test_mpi_choices(mpi: str) -> None:
    assert build_spec(script(f"--mpi={mpi}")).layout.mpi == mpi


def test_command_line_replaces_scalars() -> None:
    text = script("--nodes=2 --name=fromscript --time=10")
    s = build_spec(text, cli_directives([("nodes", "8"), ("time", "2h")]))
    assert s.resources.nodes == 8
    assert s.resources.time_limit_s == 7200
    assert s.name == "fromscript"


def test_command_line_replaces_lists_instead_of_extending_them() -> None:
    text = script("--env A=1 --env B=2", "--input s3://b/x", "--output o1 --output o2")
    s = build_spec(text, cli_directives([("env", "C=3"), ("output", "o3"), ("env", "D=4")]))
    assert s.env == {"C": "3", "D": "4"}
    assert s.outputs == ("o3",)
    assert s.inputs == ("s3://b/x",)  # not given on the command line: the script's list stays


def test_command_line_without_a_script() -> None:
    s = build_spec(None, cli_directives([("name", "fn")]), base={"kind": "function"})
    assert (s.kind, s.name, s.script) == ("function", "fn", "")


def test_base_is_not_changed() -> None:
    base = {"resources": {"nodes": 2}, "env": {"X": "1"}}
    s = build_spec(script("--cpus-per-node=4 --env Y=2"), base=base)
    assert (s.resources.nodes, s.resources.cpus_per_node) == (2, 4)
    assert base == {"resources": {"nodes": 2}, "env": {"X": "1"}}


def test_cli_unknown_option() -> None:
    with pytest.raises(ValidationError, match="--bogus") as err:
        cli_directives([("bogus", "1")])
    assert "nodes" in err.value.allowed


def test_cli_bad_value_says_command_line() -> None:
    with pytest.raises(ValidationError) as err:
        build_spec(script("--nodes=2"), cli_directives([("nodes", "two")]))
    assert not isinstance(err.value, ScriptError)
    assert err.value.message == "invalid --nodes (command line): 'two' (a whole number)"


# -- errors: line, option, value and what is allowed --------------------------


def raises_at(text: str, line: int, option: str, value: str, allowed: str) -> ScriptError:
    with pytest.raises(ScriptError) as err:
        build_spec(text)
    e = err.value
    assert e.line == line
    assert e.field == option
    assert e.value == value
    assert re.search(allowed, e.allowed), e.allowed
    assert e.message.startswith(f"line {line}: invalid {option}: {value!r} (")
    return e


def test_unknown_option() -> None:
    e = raises_at(script("--nodes=2", "--colour=red"), 3, "option", "--colour", "known options")
    assert "--nodes" in e.allowed and "--time" in e.allowed


def test_word_that_is_not_an_option() -> None:
    raises_at(script("--nodes=2 extra"), 2, "option", "extra", "--name=value")


def test_option_without_a_value() -> None:
    with pytest.raises(ScriptError, match="line 2: invalid --nodes: None") as err:
        build_spec(script("--nodes --name=x"))
    assert err.value.line == 2


def test_unbalanced_quote() -> None:
    with pytest.raises(ScriptError, match="line 3") as err:
        build_spec(script("--nodes=2", "--name='oops"))
    assert err.value.value == "--name='oops"


@pytest.mark.parametrize(
    ("directive", "option", "value", "allowed"),
    [
        ("--nodes=two", "--nodes", "two", "a whole number"),
        ("--nodes=1.5", "--nodes", "1.5", "a whole number"),
        ("--max-price=cheap", "--max-price", "cheap", "a number"),
        ("--time=soon", "--time", "soon", "HH:MM:SS"),
        ("--time=0", "--time", "0", "HH:MM:SS"),
        ("--mem=lots", "--mem", "lots", "512M"),
        ("--mem=0", "--mem", "0", "512M"),
        ("--name=", "--name", "", "non-empty"),
        ("--name='two words'", "--name", "two words", "letters, digits"),
        ("--mpi=intelmpi", "--mpi", "intelmpi", "one of mpich, openmpi"),
        ("--env=NOEQUALS", "--env", "NOEQUALS", "KEY=VALUE"),
        ("--env==1", "--env", "=1", "KEY=VALUE"),
        ("--output=../escape", "--output", "../escape", r"no '\.\.'"),
        ("--output=/etc/passwd", "--output", "/etc/passwd", "no leading '/'"),
        ("--nodes=0", "--nodes", "0", "greater than or equal to 1"),
        ("--priority=5000", "--priority", "5000", "less than or equal to 1000"),
        ("--max-price=-1", "--max-price", "-1", "greater than 0"),
    ],
)
def test_bad_values(directive: str, option: str, value: str, allowed: str) -> None:
    raises_at(script("--name=ok", directive), 3, option, value, allowed)


def test_bad_list_item_blames_its_own_line() -> None:
    # the bad value is on line 2; a good one of the same option follows on line 3
    raises_at(script("--output=../x", "--output=ok"), 2, "--output", "../x", r"no '\.\.'")
    raises_at(script("--env 1X=2", "--env OK=1"), 2, "--env", "1X=2", "env key '1X'")
    raises_at(script("--env SKYPORT_JOB=1", "--env A=1"), 2, "--env", "SKYPORT_JOB=1", "set by")


def test_layout_that_does_not_fit_blames_a_directive() -> None:
    text = script("--cpus-per-node=4", "--ranks-per-node=4 --threads-per-rank=2")
    e = raises_at(text, 3, "--ranks-per-node", "4", "4 x 2 exceeds cpus-per-node = 4")
    assert "line 3" in str(e)


def test_layout_that_does_not_fit_on_the_command_line() -> None:
    with pytest.raises(ValidationError, match=r"\(command line\).*exceeds cpus-per-node = 4"):
        build_spec(script("--cpus-per-node=4"), cli_directives([("ranks-per-node", "8")]))


def test_errors_from_later_lines_still_name_them() -> None:
    text = "#!/bin/bash\n\n# setup\n#SKYPORT --nodes=2\n\n#SKYPORT --time=never\nrun\n"
    raises_at(text, 6, "--time", "never", "HH:MM:SS")


# -- golden ---------------------------------------------------------------------

EXAMPLE = """\
#!/bin/bash
# A coupled climate run: 4 nodes x 8 ranks x 4 threads.
#SKYPORT --name=climate-2024 --nodes=4
#SKYPORT --cpus-per-node 32 --mem=120G --gpus-per-node=1
#SKYPORT --time=1-12:00
#SKYPORT --ranks-per-node=8 --threads-per-rank=4 --mpi=openmpi
#SKYPORT --gate=local --flavor=c32 --max-price=2.75
#SKYPORT --input=s3://data/forcing.nc --input https://example.org/grid.nc
#SKYPORT --output=out/history.nc --output=out/restart
#SKYPORT --env OMP_PLACES=cores --env "RUN_LABEL=test run"
#SKYPORT --priority=10
#SKYPORT--ignored=1
module load netcdf
#SKYPORT --nodes=99
srun ./climate
"""

EXPECTED = {
    "name": "climate-2024",
    "kind": "script",
    "script": EXAMPLE,
    "resources": {
        "nodes": 4,
        "cpus_per_node": 32,
        "mem_mb": 122880,
        "gpus_per_node": 1,
        "time_limit_s": 129600,
    },
    "layout": {"ranks_per_node": 8, "threads_per_rank": 4, "mpi": "openmpi"},
    "gate": "local",
    "flavor": "c32",
    "max_price_per_hour": 2.75,
    "prefer": "time",
    "deadline": None,
    "inputs": ["s3://data/forcing.nc", "https://example.org/grid.nc"],
    "outputs": ["out/history.nc", "out/restart"],
    "output_node": "all",
    "env": {"OMP_PLACES": "cores", "RUN_LABEL": "test run"},
    "priority": 10,
    "checkpoint_every_s": None,
    "max_restarts": None,
    "signal": None,
    "dependency": None,
    "array": None,
}


def test_golden_example_script() -> None:
    spec = build_spec(EXAMPLE)
    assert json.loads(spec.model_dump_json()) == EXPECTED


def test_read_directives_of_the_example() -> None:
    found = read_directives(EXAMPLE)
    assert found[0] == Directive(3, "name", "climate-2024")
    assert found[-1] == Directive(11, "priority", "10")
    assert {d.line for d in found} == set(range(3, 12))
