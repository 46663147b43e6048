"""``--dependency``: what a job waits for, as sbatch writes it.  Pure: text in, conditions out.

::

    afterok:ID[:ID...]     every ID ended SUCCEEDED
    afternotok:ID[:ID...]  every ID ended FAILED, CANCELLED or TIMEOUT
    afterany:ID[:ID...]    every ID ended, however
    after:ID[:ID...]       every ID has started (reached RUNNING once) or ended
    singleton              no other job of this name and owner is running

Conditions are joined by ``,`` and must all hold (sbatch's ``?``, "any of",
is not offered).  Whether a condition holds is the Core's business
(``skyport.core.dependencies``); here only the text is checked and written in
one canonical form, so the spec, the store and every listing agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ALLOWED", "KINDS", "Condition", "format_conditions", "parse_dependency", "upstream_ids"]

KINDS = ("after", "afterany", "afterok", "afternotok", "singleton")
MAX_IDS = 100  # job ids in one job's dependency, over all its conditions
MAX_CHARS = 8192
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

ALLOWED = ("conditions joined by ',', each TYPE:JOBID[:JOBID...] with TYPE one of after, "
           "afterany, afterok, afternotok, or 'singleton' (e.g. afterok:3f2a1b0c:77e0a9d1,"
           f"singleton); at most {MAX_IDS} job ids")


@dataclass(frozen=True)
class Condition:
    kind: str  # one of KINDS
    job_ids: tuple[str, ...] = ()  # () for singleton

    def __str__(self) -> str:
        return ":".join((self.kind, *self.job_ids))


def parse_dependency(text: str) -> tuple[Condition, ...]:
    """The conditions ``text`` writes; ``ValueError`` saying what is wrong and what is allowed.

    Conditions of one type are merged (``afterok:a,afterok:b`` is ``afterok:a:b``)
    and repeated ids dropped, so the canonical form is short and stable.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"an empty dependency: {ALLOWED}")
    if len(text) > MAX_CHARS:
        raise ValueError(f"{len(text)} characters: at most {MAX_CHARS}; {ALLOWED}")
    if "?" in text:
        raise ValueError(f"'?' (any of the conditions) is not offered: {ALLOWED}")
    merged: dict[str, list[str]] = {}
    count = 0
    for part in text.split(","):
        kind, *ids = part.split(":")
        if kind not in KINDS:
            raise ValueError(f"unknown type {kind!r} in {part!r}: {ALLOWED}")
        if kind == "singleton" and ids:
            raise ValueError(f"singleton takes no job id ({part!r}): {ALLOWED}")
        if kind != "singleton" and not ids:
            raise ValueError(f"{kind} needs at least one job id ({part!r}): {ALLOWED}")
        for job_id in ids:
            if not _JOB_ID.fullmatch(job_id):
                raise ValueError(f"{job_id!r} is not a job id (letters, digits, '_', '-'): "
                                 f"{ALLOWED}")
        known = merged.setdefault(kind, [])
        for job_id in ids:
            if job_id not in known:
                known.append(job_id)
                count += 1
                if count > MAX_IDS:  # before any more work
                    raise ValueError(f"more than {MAX_IDS} job ids: {ALLOWED}")
    return tuple(Condition(k, tuple(merged[k])) for k in KINDS if k in merged)


def format_conditions(conditions: tuple[Condition, ...]) -> str:
    """The canonical text of ``conditions`` (what the spec stores)."""
    return ",".join(str(c) for c in conditions)


def upstream_ids(conditions: tuple[Condition, ...]) -> list[str]:
    """Every job id the conditions name, once each, in order."""
    return list(dict.fromkeys(i for c in conditions for i in c.job_ids))
