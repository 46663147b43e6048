"""The sweep command refuses bad input with a one-line error and status 2, before replaying."""

from __future__ import annotations

import pytest

from benchmarks.timetable.sweep import main


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["sky", "not json"], "knobs"),
        (["sky", "[1, 2]"], "not a JSON object"),
        (["sky", '{"max_wait_s": -1}'], "max_wait_s"),
        (["sky", '{"no_such_knob": 1}'], "no_such_knob"),
        (["no-such-policy"], "no-such-policy"),
        (["sky", "{}", "KTH,XX"], "'XX'"),
        (["sky", "{}", "L1:windows"], "'L1:windows'"),
    ],
)
def test_bad_input_is_refused_naming_what_is_wrong(
    argv: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and names in err
