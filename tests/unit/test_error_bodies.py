"""Every SkyportError crosses REST whole: to_dict -> ErrorBody -> error_from_dict."""

from __future__ import annotations

from typing import Any

import pytest

from skyport import errors as e
from skyport.client.core import WaitTimeoutError
from skyport.protocol import ErrorBody


def _all_classes(cls: type[e.SkyportError]) -> set[type[e.SkyportError]]:
    out = {cls}
    for sub in cls.__subclasses__():
        out |= _all_classes(sub)
    return out


EXAMPLES: dict[type[e.SkyportError], e.SkyportError] = {
    e.SkyportError: e.SkyportError("it broke"),
    e.ValidationError: e.ValidationError("nodes", 0, "an integer >= 1"),
    e.ScriptError: e.ScriptError(3, "--time", "soon", "a duration such as 1h30m"),
    e.NotFoundError: e.NotFoundError("no job j1"),
    e.PermissionDeniedError: e.PermissionDeniedError("only an admin may"),
    e.AuthenticationError: e.AuthenticationError("no certificate"),
    e.ConflictError: e.ConflictError("job j1 is already SUCCEEDED"),
    e.PkiError: e.PkiError("no CA"),
    e.ConfigError: e.ConfigError("bad config"),
    e.ControlPlaneError: e.ControlPlaneError("not running"),
    e.GateError: e.GateError("create failed"),
    e.CapacityError: e.CapacityError("4 cpus asked, 2 free"),
    e.NeverFitsError: e.NeverFitsError("local", "nodes", 5, "at most 4"),
    e.UnsupportedFeatureError: e.UnsupportedFeatureError("cloud", "libcloud", "preempt",
                                                         "the provider sends no notices"),
    e.StorageError: e.StorageError("bucket gone"),
    e.JobFailedError: e.JobFailedError(
        "job j1 failed", job_id="j1", state="FAILED", exit_code=3, remote_type="KeyError",
        remote_message="'x'", remote_traceback="Traceback ...\nKeyError: 'x'\n"),
    WaitTimeoutError: WaitTimeoutError("job j1 is still RUNNING after waiting 5 s"),
}


def test_every_error_class_has_an_example() -> None:
    public = {c for c in _all_classes(e.SkyportError) if c.__module__ == "skyport.errors"}
    assert public <= set(EXAMPLES)


def _state(err: e.SkyportError) -> dict[str, Any]:
    return {k: v for k, v in vars(err).items()}


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_an_error_round_trips_with_every_field(cls: type[e.SkyportError]) -> None:
    err = EXAMPLES[cls]
    body = ErrorBody.model_validate(err.to_dict())  # what the REST answer carries
    back = e.error_from_dict(body.model_dump(exclude_none=True))
    assert type(back) is cls
    assert str(back) == str(err) and back.message == err.message
    assert _state(back) == _state(err)
    assert back.http_status == err.http_status


def test_a_value_json_cannot_carry_travels_as_its_repr() -> None:
    err = e.ValidationError("inputs", {1, 2}, "a list of URLs")
    back = e.error_from_dict(err.to_dict())
    assert isinstance(back, e.ValidationError)
    assert (back.field, back.value, back.allowed) == ("inputs", "{1, 2}", "a list of URLs")


def test_an_unknown_class_or_a_missing_field_degrades_gracefully() -> None:
    back = e.error_from_dict({"error": "NoSuchError", "message": "new server"})
    assert type(back) is e.SkyportError and back.message == "new server"
    old = e.error_from_dict({"error": "ValidationError", "message": "invalid x"})
    assert isinstance(old, e.ValidationError)
    assert (old.field, old.value, old.allowed) == ("", None, "")
