"""Multipart uploads left open by an attempt that ended: aborted, so they cost nothing.

On an object store an agent writes a large file as a multipart upload the Core
opens for it (``skyport.direct``).  An agent that dies mid-upload leaves that
upload open, and its parts are billed until someone aborts it.  So every
upload the Core opens is recorded in the job store with the hash of the
attempt's token, before the agent gets its URLs; the attempt's uploads are
aborted once that token is no longer the job's (the attempt ended: success,
failure, lost node, cancel), and at start-up a sweep aborts

* every recorded upload whose attempt is over (the last control plane stopped
  before it could), and
* every unrecorded upload under the prefix of one of our jobs that has no live
  attempt (opened just before a crash, before it could be recorded).

An upload of a live attempt is never touched, nor one under a prefix that is
not one of our jobs'.
"""

from __future__ import annotations

import logging

from skyport.direct import DirectAccess
from skyport.errors import NotFoundError, StorageError, ValidationError
from skyport.storage import JobStorage
from skyport.store import JobStore

__all__ = ["UploadDesk"]

log = logging.getLogger(__name__)


class UploadDesk:
    def __init__(self, store: JobStore, storage: JobStorage) -> None:
        self.store = store
        self.direct = DirectAccess(storage)

    def opened(self, job_id: str, token_hash: str, path: str, upload_id: str) -> None:
        """Record an upload just opened for the attempt holding ``token_hash``."""
        full = self.direct.storage._path(job_id, path)  # refuses a path outside the job
        if not upload_id:
            raise ValidationError("upload_id", upload_id, "the id of an open upload")
        self.store.add_upload(upload_id, job_id, full, token_hash)

    def closed(self, job_id: str, token_hash: str, upload_id: str) -> None:
        """The upload was completed by the attempt that opened it: nothing left to abort."""
        if any(u[0] == upload_id and u[3] == token_hash
               for u in self.store.open_uploads(job_id)):
            self.store.drop_upload(upload_id)

    def has_any(self, job_id: str) -> bool:
        return bool(self.store.open_uploads(job_id))

    def attempt_over(self, job_id: str) -> int:
        """Abort the job's recorded uploads of attempts that are over; how many went.

        Blocking (storage calls): run it in a thread.
        """
        live = self.store.token_hash(job_id)
        gone = 0
        for upload_id, _, path, token_hash in self.store.open_uploads(job_id):
            if token_hash == live:
                continue
            if self._abort(job_id, path, upload_id):
                self.store.drop_upload(upload_id)
                gone += 1
        return gone

    def any_left(self) -> bool:
        """Whether some recorded upload belongs to an attempt that is over (no storage call)."""
        return any(self.store.token_hash(job_id) != token_hash
                   for _, job_id, _, token_hash in self.store.open_uploads())

    def retry(self) -> int:
        """Abort again what the store refused to abort when its attempt ended."""
        return sum(self.attempt_over(job_id) for job_id in
                   sorted({u[1] for u in self.store.open_uploads()}))

    def sweep(self) -> int:
        """At start-up: abort what attempts that are over left open; how many went."""
        recorded = self.store.open_uploads()
        gone = self.retry()
        known = {u[0] for u in recorded}
        try:
            listed = self.direct.open_uploads()
        except (OSError, ValueError, StorageError) as exc:
            log.warning("cannot list the open uploads of the jobs: %s", exc)
            return gone
        for job_id, path, upload_id in listed:
            if upload_id in known or not self._attempt_over(job_id):
                continue
            if self._abort(job_id, path, upload_id):
                gone += 1
        return gone

    def _attempt_over(self, job_id: str) -> bool:
        """True for one of our jobs with no live attempt; False for a live one or a stranger."""
        try:
            self.store.get(job_id, events=False)
        except NotFoundError:
            return False
        return self.store.token_hash(job_id) is None

    def _abort(self, job_id: str, path: str, upload_id: str) -> bool:
        if self.direct.abort_upload(path, upload_id):
            log.info("job %s: aborted the upload %s left open at %s", job_id, upload_id, path)
            return True
        log.warning("job %s: cannot abort the upload %s at %s yet", job_id, upload_id, path)
        return False
