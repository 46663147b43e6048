"""Run a function job's payload: ``python -m skyport.runtime.function PAYLOAD RESULT``.

PAYLOAD holds the cloudpickled ``(fn, args, kwargs)`` the ``@skyport.job``
decorator sent.  RESULT receives the cloudpickled outcome, one of::

    ("ok", value)
    ("error", type_name, message, traceback_text)

The exit status is 0 for ``ok`` and 1 for ``error`` (the traceback also goes
to stderr, so it lands in the job's log); 2 means the command line was wrong
and nothing was written.  A payload that cannot be loaded (say, a module the
function needs is missing on the node) and a return value that cannot be
pickled are reported as errors too, so the caller always learns why.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import cloudpickle

USAGE = "usage: python -m skyport.runtime.function PAYLOAD RESULT"


def run(payload_path: Path, result_path: Path) -> int:
    """Load the payload, call it, write the outcome; the exit status."""
    try:
        with open(payload_path, "rb") as f:
            fn, args, kwargs = cloudpickle.load(f)
        value = fn(*args, **kwargs)
        data = cloudpickle.dumps(("ok", value))
    except (Exception, SystemExit) as exc:  # everything the function can do to us
        return _write_error(result_path, exc)
    _write_atomically(result_path, data)
    return 0


def _write_error(result_path: Path, exc: BaseException) -> int:
    text = "".join(traceback.format_exception(exc))
    sys.stderr.write(text)
    sys.stderr.flush()
    outcome: tuple[Any, ...] = ("error", _type_name(exc), str(exc), text)
    _write_atomically(result_path, cloudpickle.dumps(outcome))
    return 1


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    return run(Path(args[0]), Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
