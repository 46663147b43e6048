"""What a hub user may choose for a notebook server, and the form that offers it.

``server_spec`` turns ``user_options`` (the form's or the REST API's) into a
``JobSpec`` through Sky Port's own option table (``skyport.options``), so a
refusal is Sky Port's one line naming the field, the value and what is allowed.
``options_form_html`` builds the spawn page's form from live gates and flavors,
with each flavor's price per hour and how soon it can start.
"""

from __future__ import annotations

import html
import re
import shlex
from collections.abc import Mapping
from typing import Any

from skyport.errors import ValidationError
from skyport.models import JobSpec, JobState
from skyport.protocol import GateView, TimetableView
from skyport.script import build_spec, cli_directives

__all__ = ["USER_OPTIONS", "form_to_options", "options_form_html", "server_script",
           "server_spec"]

# user option -> Sky Port option (``skyport submit --X``)
USER_OPTIONS = {
    "gate": "gate",
    "flavor": "flavor",
    "nodes": "nodes",
    "cpus": "cpus-per-node",
    "memory": "mem",
    "gpus": "gpus-per-node",
    "time": "time",
    "max_price": "max-price",
}
_VALUE = re.compile(r"^[A-Za-z0-9._:/+-]{1,64}$")
_FORM_NAMES = set(USER_OPTIONS) | {"choice"}


def server_script(argv: list[str]) -> str:
    """The job's script: the node launcher (``skyport.jupyter.node``) and the server command.

    No secret in it: the hub's environment reaches the node through the agent.
    """
    command = " ".join(shlex.quote(a) for a in argv)
    return ("#!/bin/bash\n# a Jupyter single-user server (skyport.jupyter); bound to "
            "127.0.0.1, reached through the relay\n"
            f'exec "$SKYPORT_PYTHON" -m skyport.jupyter.node -- {command}\n')


def server_spec(user_options: Mapping[str, Any] | None, *, name: str, argv: list[str],
                defaults: Mapping[str, Any] | None = None) -> JobSpec:
    """The notebook job's spec for ``user_options``; ``ValidationError`` if any is bad."""
    options = {**(defaults or {}), **dict(user_options or {})}
    unknown = sorted(set(options) - set(USER_OPTIONS))
    if unknown:
        raise ValidationError("user_options", unknown[0],
                              "options: " + ", ".join(USER_OPTIONS))
    pairs: list[tuple[str, str]] = [("name", name)]
    for key, value in options.items():
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValidationError(key, repr(value)[:80], "a string or a number")
        text = str(value)
        if not _VALUE.match(text):  # no spaces, newlines or quotes: a value, never more
            raise ValidationError(key, text[:80], "1-64 of A-Z a-z 0-9 . _ : / + -")
        pairs.append((USER_OPTIONS[key], text))
    return build_spec(server_script(argv), cli_directives(pairs))


def form_to_options(formdata: Mapping[str, list[str]]) -> dict[str, str]:
    """The spawn form's fields (lists of strings) as ``user_options``."""
    out: dict[str, str] = {}
    for key, values in formdata.items():
        if key not in _FORM_NAMES or not values or not str(values[0]).strip():
            continue
        value = str(values[0]).strip()
        if key == "choice":  # "gate/flavor" from the one select of the form
            gate, _, flavor = value.partition("/")
            out["gate"], out["flavor"] = gate, flavor
        else:
            out[key] = value
    return out


def _queued_ahead(timetable: TimetableView | None, gate: str) -> int:
    if timetable is None:
        return 0
    return sum(1 for e in timetable.entries
               if e.gate == gate and e.state in (JobState.QUEUED, JobState.SCHEDULED))


def options_form_html(gates: list[GateView], timetable: TimetableView | None = None) -> str:
    """The spawn page's form: gate and flavor with price and start estimate, then resources."""
    rows = []
    for gate in gates:
        if not gate.healthy:
            continue
        ahead = _queued_ahead(timetable, gate.name)
        for f in gate.flavors:
            label = (f"{gate.name} / {f.name}: {f.cpus} CPUs, {f.mem_mb // 1024} GiB"
                     + (f", {f.gpus} GPU" if f.gpus else "")
                     + f" - ${f.price_per_hour:.2f}/h, ready in ~{f.boot_s:.0f} s"
                     + (f" after {ahead} queued job(s)" if ahead else ""))
            rows.append(f'<option value="{html.escape(gate.name)}/{html.escape(f.name)}">'
                        f"{html.escape(label)}</option>")
    if not rows:
        rows.append('<option value="">(no healthy gate right now)</option>')

    def field(name: str, label: str, kind: str, value: str, extra: str = "") -> str:
        return (f'<label for="sp-{name}">{label}</label>'
                f'<input class="form-control" id="sp-{name}" name="{name}" type="{kind}" '
                f'value="{value}" {extra}/>')

    return "\n".join([
        '<label for="sp-choice">Gate and flavor</label>',
        f'<select class="form-control" id="sp-choice" name="choice">{"".join(rows)}</select>',
        field("nodes", "Nodes", "number", "1", 'min="1"'),
        field("cpus", "CPUs per node", "number", "1", 'min="1"'),
        field("memory", "Memory per node (e.g. 4G)", "text", ""),
        field("gpus", "GPUs per node", "number", "0", 'min="0"'),
        field("time", "Time limit (HH:MM:SS)", "text", "08:00:00"),
    ])
