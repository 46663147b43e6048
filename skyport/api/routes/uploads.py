"""Uploads: a user's local input files, sent by the client into the user's own prefix.

``PUT /v1/uploads/{sha256}/{name}`` streams the body to
``<storage>/users/<user>/uploads/<sha256>/<name>`` and keeps it only if its
digest is the one named; the job spec then names it ``upload:<sha256>/<name>``
(``skyport.core.inputs``), which reaches the submitting user's uploads alone.
``HEAD`` says whether it is there already, so the same file is sent once.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request, Response

from skyport.api.deps import User
from skyport.core.inputs import check_upload_name, upload_url
from skyport.errors import ValidationError
from skyport.protocol import UploadAnswer
from skyport.storage import JobStorage

__all__ = ["MAX_UPLOAD_BYTES", "uploads_router"]

MAX_UPLOAD_BYTES = 1 << 40  # streamed to storage chunk by chunk: no memory bound needed
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _checked(sha256: str, name: str) -> None:
    if not _SHA256.fullmatch(sha256):
        raise ValidationError("sha256", sha256, "64 lowercase hex digits")
    check_upload_name(name)


def uploads_router(storage: JobStorage) -> APIRouter:
    r = APIRouter(prefix="/v1/uploads")

    @r.head("/{sha256}/{name}")
    async def exists(sha256: str, name: str, who: User) -> Response:
        _checked(sha256, name)
        found = storage.has_upload(who.username, sha256, name)
        return Response(status_code=200 if found else 404)

    @r.put("/{sha256}/{name}", status_code=201)
    async def put(sha256: str, name: str, request: Request, who: User) -> UploadAnswer:
        _checked(sha256, name)
        writer = storage.upload_writer(who.username, sha256, name)
        try:
            async for chunk in request.stream():
                if writer.size + len(chunk) > MAX_UPLOAD_BYTES:
                    raise ValidationError("body", f"more than {MAX_UPLOAD_BYTES} bytes",
                                          f"at most {MAX_UPLOAD_BYTES} bytes")
                writer.write(chunk)
            size, _ = writer.commit(sha256)
        except BaseException:
            writer.abort()
            raise
        return UploadAnswer(url=upload_url(sha256, name), size=size)

    return r
