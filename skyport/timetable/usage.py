"""Decayed past usage per owner, the input of fair-share policies.

Pure bookkeeping: the caller says when things happen. The Scheduler actor and
the replay driver each keep one ledger and put :meth:`UsageLedger.at` into
the snapshot's ``usage``.

Usage decays exponentially with half-life ``half_life_s``; charges are in
processor-seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["UsageLedger"]


class UsageLedger:
    """Processor-seconds per owner, halving every ``half_life_s`` seconds."""

    __slots__ = ("half_life_s", "_rate", "_value", "_since")

    def __init__(self, half_life_s: float = 86_400.0) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s!r}")
        self.half_life_s = half_life_s
        self._rate = math.log(2.0) / half_life_s
        self._value: dict[str, float] = {}
        self._since: dict[str, float] = {}

    def charge(self, owner: str, proc_seconds: float, at_s: float) -> None:
        """Add ``proc_seconds`` of use by ``owner`` at time ``at_s``."""
        self._value[owner] = self.value(owner, at_s) + proc_seconds
        self._since[owner] = at_s

    def value(self, owner: str, at_s: float) -> float:
        """``owner``'s decayed usage as seen at ``at_s``."""
        value = self._value.get(owner)
        if value is None:
            return 0.0
        return value * math.exp(-self._rate * max(0.0, at_s - self._since[owner]))

    def at(self, at_s: float, owners: Iterable[str] | None = None) -> dict[str, float]:
        """Decayed usage at ``at_s`` for ``owners`` (default: every owner charged so far)."""
        names = self._value.keys() if owners is None else set(owners)
        return {owner: self.value(owner, at_s) for owner in names}
