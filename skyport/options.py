"""One option table: every job option, at every door, with one parser.

A job's options reach Sky Port through three doors:

- ``#SKYPORT --cpus-per-node=4`` in a job script (``skyport.script``);
- ``skyport submit --cpus-per-node 4`` (``skyport.cli.jobs``, one click option per row);
- ``@skyport.job(cpus_per_node=4)`` (``skyport.decorator``, one keyword argument per row).

Each row of ``OPTIONS`` names the directive, the Python argument (and the
decorator's older spellings of it), the ``JobSpec`` field it sets and its
parse kind.  A value written as text (a directive, a command-line option, or a
``str`` given to the decorator) goes through ``parse_text``; the decorator's
other Python values (``time=600``, ``mem=2048``, ``env={...}``,
``inputs=[...]``) through ``parse_value``, which hands every piece of text to
``parse_text`` again.  A bad value raises the same ``ValidationError`` at
every door: the option as that door spells it, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic

from skyport.arrays import ARRAY_ALLOWED, ArraySyntaxError, parse_array
from skyport.dependencies import ALLOWED as DEPENDENCY_ALLOWED
from skyport.dependencies import format_conditions, parse_dependency
from skyport.errors import ScriptError, ValidationError
from skyport.models import MPI_IMPLEMENTATIONS, JobSpec, check_env_key, check_relative_path
from skyport.units import (
    DEADLINE_FORMS,
    DURATION_FORMS,
    MEM_FORMS,
    parse_deadline,
    parse_duration_s,
    parse_mem_mb,
)

Kind = Literal["int", "float", "str", "duration", "mem", "env", "path", "url", "mpi", "signal",
               "dependency", "array", "prefer", "deadline"]


@dataclass(frozen=True)
class Option:
    """One job option, as each door spells it, and where its value goes."""

    directive: str  # ``#SKYPORT --cpus-per-node`` and ``skyport submit --cpus-per-node``
    argument: str  # ``@skyport.job(cpus_per_node=...)``
    target: str  # dotted path into the ``JobSpec``
    kind: Kind
    help: str
    repeatable: bool = False
    aliases: tuple[str, ...] = ()  # older decorator spellings that still work
    python: bool = True  # a keyword of ``@skyport.job`` (arrays there are ``fn.map``)

    @property
    def field(self) -> str:
        """The ``JobSpec`` field's own name (the last part of ``target``)."""
        return self.target.rsplit(".", 1)[-1]


OPTIONS: dict[str, Option] = {
    o.directive: o
    for o in (
        Option("name", "name", "name", "str", "job name"),
        Option("nodes", "nodes", "resources.nodes", "int", "number of nodes"),
        Option("cpus-per-node", "cpus_per_node", "resources.cpus_per_node", "int",
               "cores per node", aliases=("cpus",)),
        Option("mem", "mem", "resources.mem_mb", "mem", "memory per node"),
        Option("gpus-per-node", "gpus_per_node", "resources.gpus_per_node", "int",
               "GPUs per node", aliases=("gpus",)),
        Option("time", "time", "resources.time_limit_s", "duration", "time limit"),
        Option("ranks-per-node", "ranks_per_node", "layout.ranks_per_node", "int",
               "MPI ranks per node"),
        Option("threads-per-rank", "threads_per_rank", "layout.threads_per_rank", "int",
               "OpenMP threads/rank"),
        Option("mpi", "mpi", "layout.mpi", "mpi", "MPI implementation"),
        Option("gate", "gate", "gate", "str", "gate to run on"),
        Option("flavor", "flavor", "flavor", "str", "node flavor"),
        Option("max-price", "max_price", "max_price_per_hour", "float",
               "highest price per node-hour (the gates' price list, e.g. 0.50)"),
        Option("prefer", "prefer", "prefer", "prefer",
               "time (default): earliest start; cost: cheapest gate meeting --deadline"),
        Option("deadline", "deadline", "deadline", "deadline",
               "end by then: 2026-12-24T18:00 (local) or +6h from submission"),
        Option("input", "inputs", "inputs", "url", "input URL (repeatable)", repeatable=True),
        Option("output", "outputs", "outputs", "path",
               "output: a file, a directory (dir/) or a glob (repeatable)", repeatable=True),
        Option("output-node", "output_node", "output_node", "str",
               "outputs from 'all' nodes (node k's under nodes/<k>/; default) or node '0'"),
        Option("env", "env", "env", "env", "KEY=VALUE (repeatable)", repeatable=True),
        Option("priority", "priority", "priority", "int", "priority, -1000..1000"),
        Option("checkpoint-every", "checkpoint_every", "checkpoint_every_s", "duration",
               "copy $SKYPORT_CHECKPOINT_DIR to storage this often"),
        Option("max-restarts", "max_restarts", "max_restarts", "int",
               "restarts after a lost node"),
        Option("signal", "signal", "signal", "signal", "SIG[@seconds] before the time limit"),
        Option("dependency", "dependency", "dependency", "dependency",
               "wait for other jobs: afterok|afternotok|afterany|after:ID[:ID...], "
               "singleton; ','-joined"),
        Option("array", "array", "array", "array",
               "a job array: 0-9999, 1,3,5-7, 0-99:2; %N runs at most N at once",
               python=False),
    )
}

