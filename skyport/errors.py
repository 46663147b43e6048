"""One exception tree for everything Sky Port raises on purpose.

    SkyportError
    ├── ValidationError        bad input: names the field, the value and what is allowed
    │   └── ScriptError        a bad ``#SKYPORT`` directive (also names the line)
    ├── NotFoundError          no such job / user / cluster (or not yours to see)
    ├── PermissionDeniedError  authenticated, but not allowed to do this
    ├── AuthenticationError    no valid certificate or token
    ├── ConflictError          the request is valid but the object's state forbids it
    ├── PkiError               certificate authority and certificate problems
    ├── ConfigError            the state directory or its config is missing or broken
    ├── ControlPlaneError      the control plane is not running or not reachable
    ├── GateError              a gate could not create, describe or delete a cluster
    │   ├── CapacityError      not enough capacity right now (retry later)
    │   ├── NeverFitsError     a request no flavor of the gate can ever hold
    │   └── UnsupportedFeatureError  a gate feature the gate lacks (with its reason)
    ├── StorageError           a storage URL could not be read or written
    └── JobFailedError         a function job raised; carries the remote error

The REST API maps each class to one HTTP status (``http_status``); the client
turns an error response back into the same class, so a CLI user and a Python
user see the same message.
"""

from __future__ import annotations

from typing import Any


class SkyportError(Exception):
    """Root of every error Sky Port raises on purpose."""

    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    # the attributes beyond ``message`` that travel with the error (its ErrorBody fields)
    _fields: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The error as its REST body (``skyport.protocol.ErrorBody``): every field kept."""
        body: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        for name in self._fields:
            body[name] = _jsonable(getattr(self, name, None))
        return body

    def __reduce__(self) -> tuple[Any, ...]:
        # subclasses take other constructor arguments: rebuild from the state
        # instead, so errors cross process boundaries (Ray actors) intact
        return (_restore, (type(self), self.message, dict(self.__dict__)))


def _restore(cls: type[SkyportError], message: str, state: dict[str, Any]) -> SkyportError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class ValidationError(SkyportError):
    http_status = 422
    _fields: tuple[str, ...] = ("field", "value", "allowed")

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {field}: {value!r} ({allowed})")


class ScriptError(ValidationError):
    _fields: tuple[str, ...] = ("line", "field", "value", "allowed")

    def __init__(self, line: int, field: str, value: Any, allowed: str) -> None:
        self.line = line
        super().__init__(field, value, allowed)
        self.message = f"line {line}: {self.message}"
        self.args = (self.message,)


class NotFoundError(SkyportError):
    http_status = 404


class PermissionDeniedError(SkyportError):
    http_status = 403


class AuthenticationError(SkyportError):
    http_status = 401


class ConflictError(SkyportError):
    http_status = 409


class PkiError(SkyportError):
    pass


class ConfigError(SkyportError):
    pass


class ControlPlaneError(SkyportError):
    http_status = 503


class GateError(SkyportError):
    http_status = 502


class CapacityError(GateError):
    http_status = 503


class NeverFitsError(GateError):
    """A cluster request no flavor of the gate can ever hold (not "full now")."""

    http_status = 422
    _fields = ("gate", "field", "value", "allowed")

    def __init__(self, gate: str, field: str, value: Any, allowed: str) -> None:
        self.gate = gate
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"gate {gate} can never hold this request: invalid {field}: "
                         f"{value!r} ({allowed})")


class UnsupportedFeatureError(GateError):
    """A gate asked for a feature it declares it does not have, with its reason."""

    http_status = 422
    _fields = ("gate", "type_name", "feature", "reason")

    def __init__(self, gate: str, type_name: str, feature: str, reason: str) -> None:
        self.gate = gate
        self.type_name = type_name
        self.feature = feature
        self.reason = reason
        super().__init__(f"gate {gate} ({type_name}) does not support {feature}: {reason}")


class StorageError(SkyportError):
    http_status = 502


class JobFailedError(SkyportError):
    """A job ended without a result: carries what the remote side reported."""

    _fields = ("job_id", "state", "exit_code", "remote_type", "remote_message",
               "remote_traceback")

    def __init__(
        self,
        message: str,
        *,
        job_id: str = "",
        state: str = "",
        exit_code: int | None = None,
        remote_type: str = "",
        remote_message: str = "",
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        self.exit_code = exit_code
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


_BY_NAME: dict[str, type[SkyportError]] = {}


def _register(cls: type[SkyportError]) -> None:
    _BY_NAME[cls.__name__] = cls
    for sub in cls.__subclasses__():
        _register(sub)


def error_from_dict(payload: dict[str, Any]) -> SkyportError:
    """Rebuild an error sent by the REST API: the same class, message and fields.

    The message is kept verbatim (not rebuilt from the fields), so the caller
    sees exactly what the server said; an unknown class name becomes a plain
    ``SkyportError``.
    """
    if not _BY_NAME:
        _register(SkyportError)
    cls = _BY_NAME.get(str(payload.get("error")), SkyportError)
    err = cls.__new__(cls)  # not __init__: the message is kept, not rebuilt from fields
    SkyportError.__init__(err, str(payload.get("message", "unknown error")))
    for name in cls._fields:
        setattr(err, name, payload.get(name, _DEFAULTS.get(name)))
    return err


# what a field is when an (older) server's body lacks it
_DEFAULTS: dict[str, Any] = {"job_id": "", "state": "", "remote_type": "", "remote_message": "",
                             "remote_traceback": "", "field": "", "allowed": ""}


def _jsonable(value: Any) -> Any:
    """``value`` if JSON carries it as it is, else its repr (a ValidationError's value
    may be any object; the message already shows it as repr)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v) for k, v in value.items()}
    return repr(value)
