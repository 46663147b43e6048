"""Progress bars for large transfers, on stderr (stdout stays the command's answer)."""

from __future__ import annotations

import sys
from typing import Any

import click

__all__ = ["LARGE", "ProgressBars"]

LARGE = 64 << 20  # smaller files come and go too fast for a bar to say anything


class ProgressBars:
    """A ``Progress`` callback (``update(name, done, total)``): one bar per large file."""

    def __init__(self, min_bytes: int = LARGE) -> None:
        self.min_bytes = min_bytes
        self._bar: Any = None
        self._name = ""
        self._shown = 0

    def update(self, name: str, done: int, total: int) -> None:
        if total < self.min_bytes:
            return
        if name != self._name:
            self.close()
            self._name, self._shown = name, 0
            bar: Any = click.progressbar(length=total, label=name, file=sys.stderr,
                                         show_pos=False, show_percent=True, show_eta=True)
            self._bar = bar
            self._bar.__enter__()
        self._bar.update(done - self._shown)
        self._shown = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
