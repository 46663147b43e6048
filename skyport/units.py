"""Parsing of the sbatch-style values users write: durations and memory sizes."""

from __future__ import annotations

import math
import re

_DURATION_SUFFIX = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SUFFIX_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MEM = re.compile(r"^(\d+(?:\.\d+)?)(?:([KMGT])B?)?$", re.IGNORECASE)
_MEM_MB = {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024 * 1024}

DURATION_FORMS = (
    "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or a number with s/m/h/d "
    "(e.g. 90s, 10m, 2h)"
)
MEM_FORMS = "a size in MB, or a number with K, M, G or T (e.g. 512M, 2G)"


def parse_duration_s(text: str) -> int:
    """Slurm's time formats (a bare number is minutes) plus 90s/10m/2h/1d."""
    value = text.strip()
    m = _DURATION_SUFFIX.match(value)
    if m:
        seconds = float(m.group(1)) * _SUFFIX_S[m.group(2)]
    else:
        days = 0
        has_days = "-" in value
        if has_days:
            day_text, _, value = value.partition("-")
            if not day_text.isdigit():
                raise ValueError(text)
            days = int(day_text)
        parts = value.split(":")
        if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
            raise ValueError(text)
        nums = [int(p) for p in parts]
        if has_days:
            # after "D-" the fields are hours[, minutes[, seconds]]
            nums += [0] * (3 - len(nums))
            h, mi, s = nums
        elif len(nums) == 1:
            h, mi, s = 0, nums[0], 0
        elif len(nums) == 2:
            h, mi, s = 0, nums[0], nums[1]
        else:
            h, mi, s = nums
        seconds = days * 86400 + h * 3600 + mi * 60 + s
    # a limit that rounds to zero seconds (e.g. "0.4s") is as useless as "0"
    if round(seconds) <= 0:
        raise ValueError(text)
    return int(round(seconds))


def parse_mem_mb(text: str) -> int:
    """MB, rounded up: a job never gets less memory than it asked for."""
    m = _MEM.fullmatch(text.strip())
    if not m:
        raise ValueError(text)
    mb = float(m.group(1)) * _MEM_MB[(m.group(2) or "").upper()]
    if mb <= 0:
        raise ValueError(text)
    return math.ceil(mb)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    core = f"{h:02d}:{m:02d}:{s:02d}"
    return f"{days}-{core}" if days else core


DEADLINE_FORMS = (
    "a date and time (ISO 8601, e.g. 2026-12-24T18:00, local time unless it names a "
    "zone), or + and a duration from submission (e.g. +6h, +30m, +1d)"
)


def parse_deadline(text: str) -> str:
    """A deadline as the spec keeps it: ``+<seconds>s`` (from submission) or an ISO time in UTC.

    A date and time without a zone is this machine's local time (the user's,
    at the client). The relative form is made absolute at submission
    (:func:`deadline_at`), so that ``+6h`` means six hours after the control
    plane took the job.
    """
    from datetime import UTC, datetime

    value = text.strip()
    if value.startswith("+"):
        return f"+{parse_duration_s(value[1:])}s"
    if not value or not value[0].isdigit():
        raise ValueError(text)
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            when = when.astimezone()  # local time
        return when.astimezone(UTC).isoformat()
    except OverflowError as exc:  # a year at the edge of the calendar
        raise ValueError(text) from exc


def deadline_at(deadline: str, submitted_s: float) -> float:
    """The epoch time of a deadline kept by :func:`parse_deadline`, given the submit time."""
    from datetime import datetime

    if deadline.startswith("+"):
        return submitted_s + parse_duration_s(deadline[1:])
    return datetime.fromisoformat(deadline).timestamp()