ARGUMENTS: dict[str, Option] = {
    name: o for o in OPTIONS.values() if o.python for name in (o.argument, *o.aliases)
}
"""Every keyword ``@skyport.job`` takes for a job option (aliases included)."""

TEXT_ALLOWED: dict[Kind, str] = {
    "int": "a whole number",
    "float": "a number",
    "str": "a non-empty string",
    "duration": DURATION_FORMS,
    "mem": MEM_FORMS,
    "env": "KEY=VALUE",
    "path": "a relative path inside the job directory (no leading '/', no '..', no empty parts)",
    "url": "a URL, or a path to a file here",
    "mpi": "one of " + ", ".join(MPI_IMPLEMENTATIONS),
    "signal": "SIG[@seconds], e.g. SIGUSR1@60",
    "dependency": DEPENDENCY_ALLOWED,
    "array": ARRAY_ALLOWED,
    "prefer": "time or cost",
    "deadline": DEADLINE_FORMS,
}
"""What a value written as text may be, per kind."""

PYTHON_ALLOWED: dict[Kind, str] = {
    "int": "a whole number (int)",
    "float": "a number (int or float)",
    "str": "a non-empty string",
    "duration": "seconds as a whole number (at least 1 second), or " + DURATION_FORMS,
    "mem": "MB as a whole number (at least 1), or " + MEM_FORMS,
    "env": "a mapping of KEY to VALUE strings",
    "path": "a list of relative paths inside the job directory",
    "url": "a list of URLs, or paths to files here",
    "mpi": TEXT_ALLOWED["mpi"],
    "signal": TEXT_ALLOWED["signal"],
    "dependency": DEPENDENCY_ALLOWED,
    "array": ARRAY_ALLOWED,
    "prefer": TEXT_ALLOWED["prefer"],
    "deadline": DEADLINE_FORMS,
}
"""What the decorator takes, per kind."""

PYTHON_TYPES: dict[Kind, str] = {
    "int": "int",
    "float": "float",
    "str": "str",
    "duration": "str | int",
    "mem": "str | int",
    "env": "Mapping[str, str]",
    "path": "Sequence[str]",
    "url": "Sequence[str]",
    "mpi": "str",
    "signal": "str",
    "dependency": "str",
    "array": "str",
    "prefer": "str",
    "deadline": "str",
}
"""The decorator's annotation of each kind (its generated signature shows these)."""


def parse_text(opt: Option, text: str, field: str, base_dir: Path | None = None) -> Any:
    """One value written as text, converted for the spec; errors name ``field``.

    ``base_dir`` is where a plain-path ``input`` is relative to (it becomes a
    ``file://`` URL); without one the path is kept as written.  An ``env``
    value comes back as a ``(key, value)`` pair.
    """
    try:
        return _PARSERS[opt.kind](text, base_dir)
    except _Bad as bad:
        raise ValidationError(field, text, bad.allowed or TEXT_ALLOWED[opt.kind]) from None
    except ValueError as exc:
        raise ValidationError(field, text, TEXT_ALLOWED[opt.kind]) from exc


def parse_value(opt: Option, value: Any, field: str, base_dir: Path | None = None) -> Any:
    """A decorator argument, converted for the spec; errors name ``field``.

    Text goes through ``parse_text``; numbers, mappings and lists are checked
    here.  A repeatable option returns the whole list (``env``: the dict).
    """
    allowed = PYTHON_ALLOWED[opt.kind]
    if opt.repeatable:
        if opt.kind == "env":
            if not isinstance(value, Mapping):
                raise ValidationError(field, value, allowed)
            env: dict[str, str] = {}
            for key, val in value.items():
                if not isinstance(key, str) or not isinstance(val, str):
                    raise ValidationError(field, {key: val}, allowed)
                k, v = parse_text(opt, f"{key}={val}", field)
                env[k] = v
            return env
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, Sequence) or not all(isinstance(i, str) for i in items):
            raise ValidationError(field, value, allowed)
        return [parse_text(opt, item, field, base_dir) for item in items]
    if isinstance(value, bool):  # an int to Python, never a count or a size to a user
        raise ValidationError(field, value, allowed)
    if isinstance(value, str) and opt.kind not in ("int", "float"):
        return parse_text(opt, value, field, base_dir)
    if opt.kind == "int" and isinstance(value, int):
        return value  # its range is the spec's, whose error names this argument too
    if opt.kind == "float" and isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if opt.kind in ("duration", "mem") and isinstance(value, int) and value >= 1:
        return value
    raise ValidationError(field, value, allowed)


class _Bad(ValueError):
    """A text parser's refusal with its own account of what is allowed."""

    def __init__(self, allowed: str = "") -> None:
        super().__init__(allowed)
        self.allowed = allowed


