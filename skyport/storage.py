"""Job storage: everything of a job lives under ``<storage>/jobs/<job id>/``.

Any fsspec URL works (``file://`` under the state directory by default,
``s3://bucket/prefix`` with s3fs).  Only the control plane holds storage
credentials; agents reach their job's files through the REST API, which
calls this module with paths that have been checked to stay inside the job's
prefix (on S3, by presigned URLs for one object each: ``skyport.direct``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import fsspec

from skyport.dirinputs import MAX_MANIFEST_BYTES, DirEntry, local_tree, parse_dir_manifest
from skyport.errors import StorageError, ValidationError
from skyport.models import check_relative_path

if TYPE_CHECKING:
    from skyport.core.inputs import InputSource

CHUNK = 8 << 20  # bytes moved at a time: memory stays flat whatever the file's size

# suffix of the temporary object a write goes to first; listings hide it.  Not
# plain ".part": a job may well produce a file of its own called "model.part".
_TMP_SUFFIX = ".skyport-part"
# Where a file's checksum is recorded: a small object next to it, "<sha256> <size>",
# written by the control plane when it commits the file (never by a node).  One object
# per file rather than one manifest per job: parallel uploads of one job's files then
# never race on a shared object (object stores have no locks nor appends), a file and
# its checksum go away together when a directory is removed, and a restarted control
# plane finds them as they were.  Listings hide it.
_SUM_SUFFIX = ".skyport-sha256"
_HIDDEN = (_TMP_SUFFIX, _SUM_SUFFIX)
COPY_PARALLEL = 4  # files of a directory input copied at once
DIR_ENTRY_NAME = "file"  # the upload name of each file of a directory input (the client's)


class JobStorage:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except (ImportError, ValueError) as exc:
            raise StorageError(f"cannot open storage {url!r}: {exc}") from exc
        self.root = self.root.rstrip("/")
        if self.fs.protocol in ("file", "local") or "file" in self.fs.protocol:
            if not self.fs.exists(self.root):  # ours alone; the control plane's umask is 077
                self.fs.makedirs(self.root, exist_ok=True)
                os.chmod(self.root, 0o700)

    def _base(self, job_id: str) -> str:
        # the id is one path component too: "../other" must not reach another job's files
        if not job_id or "/" in job_id or "\\" in job_id or job_id in (".", ".."):
            raise ValidationError("job id", job_id, "one path component, without '/' or '..'")
        return f"{self.root}/jobs/{job_id}"

    def _path(self, job_id: str, rel: str) -> str:
        base = self._base(job_id)
        try:
            check_relative_path(rel, "path")
        except ValueError as exc:
            raise ValidationError("path", rel, "a relative path inside the job's prefix") from exc
        return f"{base}/{rel}"

    def _fresh(self, path: str) -> str:
        """``path``, with any cached listing of it (and of its parents) dropped.

        Object-store clients cache listings, sizes and ETags; a read must see what
        another client (another control plane, or one before a restart) wrote since.
        """
        self.fs.invalidate_cache(path)
        return path

    def put(self, job_id: str, rel: str, data: bytes) -> None:
        path = self._path(job_id, rel)
        try:
            self._write(path, [data])
        except OSError as exc:
            raise StorageError(f"cannot write {rel} of job {job_id}: {exc}") from exc

    def writer(self, job_id: str, rel: str) -> AtomicWriter:
        """A streamed, atomic write of one job file; its checksum is recorded on commit."""
        path = self._path(job_id, rel)
        if path.endswith(_HIDDEN):
            raise ValidationError("path", rel, f"a name not ending in {' or '.join(_HIDDEN)}")
        try:
            return AtomicWriter(self.fs, path, record_sum=True)
        except OSError as exc:
            raise StorageError(f"cannot write {rel} of job {job_id}: {exc}") from exc

    def stat(self, job_id: str, rel: str) -> tuple[int, str | None]:
        """(size, recorded sha256 or None) of one job file; NotFoundError if absent."""
        from skyport.errors import NotFoundError

        path = self._fresh(self._path(job_id, rel))
        try:
            info = self.fs.info(path)
        except FileNotFoundError as exc:
            raise NotFoundError(f"job {job_id} has no file {rel}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {rel} of job {job_id}: {exc}") from exc
        if info.get("type") == "directory":
            raise NotFoundError(f"job {job_id} has no file {rel} (it is a directory)")
        size = int(info.get("size") or 0)
        return size, self._recorded_sum(path, size)

    def _recorded_sum(self, path: str, size: int) -> str | None:
        try:
            with self.fs.open(self._fresh(path + _SUM_SUFFIX), "rb") as f:
                return _parse_sum(f.read(200), size)
        except (FileNotFoundError, OSError):
            return None

    def iter_range(self, job_id: str, rel: str, start: int = 0, end: int | None = None,
                   chunk: int = CHUNK) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of one job file, ``chunk`` at a time (never all at once)."""
        path = self._fresh(self._path(job_id, rel))
        try:
            with self.fs.open(path, "rb", block_size=chunk) as f:
                f.seek(start)
                left = None if end is None else end - start
                while left is None or left > 0:
                    data = f.read(chunk if left is None else min(chunk, left))
                    if not data:
                        return
                    if left is not None:
                        left -= len(data)
                    yield data
        except OSError as exc:
            raise StorageError(f"cannot read {rel} of job {job_id}: {exc}") from exc

    def _write(self, path: str, chunks: Iterable[bytes], sha256: str | None = None
               ) -> tuple[int, str]:
        """Write ``chunks`` to ``path`` atomically; (size, sha256) written."""
        writer = AtomicWriter(self.fs, path, record_sum=True)
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit(sha256)
        except BaseException:
            writer.abort()
            raise

    # -- a user's own prefix: files the user's client uploaded ------------------------

    def _user_path(self, user: str, rel: str) -> str:
        if not user or "/" in user or "\\" in user or user in (".", ".."):
            raise ValidationError("user", user, "one path component")
        try:
            check_relative_path(rel, "path")
        except ValueError as exc:
            raise ValidationError("path", rel, "a relative path inside the user's prefix") from exc
        return f"{self.root}/users/{user}/{rel}"

    def upload_writer(self, user: str, sha256: str, name: str) -> AtomicWriter:
        """Where an upload of ``user`` goes: ``uploads/<sha256>/<name>``, moved in on commit."""
        return AtomicWriter(self.fs, self._user_path(user, f"uploads/{sha256}/{name}"))

    def has_upload(self, user: str, sha256: str, name: str) -> bool:
        return bool(self.fs.exists(self._fresh(self._user_path(user,
                                                               f"uploads/{sha256}/{name}"))))

    def get(self, job_id: str, rel: str) -> bytes:
        path = self._fresh(self._path(job_id, rel))
        try:
            with self.fs.open(path, "rb") as f:
                return f.read()
        except FileNotFoundError as exc:
            from skyport.errors import NotFoundError

            raise NotFoundError(f"job {job_id} has no file {rel}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {rel} of job {job_id}: {exc}") from exc

    def exists(self, job_id: str, rel: str) -> bool:
        return bool(self.fs.exists(self._fresh(self._path(job_id, rel))))

    def remove_job(self, job_id: str) -> None:
        """Delete everything under the job's prefix (best effort: absent is fine)."""
        path = self._base(job_id)
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except OSError:
            pass

    def remove(self, job_id: str, rel: str) -> None:
        """Delete a file or a whole directory under the job's prefix (absent: nothing)."""
        path = self._path(job_id, rel)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def size(self, job_id: str, rel: str) -> int:
        path = self._fresh(self._path(job_id, rel))
        try:
            return int(self.fs.size(path))
        except FileNotFoundError:
            return 0

    def read_from(self, job_id: str, rel: str, offset: int, limit: int = 1 << 20) -> bytes:
        path = self._fresh(self._path(job_id, rel))
        try:
            with self.fs.open(path, "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    def append(self, job_id: str, rel: str, offset: int, data: bytes) -> int:
        """Append ``data`` written at ``offset``; a chunk sent twice is stored once.

        Returns the new size.  Object stores cannot append, so there the object
        is rewritten; logs are small next to the data a job moves.
        """
        size = self.size(job_id, rel)
        if not 0 <= offset <= size:
            raise ValidationError("offset", offset, f"0 to the current size {size}")
        data = data[size - offset :]
        if not data:
            return size
        path = self._path(job_id, rel)
        try:
            if self._can_append():
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                with self.fs.open(path, "ab") as f:
                    f.write(data)
            else:
                old = self.get(job_id, rel) if size else b""
                self.put(job_id, rel, old + data)
        except OSError as exc:
            raise StorageError(f"cannot append to {rel} of job {job_id}: {exc}") from exc
        return size + len(data)

    def _can_append(self) -> bool:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        return any(p in ("file", "local", "memory") for p in protocols)

    def listdir(self, job_id: str) -> list[dict[str, Any]]:
        """Every file of the job: path, size and (when recorded) sha256."""
        base = self._fresh(self._base(job_id))
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        sums: dict[str, bytes] = {}
        sum_paths = [p for p in found if p.endswith(_SUM_SUFFIX)]
        if sum_paths:
            # one batched read (concurrent on object stores), not one round trip per file
            try:
                got = self.fs.cat(sum_paths, on_error="omit")
                sums = {k.removesuffix(_SUM_SUFFIX): v for k, v in got.items()
                        if isinstance(v, bytes)}
            except OSError:
                sums = {}
        out = []
        for path, info in sorted(found.items()):
            rel = (
                path[len(base) :].lstrip("/")
                if path.startswith(base)
                else path.split(f"jobs/{job_id}/", 1)[-1]
            )
            if rel.endswith(_HIDDEN):
                continue
            size = int(info.get("size") or 0)
            entry: dict[str, Any] = {"path": rel, "size": size}
            digest = _parse_sum(sums.get(path, b""), size)
            if digest is not None:
                entry["sha256"] = digest
            out.append(entry)
        return out

    def _copy_upload(self, job_id: str, url: str, name: str, owner: str, rel: str) -> int:
        """Copy the upload at ``url`` (relative to the owner's prefix) to ``rel``."""
        src = self._fresh(self._user_path(owner, url))
        dest = self._path(job_id, rel)
        digest = _upload_digest(url)
        tmp = dest + _TMP_SUFFIX
        try:
            size = int(self.fs.size(src))
            self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            self.fs.copy(src, tmp)
            if digest is not None:
                self.fs.pipe_file(dest + _SUM_SUFFIX, f"{digest} {size}\n".encode())
            self.fs.mv(tmp, dest)
            return size
        except (OSError, ValueError) as exc:
            try:
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
            except OSError:
                pass
            raise StorageError(f"cannot read input {name!r}: "
                               f"{type(exc).__name__}: {exc}") from exc

    def _source_fs(self, source: InputSource, owner: str) -> tuple[Any, str]:
        if source.kind == "upload":
            return self.fs, self._user_path(owner, source.url)
        if source.kind == "file":
            return fsspec.filesystem("file"), source.url
        if source.kind == "storage":
            return self.fs, source.url.split("://", 1)[1]
        return fsspec.core.url_to_fs(source.url)  # http(s): no credentials of ours

    def check_input(self, source: InputSource, owner: str) -> str | None:
        """None if the (policy-checked) input can be read; else why not."""
        try:
            if source.kind == "upload-dir":
                missing = [e.path for e in self._dir_entries(source, owner)
                           if not self.fs.exists(self._user_path(
                               owner, f"uploads/{e.sha256}/{DIR_ENTRY_NAME}"))]
                return f"files not uploaded: {', '.join(missing[:5])}" if missing else None
            fs, path = self._source_fs(source, owner)
            if fs.isdir(path) and source.kind in ("file", "storage"):
                self._tree(fs, path, source)  # refuses links out of it, and the like
                return None
            if not fs.isfile(path):
                return "no such file"
        except ValidationError as exc:
            return exc.allowed and f"{exc.value}: {exc.allowed}" or str(exc)
        except Exception as exc:  # any client's own error: it is the user's answer
            return f"{type(exc).__name__}: {exc}"
        return None

    def _dir_entries(self, source: InputSource, owner: str) -> list[DirEntry]:
        path = self._fresh(self._user_path(owner, source.url))
        with self.fs.open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        return parse_dir_manifest(raw, source.name)

    def _tree(self, fs: Any, path: str, source: InputSource) -> list[tuple[str, str]]:
        """(relative path, full path) of every file under a directory input."""
        if source.kind == "file":
            return [(rel, str(p)) for rel, p in local_tree(Path(path))]
        base = path.rstrip("/")
        out = []
        for found in sorted(fs.find(base)):
            rel = found[len(base):].lstrip("/")
            if rel.endswith(_HIDDEN):
                continue
            try:
                check_relative_path(rel, "path")
            except ValueError as exc:
                raise ValidationError("input", f"{source.name}: {rel}",
                                      "relative paths inside the prefix") from exc
            out.append((rel, found))
        return out

    def _copy_tree(self, job_id: str, source: InputSource, owner: str, rel: str) -> int:
        # several files at a time: many small files are round trips, not bandwidth
        with ThreadPoolExecutor(COPY_PARALLEL, thread_name_prefix="copy-in") as pool:
            if source.kind == "upload-dir":
                return sum(pool.map(lambda e: self._copy_upload(
                    job_id, f"uploads/{e.sha256}/{DIR_ENTRY_NAME}", f"{source.name}/{e.path}",
                    owner, f"{rel}/{e.path}"), self._dir_entries(source, owner)))
            fs, path = self._source_fs(source, owner)

            def one(sub: str, full: str) -> int:
                with fs.open(full, "rb") as f:
                    return self._write(self._path(job_id, f"{rel}/{sub}"), _chunks(f))[0]

            return sum(pool.map(lambda t: one(*t), self._tree(fs, path, source)))

    def copy_in(self, job_id: str, source: InputSource, owner: str, rel: str) -> int:
        """Stream a (policy-checked) input into the job's prefix, chunk by chunk.

        An upload is copied inside the storage (a server-side copy on object
        stores, a file copy on disk), bytes never passing through here: its
        sha256 is its name, checked when it was uploaded.
        """
        if source.kind == "upload":
            return self._copy_upload(job_id, source.url, source.name, owner, rel)
        try:
            if source.kind == "upload-dir":
                return self._copy_tree(job_id, source, owner, rel)
            fs, path = self._source_fs(source, owner)
            if source.kind in ("file", "storage") and fs.isdir(path):
                return self._copy_tree(job_id, source, owner, rel)
            with fs.open(path, "rb") as f:
                return self._write(self._path(job_id, rel), _chunks(f))[0]
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read input {source.name!r}: "
                               f"{type(exc).__name__}: {exc}") from exc


