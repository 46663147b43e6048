"""``--array``: Slurm's syntax, its errors at every door, the tasks' environment."""

from __future__ import annotations

import pytest

import skyport
from skyport.arrays import (
    MAX_ARRAY_SIZE,
    ArraySyntaxError,
    array_env,
    parse_array,
    split_task_id,
    task_id,
)
from skyport.errors import ScriptError, ValidationError
from skyport.models import JobSpec
from skyport.script import build_spec


@pytest.mark.parametrize(("text", "indices", "throttle"), [
    ("0-9999", tuple(range(10000)), None),
    ("1,3,5-7", (1, 3, 5, 6, 7), None),
    ("0-99:2", tuple(range(0, 100, 2)), None),
    ("0-5%2", tuple(range(6)), 2),
    ("7", (7,), None),
    ("0-10:5%1", (0, 5, 10), 1),
    (" 3-4 , 9 ", (3, 4, 9), None),
    (f"0-{MAX_ARRAY_SIZE - 1}", tuple(range(MAX_ARRAY_SIZE)), None),
])
def test_slurm_syntax(text: str, indices: tuple[int, ...], throttle: int | None) -> None:
    spec = parse_array(text)
    assert (spec.indices, spec.throttle, spec.count) == (indices, throttle, len(indices))


@pytest.mark.parametrize(("text", "says"), [
    ("", "empty"),
    ("a-b", "is not N, N-M or N-M:STEP"),
    ("1,,2", "is not N, N-M or N-M:STEP"),
    ("1-", "is not N, N-M or N-M:STEP"),
    ("-1", "is not N, N-M or N-M:STEP"),
    ("0-9:0", "step 0"),
    ("0-9%0", "limit %0"),
    ("0-9%", "not a whole number"),
    ("0-9%-1", "not a whole number"),
    ("0-9%2%3", "not a whole number"),
    ("9-0", "descends"),
    ("1,1", "index 1 appears twice"),
    ("0-5,3-8", "index 3 appears twice"),
    (f"0-{MAX_ARRAY_SIZE}", f"at most {MAX_ARRAY_SIZE} tasks"),
    ("99999999999", "is not N"),
    ("0-99999," * 1000, "appears twice"),  # stops at the first repeat, however long
])
def test_bad_syntax_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ArraySyntaxError, match=says.replace("%", "%")):
        parse_array(text)


def test_task_ids_are_slurm_like_and_only_those_parse() -> None:
    assert task_id("0123abcd", 42) == "0123abcd_42"
    assert split_task_id("0123abcd_42") == ("0123abcd", 42)
    for other in ("0123abcd", "0123abcd_", "0123abcd_x", "../../etc_1", "0123abcd_1_2",
                  "0123ABCD_1"):
        assert split_task_id(other) is None


def test_the_tasks_environment() -> None:
    env = array_env("0123abcd_4", "0-8:2%2")
    assert env == {"SKYPORT_ARRAY_JOB_ID": "0123abcd", "SKYPORT_ARRAY_TASK_ID": "4",
                   "SKYPORT_ARRAY_TASK_COUNT": "5", "SKYPORT_ARRAY_TASK_MIN": "0",
                   "SKYPORT_ARRAY_TASK_MAX": "8", "SKYPORT_ARRAY_TASK_STEP": "2"}
    assert array_env("0123abcd", None) == {}  # a plain job has none
    assert array_env("0123abcd_1", "1,3,4")["SKYPORT_ARRAY_TASK_STEP"] == "1"


def test_a_directive_and_the_spec() -> None:
    spec = build_spec("#!/bin/bash\n#SKYPORT --array=0-99:2%4\nrun\n")
    assert spec.array == "0-99:2%4"
    assert JobSpec(script="x", array=" 1, 3 ").array == "1,3"  # stored without blanks


@pytest.mark.parametrize(("text", "says"), [("0-9%0", "limit %0"), ("5-1", "descends"),
                                            ("0-9:0", "step 0"), ("x", "is not N")])
def test_a_bad_directive_names_line_option_value_and_rule(text: str, says: str) -> None:
    with pytest.raises(ScriptError) as info:
        build_spec(f"#!/bin/bash\n#SKYPORT --array={text}\nrun\n")
    assert (info.value.field, info.value.line, info.value.value) == ("--array", 2, text)
    assert says in info.value.allowed


def test_the_spec_refuses_a_bad_array_itself() -> None:
    with pytest.raises(ValueError, match="descends"):
        JobSpec(script="x", array="3-1")


def test_the_decorator_takes_no_array_argument_map_does() -> None:
    with pytest.raises(ValidationError) as info:
        skyport.job(array="0-3")
    assert info.value.field == "argument" and info.value.value == "array"
