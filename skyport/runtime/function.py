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

An argument that stands for another job's result (``skyport.runtime.upstream``)
is replaced by that job's value, staged beside the payload, before the call.

Every rank of a multi-rank job runs this under ``$SKYPORT_MPIEXEC`` with a
RESULT that ends in ``/``, a directory: each rank calls the function and
writes ``RESULT/skyport-result.<rank>.pkl``
(``skyport.runtime.contract`` names the files).  Rank 0 reads PAYLOAD and
broadcasts it, and the other ranks send their outcome back to rank 0, which
writes them too, so nothing relies on the nodes sharing a disk.  A rank whose
function raised writes its outcome, prints the traceback and aborts the
whole job (``MPI_Abort``), as ``python -m mpi4py`` does: its peers may be
waiting for it in a collective call and would otherwise hang until the time
limit.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import cloudpickle

from skyport.runtime.contract import RUNNER, rank_result_name
from skyport.runtime.upstream import read_upstream, resolve

USAGE = f"usage: python -m {RUNNER} PAYLOAD RESULT|RESULT_DIR/"


def run(payload_path: Path, result_path: Path) -> int:
    """Load the payload, call it, write the outcome; the exit status."""
    try:
        with open(payload_path, "rb") as f:
            fn, args, kwargs = cloudpickle.load(f)
        args, kwargs = resolve(args, kwargs, read_upstream(payload_path.parent))
        value = fn(*args, **kwargs)
        data = cloudpickle.dumps(("ok", value))
    except (Exception, SystemExit) as exc:  # everything the function can do to us
        return _write_error(result_path, exc)
    _write_atomically(result_path, data)
    return 0


def _write_error(result_path: Path, exc: BaseException) -> int:
    _write_atomically(result_path, _error_outcome(exc))
    return 1


def _error_outcome(exc: BaseException, prefix: str = "") -> bytes:
    text = "".join(traceback.format_exception(exc))
    sys.stderr.write(prefix + text)
    sys.stderr.flush()
    outcome: tuple[Any, ...] = ("error", _type_name(exc), str(exc), text)
    return cloudpickle.dumps(outcome)


def run_ranks(payload_path: Path, result_dir: Path) -> int:
    """This rank's part of a multi-rank function job (under MPI); the exit status."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    data: bytes | None = None
    if rank == 0:
        try:
            data = payload_path.read_bytes()
        except OSError as exc:
            print(f"skyport: rank 0 cannot read {payload_path}: {exc}", file=sys.stderr)
    data = world.bcast(data, root=0)
    staged: dict[str, bytes] = {}
    if rank == 0:  # other jobs' results this one was called with, beside the payload
        try:
            staged = read_upstream(payload_path.parent)
        except OSError as exc:
            print(f"skyport: rank 0 cannot read an upstream result: {exc}", file=sys.stderr)
    staged = world.bcast(staged, root=0)
    results = world.Dup()  # our own channel: no clash with the function's messages
    try:
        if data is None:
            raise FileNotFoundError(f"the payload {payload_path} could not be read on rank 0")
        fn, args, kwargs = cloudpickle.loads(data)
        args, kwargs = resolve(args, kwargs, staged)
        value = fn(*args, **kwargs)
        outcome = cloudpickle.dumps(("ok", value))
    except (Exception, SystemExit) as exc:
        outcome = _error_outcome(exc, prefix=f"skyport: rank {rank} of {size} raised:\n")
        _write_rank(result_dir, rank, outcome)
        sys.stdout.flush()
        world.Abort(1)  # its peers may wait for it forever otherwise
        return 1  # not reached
    _write_rank(result_dir, rank, outcome)
    if rank == 0:
        for other in range(1, size):
            _write_rank(result_dir, other, results.recv(source=other, tag=1))
    else:
        results.send(outcome, dest=0, tag=1)
    results.Free()
    return 0


def _write_rank(result_dir: Path, rank: int, outcome: bytes) -> None:
    try:
        result_dir.mkdir(parents=True, exist_ok=True)
        _write_atomically(result_dir / rank_result_name(rank), outcome)
    except OSError as exc:  # a node without the directory: rank 0 writes it anyway
        print(f"skyport: rank {rank}: cannot write its result here: {exc}", file=sys.stderr)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    if args[1].endswith("/"):
        return run_ranks(Path(args[0]), Path(args[1]))
    return run(Path(args[0]), Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
