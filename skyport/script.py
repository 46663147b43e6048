"""Job scripts: ``#SKYPORT`` directives, sbatch style.

Directives are read from the top of the script, up to the first line that is
neither blank nor a comment (as sbatch does).  Command-line options given to
``skyport submit`` override them.  Every error names the line, the option,
the value and what is allowed.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from skyport.errors import ScriptError, ValidationError
from skyport.models import MPI_IMPLEMENTATIONS, JobSpec, check_env_key, check_relative_path
from skyport.units import DURATION_FORMS, MEM_FORMS, parse_duration_s, parse_mem_mb

DIRECTIVE = "#SKYPORT"
CLI_LINE = 0  # "line" of options that came from the command line


@dataclass(frozen=True)
class Option:
    name: str
    target: str  # dotted path into the spec dict
    parse: str  # int | str | duration | mem | env | float | mpi | path
    repeatable: bool = False
    help: str = ""


OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option("name", "name", "str", help="job name"),
        Option("nodes", "resources.nodes", "int", help="number of nodes"),
        Option("cpus-per-node", "resources.cpus_per_node", "int", help="cores per node"),
        Option("mem", "resources.mem_mb", "mem", help="memory per node"),
        Option("gpus-per-node", "resources.gpus_per_node", "int", help="GPUs per node"),
        Option("time", "resources.time_limit_s", "duration", help="time limit"),
        Option("ranks-per-node", "layout.ranks_per_node", "int", help="MPI ranks per node"),
        Option("threads-per-rank", "layout.threads_per_rank", "int", help="OpenMP threads/rank"),
        Option("mpi", "layout.mpi", "mpi", help="MPI implementation"),
        Option("gate", "gate", "str", help="gate to run on"),
        Option("flavor", "flavor", "str", help="node flavor"),
        Option("max-price", "max_price_per_hour", "float", help="max price per hour"),
        Option("input", "inputs", "str", repeatable=True, help="input URL (repeatable)"),
        Option("output", "outputs", "path", repeatable=True, help="output path (repeatable)"),
        Option("env", "env", "env", repeatable=True, help="KEY=VALUE (repeatable)"),
        Option("priority", "priority", "int", help="priority, -1000..1000"),
        Option("checkpoint-every", "checkpoint_every_s", "duration",
               help="copy $SKYPORT_CHECKPOINT_DIR to storage this often"),
        Option("max-restarts", "max_restarts", "int", help="restarts after a lost node"),
        Option("signal", "signal", "str", help="SIG[@seconds] before the time limit"),
    )
}

_ALLOWED_PARSE = {
    "int": "a whole number",
    "float": "a number",
    "str": "a non-empty string",
    "duration": DURATION_FORMS,
    "mem": MEM_FORMS,
    "env": "KEY=VALUE",
    "path": "a relative path inside the job directory (no leading '/', no '..', no empty parts)",
    "mpi": "one of " + ", ".join(MPI_IMPLEMENTATIONS),
}


@dataclass(frozen=True)
class Directive:
    line: int
    option: str
    value: str


def read_directives(text: str) -> list[Directive]:
    """The ``#SKYPORT`` options at the top of a script, in order."""
    found: list[Directive] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if lineno == 1 and line.startswith("#!"):
            continue
        if not line:
            continue
        if not line.startswith("#"):
            break
        if not line.startswith(DIRECTIVE):
            continue
        rest = line[len(DIRECTIVE) :]
        if rest and not rest[0].isspace():
            continue  # e.g. "#SKYPORTX": not ours
        try:
            words = shlex.split(rest, comments=False)
        except ValueError as exc:
            raise ScriptError(
                lineno, "directive", rest.strip(), f"shell-style words ({exc})"
            ) from exc
        found.extend(_split_options(words, lineno))
    return found


def _split_options(words: Sequence[str], lineno: int) -> Iterable[Directive]:
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise ScriptError(lineno, "option", word, "options of the form --name=value")
        name, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise ScriptError(lineno, f"--{name}", None, "a value (--name=value)")
            value = words[i + 1]
            i += 1
        if name not in OPTIONS:
            raise ScriptError(
                lineno,
                "option",
                f"--{name}",
                "known options: " + ", ".join(f"--{n}" for n in OPTIONS),
            )
        yield Directive(lineno, name, value)
        i += 1


