"""Directory inputs: a tree of files kept with its relative paths.

A local directory goes up as one upload per file plus a list of them (the
*manifest*, JSON ``{"files": [{"path", "sha256", "size"}]}``, itself an upload
named ``upload-dir:<its sha256>/<directory name>``).  A storage prefix or a
granted ``file://`` directory is walked where it is.  Either way every file
lands under ``inputs/<name>/<its relative path>``.

Every name is hostile until checked: a path with ``..``, an absolute one, a
symbolic link leading out of the directory, a device or a fifo are refused
with the entry named, before anything is sent or copied.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyport.errors import ValidationError
from skyport.models import check_relative_path

__all__ = ["MAX_MANIFEST_BYTES", "MAX_TREE_FILES", "DirEntry", "dir_manifest", "local_tree",
           "parse_dir_manifest"]

MAX_TREE_FILES = 100_000  # a directory input's files; the list is read whole by the Core
MAX_MANIFEST_BYTES = 32 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DirEntry:
    path: str
    sha256: str
    size: int


_RESERVED = (".skyport-part", ".skyport-sha256")  # the storage's own records (storage.py)


def _checked_rel(rel: str, where: str) -> str:
    try:
        check_relative_path(rel, "path")
    except ValueError as exc:
        raise ValidationError("input", f"{where}: {rel}", "relative paths inside the directory "
                              "(no '..', not absolute)") from exc
    if rel.endswith(_RESERVED) or "." in rel.split("/"):
        raise ValidationError("input", f"{where}: {rel}",
                              f"names without '.' parts, not ending in {' or '.join(_RESERVED)}")
    return rel


def local_tree(root: Path) -> list[tuple[str, Path]]:
    """Every file under ``root`` as (relative path, path), sorted; hostile entries refused.

    A symbolic link is followed only when it resolves inside ``root``; links to
    directories are not walked (a loop cannot hang the walk).
    """
    real_root = root.resolve()
    if not real_root.is_dir():
        raise ValidationError("input", str(root), "a directory")
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(real_root, followlinks=False):
        for name in sorted(dirnames + filenames):
            entry = Path(dirpath) / name
            rel = entry.relative_to(real_root).as_posix()
            if entry.is_symlink():
                target = entry.resolve()
                if not target.is_relative_to(real_root):
                    raise ValidationError("input", f"{root}: {rel}",
                                          "files inside the directory (this symbolic link "
                                          "leads out of it)")
                if target.is_dir():
                    continue  # its files are walked where they really are
            if name in dirnames and not entry.is_symlink():
                continue
            if not entry.is_file():
                raise ValidationError("input", f"{root}: {rel}",
                                      "regular files and directories only")
            found.append((_checked_rel(rel, str(root)), entry))
            if len(found) > MAX_TREE_FILES:
                raise ValidationError("input", str(root),
                                      f"a directory of at most {MAX_TREE_FILES} files")
    return sorted(found)


def dir_manifest(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"files": sorted(entries, key=lambda e: e["path"])},
                      separators=(",", ":"), sort_keys=True).encode()


def parse_dir_manifest(raw: bytes, where: str) -> list[DirEntry]:
    """The checked entries of a manifest; ValidationError (field ``input``) if hostile."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValidationError("input", where, f"a directory list of at most "
                              f"{MAX_MANIFEST_BYTES} bytes")
    try:
        files = json.loads(raw)["files"]
        entries = [DirEntry(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in files]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError("input", where, 'a directory list {"files": [{"path", '
                              '"sha256", "size"}]}, as the client writes it') from exc
    if len(entries) > MAX_TREE_FILES:
        raise ValidationError("input", where, f"a directory of at most {MAX_TREE_FILES} files")
    seen: set[str] = set()
    for e in entries:
        _checked_rel(e.path, where)
        if not _SHA256.fullmatch(e.sha256) or e.size < 0:
            raise ValidationError("input", f"{where}: {e.path}", "a sha256 and a size")
        if e.path in seen or any(p in seen for p in _parents(e.path)):
            raise ValidationError("input", f"{where}: {e.path}", "each path once, files only")
        seen.add(e.path)
    for e in entries:  # "a" and "a/b" both files: one would hide the other
        if any(p in seen for p in _parents(e.path)):
            raise ValidationError("input", f"{where}: {e.path}", "each path once, files only")
    return entries


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
