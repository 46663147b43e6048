"""Durable cluster records for gates that keep their own: one JSON file each.

A gate writes a cluster's record before it asks its backend for anything and
removes it last, so a gate started anew (after the control plane died) can
list and delete every cluster an earlier one created.  Files are written to a
temporary name, synced and renamed: a reader never sees half a record.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar


class Record(Protocol):
    @property
    def cluster_id(self) -> str: ...

    def to_json(self) -> str: ...


R = TypeVar("R", bound=Record)


class RecordStore(Generic[R]):
    """The ``clusters/`` folder of one gate's directory."""

    def __init__(self, root: Path, decode: Callable[[str], R]) -> None:
        self.root = root
        self.decode = decode
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, cluster_id: str) -> Path:
        return self.root / f"{cluster_id}.json"

    def get(self, cluster_id: str) -> R | None:
        try:
            return self.decode(self.path(cluster_id).read_text())
        except FileNotFoundError:
            return None

    def all(self) -> list[R]:
        records = []
        for p in sorted(self.root.glob("*.json")):
            try:
                records.append(self.decode(p.read_text()))
            except FileNotFoundError:  # removed while we listed
                continue
        return records

    def put(self, record: R) -> None:
        path = self.path(record.cluster_id)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def remove(self, cluster_id: str) -> None:
        self.path(cluster_id).unlink(missing_ok=True)