def _convert(d: Directive) -> Any:
    opt = OPTIONS[d.option]
    try:
        if opt.parse == "int":
            return int(d.value)
        if opt.parse == "float":
            return float(d.value)
        if opt.parse == "duration":
            return parse_duration_s(d.value)
        if opt.parse == "mem":
            return parse_mem_mb(d.value)
        if opt.parse == "env":
            key, eq, val = d.value.partition("=")
            if not eq or not key:
                raise ValueError(d.value)
            try:
                # checked here, not only in JobSpec, so the error names this line
                check_env_key(key)
            except ValueError as exc:
                raise _error(d, str(exc)) from exc
            return (key, val)
        if opt.parse == "mpi":
            if d.value not in MPI_IMPLEMENTATIONS:
                raise ValueError(d.value)
            return d.value
        if opt.parse == "path":
            return check_relative_path(d.value, "output")
        if not d.value:
            raise ValueError(d.value)
        return d.value
    except ValueError as exc:
        raise _error(d, _ALLOWED_PARSE[opt.parse]) from exc


def _error(d: Directive, allowed: str) -> ValidationError:
    if d.line == CLI_LINE:
        return ValidationError(f"--{d.option} (command line)", d.value, allowed)
    return ScriptError(d.line, f"--{d.option}", d.value, allowed)


def build_spec(
    script: str | None,
    overrides: Sequence[Directive] = (),
    *,
    base: dict[str, Any] | None = None,
    base_dir: Path | None = None,
) -> JobSpec:
    """A validated ``JobSpec`` from a script's directives, then command-line overrides.

    ``base_dir`` is where the script lives: an ``--input`` that is a plain path
    (no ``scheme://``) is taken relative to it, as sbatch takes paths relative
    to the submit directory, and becomes a ``file://`` URL.
    """
    directives = (read_directives(script) if script else []) + list(overrides)
    data: dict[str, Any] = copy.deepcopy(base or {})  # the caller's dict stays as it was
    if script is not None:
        data["script"] = script
    origin: dict[str, Directive] = {}
    scalar_seen: set[str] = set()
    repeat_cleared: set[str] = set()
    cli_repeatables = {d.option for d in overrides if OPTIONS[d.option].repeatable}
    for d in directives:
        opt = OPTIONS[d.option]
        value = _convert(d)
        if opt.repeatable:
            # command-line values replace the script's list instead of adding to it
            if d.option in cli_repeatables and d.line != CLI_LINE:
                continue
            if d.option not in repeat_cleared:
                repeat_cleared.add(d.option)
                _set(data, opt.target, {} if opt.parse == "env" else [])
            current = _get(data, opt.target)
            if opt.parse == "env":
                current[value[0]] = value[1]
            else:
                if d.option == "input" and base_dir is not None and "://" not in value:
                    value = (base_dir / value).resolve().as_uri()
                current.append(value)
        else:
            scalar_seen.add(d.option)
            _set(data, opt.target, value)
        origin[opt.target.split(".")[-1]] = d
    return validate_spec(data, origin)


def validate_spec(data: dict[str, Any], origin: dict[str, Directive] | None = None) -> JobSpec:
    """Validate a spec dict; errors name the directive that set the bad field, if any."""
    try:
        return JobSpec.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        leaf = loc[-1] if loc else "spec"
        msg = first["msg"].removeprefix("Value error, ")
        origin = origin or {}
        if not loc:
            # a rule across fields: blame the first directive that set one of them
            for key in ("ranks_per_node", "threads_per_rank", "cpus_per_node", "script"):
                if key in origin:
                    raise _error(origin[key], msg) from exc
            raise ValidationError("job", None, msg) from exc
        d = origin.get(leaf)
        if d is not None:
            raise _error(d, msg) from exc
        raise ValidationError(".".join(loc), first.get("input"), msg) from exc


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def _get(data: dict[str, Any], dotted: str) -> Any:
    for p in dotted.split("."):
        data = data[p]
    return data


def cli_directives(pairs: Iterable[tuple[str, str]]) -> list[Directive]:
    """Command-line options (name without dashes, value) as overrides."""
    out = []
    for name, value in pairs:
        if name not in OPTIONS:
            raise ValidationError("option", f"--{name}", "known options: " + ", ".join(OPTIONS))
        out.append(Directive(CLI_LINE, name, value))
    return out
