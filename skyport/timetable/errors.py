"""Exceptions of the timetable engine.

Tree::

    TimetableError              root of everything the engine raises
    +-- InvalidSnapshotError    a snapshot that contradicts itself (unknown pool, bad sizes)
    +-- UnknownPolicyError      a policy name that no registry entry answers to

When the project-wide ``SkyportError`` root exists, ``TimetableError`` should
derive from it; nothing else here has to change.
"""

from __future__ import annotations

__all__ = ["InvalidSnapshotError", "TimetableError", "UnknownPolicyError"]


class TimetableError(Exception):
    """Root of the timetable engine's errors."""


class InvalidSnapshotError(TimetableError, ValueError):
    """A snapshot whose fields contradict each other or are out of range."""


class UnknownPolicyError(TimetableError, LookupError):
    """No policy is registered under the requested name."""