def _int(text: str, base_dir: Path | None) -> int:
    return int(text)


def _float(text: str, base_dir: Path | None) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _str(text: str, base_dir: Path | None) -> str:
    if not text:
        raise ValueError(text)
    return text


def _duration(text: str, base_dir: Path | None) -> int:
    return parse_duration_s(text)


def _mem(text: str, base_dir: Path | None) -> int:
    return parse_mem_mb(text)


def _env(text: str, base_dir: Path | None) -> tuple[str, str]:
    key, eq, val = text.partition("=")
    if not eq or not key:
        raise ValueError(text)
    try:
        check_env_key(key)  # here, not only in JobSpec, so the error names this option
    except ValueError as exc:
        raise _Bad(str(exc)) from exc
    return key, val


def _path(text: str, base_dir: Path | None) -> str:
    check_relative_path(text.removesuffix("/"), "output")  # "results/": a whole directory
    return text


def _url(text: str, base_dir: Path | None) -> str:
    if not text or any(c in text for c in "\n\r\0"):
        raise ValueError(text)
    return input_url(text, base_dir) if base_dir is not None else text


def _mpi(text: str, base_dir: Path | None) -> str:
    if text not in MPI_IMPLEMENTATIONS:
        raise ValueError(text)
    return text


def _signal(text: str, base_dir: Path | None) -> str:
    from skyport.checkpoint import parse_signal  # the parser the spec and the agent use

    try:
        name, before_s = parse_signal(text)
    except ValueError as exc:
        raise _Bad(str(exc)) from exc
    return f"{name}@{before_s}"


def _dependency(text: str, base_dir: Path | None) -> str:
    try:
        return format_conditions(parse_dependency(text))
    except ValueError as exc:
        raise _Bad(str(exc)) from exc


def _array(text: str, base_dir: Path | None) -> str:
    try:
        parse_array(text)
    except ArraySyntaxError as exc:
        raise _Bad(str(exc)) from exc
    return "".join(text.split())


def _prefer(text: str, base_dir: Path | None) -> str:
    if text not in ("time", "cost"):
        raise ValueError(text)
    return text


def _deadline(text: str, base_dir: Path | None) -> str:
    return parse_deadline(text)


_PARSERS = {
    "int": _int,
    "float": _float,
    "str": _str,
    "duration": _duration,
    "mem": _mem,
    "env": _env,
    "path": _path,
    "url": _url,
    "mpi": _mpi,
    "signal": _signal,
    "dependency": _dependency,
    "array": _array,
    "prefer": _prefer,
    "deadline": _deadline,
}


def input_url(value: str, base_dir: Path) -> str:
    """An input as the spec stores it: a plain path, relative to ``base_dir``, as ``file://``."""
    return value if "://" in value else (base_dir / value).resolve().as_uri()


# -- the spec --------------------------------------------------------------------


def set_target(data: dict[str, Any], opt: Option, value: Any) -> None:
    """Put a converted value at the option's place in a spec dict."""
    *parents, leaf = opt.target.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def get_target(data: Mapping[str, Any], opt: Option) -> Any:
    """The value at the option's place in a spec dict (``model_dump()``), or None."""
    node: Any = data
    for p in opt.target.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


@dataclass(frozen=True)
class Blame:
    """Who set a spec field: an error about the field names this option and value."""

    field: str  # the option as its door spells it: ``--nodes``, ``cpus``
    value: Any
    line: int | None = None  # a script's line; None for the command line and Python

    def error(self, allowed: str) -> ValidationError:
        if self.line is None:
            return ValidationError(self.field, self.value, allowed)
        return ScriptError(self.line, self.field, self.value, allowed)


# the fields a rule across fields (the layout must fit the node) is blamed on, in order
_ACROSS = ("ranks_per_node", "threads_per_rank", "cpus_per_node", "script")


def validate_spec(
    data: dict[str, Any], origin: Mapping[str, Blame] | None = None, across: Blame | None = None
) -> JobSpec:
    """Validate a spec dict; an error names the option that set the bad field.

    ``origin`` maps spec field names to who set them; ``across`` is blamed for
    a rule across fields (else the first of ``_ACROSS`` that was set).
    """
    try:
        return JobSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        msg = first["msg"].removeprefix("Value error, ")
        origin = origin or {}
        if not loc:
            blame = across or next((origin[k] for k in _ACROSS if k in origin), None)
            if blame is not None:
                raise blame.error(msg) from exc
            raise ValidationError("job", None, msg) from exc
        blame = next((origin[p] for p in reversed(loc) if p in origin), None)
        if blame is not None:
            raise blame.error(msg) from exc
        raise ValidationError(".".join(loc), first.get("input"), msg) from exc


def unknown_argument(name: str, known: Iterable[str]) -> ValidationError:
    """The error for a keyword the decorator does not know, listing those it does."""
    return ValidationError("argument", name, "one of: " + ", ".join(known))