def _upload_digest(url: str) -> str | None:
    """The sha256 an upload's path names (``uploads/<sha256>/<name>``), if it is one."""
    parts = url.split("/")
    if len(parts) == 3 and parts[0] == "uploads" and len(parts[1]) == 64:
        return parts[1]
    return None


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


def _parse_sum(raw: bytes, size: int) -> str | None:
    """The digest of a checksum record, if it is one for a file of ``size`` bytes.

    A record whose size differs describes an older content (the file was rewritten
    by something that did not record a sum, e.g. a log append): no checksum then.
    """
    parts = raw.decode("ascii", "replace").split()
    if len(parts) != 2 or len(parts[0]) != 64 or parts[1] != str(size):
        return None
    return parts[0]


class AtomicWriter:
    """Chunks written next to ``path`` and moved there on commit: never half a file.

    ``commit(sha256)`` moves the file in only if the content has that digest.
    """

    def __init__(self, fs: Any, path: str, *, record_sum: bool = False) -> None:
        self.fs = fs
        self.path = path
        self.tmp = path + _TMP_SUFFIX
        self.size = 0
        self.record_sum = record_sum
        self._digest = hashlib.sha256()
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        # big blocks: an object store then sends few, large multipart parts
        self._f = fs.open(self.tmp, "wb", block_size=CHUNK)

    def write(self, chunk: bytes) -> None:
        self._f.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    def commit(self, sha256: str | None = None) -> tuple[int, str]:
        self._f.close()
        digest = self._digest.hexdigest()
        if sha256 is not None and digest != sha256:
            self.abort()
            raise ValidationError("sha256", sha256, f"the digest of the content sent ({digest})")
        if self.record_sum:
            # the record first: a reader that sees the new file then sees its sum (a sum
            # whose size does not match the file's is ignored, so an old file is safe too)
            self.fs.pipe_file(self.path + _SUM_SUFFIX, f"{digest} {self.size}\n".encode())
        self.fs.mv(self.tmp, self.path)
        return self.size, digest

    def abort(self) -> None:
        try:
            self._f.close()
            if self.fs.exists(self.tmp):
                self.fs.rm(self.tmp)
        except OSError:
            pass
