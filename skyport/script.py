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

from skyport.errors import ScriptError, ValidationError
from skyport.models import JobSpec
from skyport.options import OPTIONS, Blame, Option, parse_text, set_target, validate_spec

__all__ = [
    "CLI_LINE",
    "DIRECTIVE",
    "OPTIONS",
    "Directive",
    "Option",
    "build_spec",
    "cli_directives",
    "read_directives",
    "validate_spec",
]

DIRECTIVE = "#SKYPORT"
CLI_LINE = 0  # "line" of options that came from the command line


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


def _convert(d: Directive, base_dir: Path | None = None) -> Any:
    """The directive's value for the spec (the table's parser); errors name its line."""
    try:
        return parse_text(OPTIONS[d.option], d.value, _blame(d).field, base_dir)
    except ValidationError as exc:
        raise _blame(d).error(exc.allowed) from None


def _blame(d: Directive) -> Blame:
    if d.line == CLI_LINE:
        return Blame(f"--{d.option} (command line)", d.value)
    return Blame(f"--{d.option}", d.value, d.line)


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
    origin: dict[str, Blame] = {}
    repeat_cleared: set[str] = set()
    cli_repeatables = {d.option for d in overrides if OPTIONS[d.option].repeatable}
    for d in directives:
        opt = OPTIONS[d.option]
        value = _convert(d, base_dir)
        if opt.repeatable:
            # command-line values replace the script's list instead of adding to it
            if d.option in cli_repeatables and d.line != CLI_LINE:
                continue
            if d.option not in repeat_cleared:
                repeat_cleared.add(d.option)
                set_target(data, opt, {} if opt.kind == "env" else [])
            current = _get(data, opt.target)
            if opt.kind == "env":
                current[value[0]] = value[1]
            else:
                current.append(value)
        else:
            set_target(data, opt, value)
        origin[opt.field] = _blame(d)
    return validate_spec(data, origin)


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
