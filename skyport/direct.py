"""The direct data path: agents move bytes to and from object storage themselves.

On an object store (S3 and what speaks its API) the control plane does not
relay a job's data: for each file an agent asks for, on its live bearer token,
the Core signs URLs for that one object under that job's prefix and nothing
else, valid ``ttl_s`` seconds:

* a read: one presigned GET (ranged GETs on it resume a broken download);
* a write: a multipart upload the control plane opens on the file's own key,
  with one presigned URL per part; the agent PUTs the parts (several at a
  time) and the control plane completes it, checks the size that arrived and
  records the sha256 the agent computed as it read the file.  A file smaller
  than one part goes up with one presigned PUT next to its key and is moved in
  on completion, so a half-written file is never seen under its own name.

A URL names one object and one operation: it cannot list, cannot reach another
key (the signature covers the key), and is useless once expired.  An ended
attempt's token is revoked, so it gets no new URL; the ones it holds lapse
within ``ttl_s``.  The storage's own credentials never leave the control plane.

On ``file://`` storage there is nothing to sign: ``available`` is False and
agents use the control plane's streaming file routes (``skyport.api.files``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from skyport.errors import StorageError, ValidationError
from skyport.storage import _HIDDEN, _SUM_SUFFIX, _TMP_SUFFIX, JobStorage

__all__ = ["DirectAccess", "DirectRead", "DirectWrite", "MAX_PARTS", "PART_SIZE"]

PART_SIZE = 16 << 20  # an agent holds a few parts in memory at once: kept small
MAX_PARTS = 10_000  # S3's limit: a larger file gets larger parts
MIN_PART = 5 << 20  # S3's smallest part but the last
MAX_FILE = 5 << 40  # S3's largest object
DEFAULT_TTL_S = 900


@dataclass(frozen=True)
class DirectRead:
    url: str
    size: int
    sha256: str | None
    expires_in: int


@dataclass(frozen=True)
class DirectWrite:
    upload_id: str  # "" for a single PUT (a file smaller than one part)
    part_size: int
    urls: tuple[str, ...]
    expires_in: int


class DirectAccess:
    """Signs per-object URLs under one job's prefix; completes and checks the writes."""

    def __init__(self, storage: JobStorage, ttl_s: int = DEFAULT_TTL_S,
                 part_size: int = PART_SIZE) -> None:
        self.storage = storage
        self.ttl_s = int(ttl_s)
        self.part_size = max(MIN_PART, int(part_size))
        self._client: Any = None
        protocols = storage.fs.protocol
        protocols = protocols if isinstance(protocols, tuple) else (protocols,)
        self.available = any(p in ("s3", "s3a") for p in protocols) and hasattr(
            storage.fs, "call_s3")

    # -- paths -------------------------------------------------------------------

    def _key(self, job_id: str, rel: str) -> tuple[str, str, str]:
        """(full path, bucket, key) of a job file, refusing anything outside its prefix."""
        if not self.available:
            raise StorageError("this storage has no direct data path (it is not an object "
                               "store): use the streaming file routes")
        path = self.storage._path(job_id, rel)  # checks the id and the relative path
        if path.endswith(_HIDDEN):
            raise ValidationError("path", rel, f"a name not ending in {' or '.join(_HIDDEN)}")
        bucket, key, _ = self.storage.fs.split_path(path)
        return path, bucket, key

    def _sign(self, path: str, method: str, **params: Any) -> str:
        bucket, key, _ = self.storage.fs.split_path(path)
        url: str = self._signer().generate_presigned_url(
            method, Params={"Bucket": bucket, "Key": key, **params}, ExpiresIn=self.ttl_s)
        return url

    def _signer(self) -> Any:
        """A client that only signs, with the storage's credentials, always SigV4.

        Signing needs no network; SigV4 binds the key, the operation and the expiry
        (SigV2, which some clients still pick for presigning, is deprecated).
        """
        if self._client is None:
            import botocore.session
            from botocore.config import Config

            opts = self.storage.storage_options
            client_kwargs = dict(opts.get("client_kwargs") or {})
            config = {**(opts.get("config_kwargs") or {}), "signature_version": "s3v4"}
            self._client = botocore.session.get_session().create_client(
                "s3", aws_access_key_id=opts.get("key"),
                aws_secret_access_key=opts.get("secret"),
                aws_session_token=opts.get("token"),
                endpoint_url=client_kwargs.get("endpoint_url") or opts.get("endpoint_url"),
                region_name=client_kwargs.get("region_name"), config=Config(**config))
        return self._client

    # -- reads -------------------------------------------------------------------

    def read(self, job_id: str, rel: str) -> DirectRead:
        path, _, _ = self._key(job_id, rel)
        size, digest = self.storage.stat(job_id, rel)  # NotFoundError if absent
        return DirectRead(self._sign(path, "get_object"), size, digest, self.ttl_s)

    # -- writes ------------------------------------------------------------------

    def part_size_for(self, size: int) -> int:
        return max(self.part_size, math.ceil(size / MAX_PARTS))

    def start_write(self, job_id: str, rel: str, size: int) -> DirectWrite:
        if not 0 <= size <= MAX_FILE:
            raise ValidationError("size", size, f"0 to {MAX_FILE} bytes")
        path, bucket, key = self._key(job_id, rel)
        part = self.part_size_for(size)
        if size <= part:
            return DirectWrite("", part, (self._sign(path + _TMP_SUFFIX, "put_object"),),
                               self.ttl_s)
        try:
            got = self.storage.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
        except OSError as exc:
            raise StorageError(f"cannot start the upload of {rel} of job {job_id}: "
                               f"{exc}") from exc
        upload_id = got["UploadId"]
        urls = tuple(self._sign(path, "upload_part", UploadId=upload_id, PartNumber=n)
                     for n in range(1, math.ceil(size / part) + 1))
        return DirectWrite(upload_id, part, urls, self.ttl_s)

    def complete_write(self, job_id: str, rel: str, upload_id: str, etags: list[str],
                       size: int, sha256: str) -> tuple[int, str]:
        """Complete the upload, check what arrived, record its checksum; (size, sha256)."""
        path, bucket, key = self._key(job_id, rel)
        fs = self.storage.fs
        if upload_id:
            want = math.ceil(size / self.part_size_for(size)) if size else 0
            if len(etags) != want:
                raise ValidationError("etags", f"{len(etags)} parts",
                                      f"{want} parts for {size} bytes")
            self._check_upload_of(bucket, key, upload_id, rel)
            try:
                fs.call_s3("complete_multipart_upload", Bucket=bucket, Key=key,
                           UploadId=upload_id, MultipartUpload={"Parts": [
                               {"ETag": e, "PartNumber": n} for n, e in enumerate(etags, 1)]})
            except (OSError, ValueError) as exc:  # a wrong part, an unknown or foreign id
                raise StorageError(f"cannot complete the upload of {rel} of job {job_id}: "
                                   f"{exc}") from exc
            written = path
        else:
            written = path + _TMP_SUFFIX
        got, etag = self._size_of(written)
        want_etag = _multipart_etag(etags) if upload_id else None
        if got != size or (want_etag is not None and etag not in (None, want_etag)):
            self._remove(written)
            why = (f"holds {got} bytes, not the {size} announced" if got != size else
                   f"is not made of the parts sent (ETag {etag}, not {want_etag})")
            raise StorageError(f"the upload of {rel} of job {job_id} {why}: not kept")
        # the record before the move (a reader that sees the file sees its sum); for a
        # completed multipart upload the object is in place already, its sum just after
        fs.pipe_file(path + _SUM_SUFFIX, f"{sha256} {size}\n".encode())
        if not upload_id:
            try:
                fs.mv(written, path)
            except OSError as exc:
                raise StorageError(f"cannot save {rel} of job {job_id}: {exc}") from exc
        fs.invalidate_cache(path)
        return size, sha256

    def _check_upload_of(self, bucket: str, key: str, upload_id: str, rel: str) -> None:
        """The upload is one open on this very key (not merely an id the store knows)."""
        try:
            got = self.storage.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot list the uploads of {rel}: {exc}") from exc
        if not any(u.get("UploadId") == upload_id and u.get("Key") == key
                   for u in got.get("Uploads", [])):
            raise ValidationError("upload_id", upload_id, f"an upload opened for {rel}")

    def abort_write(self, job_id: str, rel: str, upload_id: str) -> None:
        path, bucket, key = self._key(job_id, rel)
        if upload_id:
            self.abort_upload(path, upload_id)
        else:
            self._remove(path + _TMP_SUFFIX)

    def abort_upload(self, path: str, upload_id: str) -> bool:
        """Abort one multipart upload at a full storage path; False if the store refused.

        An upload already completed or aborted counts as gone (True).
        """
        bucket, key, _ = self.storage.fs.split_path(path)
        try:
            self.storage.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key,
                                    UploadId=upload_id)
        except FileNotFoundError:  # NoSuchUpload: nothing left to abort
            return True
        except (OSError, ValueError) as exc:
            if "NoSuchUpload" in str(exc):
                return True
            return False
        return True

    def open_uploads(self) -> list[tuple[str, str, str]]:
        """``(job_id, path, upload_id)`` of every multipart upload open under the jobs' prefix."""
        if not self.available:
            return []
        bucket, prefix, _ = self.storage.fs.split_path(f"{self.storage.root}/jobs/")
        prefix = prefix.rstrip("/") + "/"
        out: list[tuple[str, str, str]] = []
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            got = self.storage.fs.call_s3("list_multipart_uploads", **params)
            for u in got.get("Uploads", []):
                job_id = str(u["Key"])[len(prefix):].split("/", 1)[0]
                if job_id:
                    out.append((job_id, f"{bucket}/{u['Key']}", str(u["UploadId"])))
            if not got.get("IsTruncated"):
                return out
            params["KeyMarker"] = got.get("NextKeyMarker", "")
            params["UploadIdMarker"] = got.get("NextUploadIdMarker", "")

    def _size_of(self, path: str) -> tuple[int, str | None]:
        """(size, ETag) of what is stored at ``path``; (-1, None) if nothing is."""
        fs = self.storage.fs
        fs.invalidate_cache(path)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return -1, None
        etag = info.get("ETag") or info.get("etag")
        return int(info.get("size") or 0), (str(etag) if etag else None)

    def _remove(self, path: str) -> None:
        try:
            self.storage.fs.rm(path)
        except (OSError, FileNotFoundError):
            pass


def _multipart_etag(etags: list[str]) -> str | None:
    """The ETag S3 gives an object completed from these parts: the md5 of their md5s.

    It proves the stored object is made of exactly the parts the agent sent.  None
    when a part's ETag is not a plain md5 (encrypted with KMS, another store).
    """
    raw = [e.strip('"') for e in etags]
    if not raw or not all(len(e) == 32 and all(c in "0123456789abcdef" for c in e)
                          for e in raw):
        return None
    return f'"{hashlib.md5(b"".join(bytes.fromhex(e) for e in raw)).hexdigest()}-{len(raw)}"'
