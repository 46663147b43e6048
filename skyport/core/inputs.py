"""Where a job's inputs may come from: read with the submitting user's rights, never ours.

The control plane fetches inputs with its own credentials and from its own
network position, so every input URL is checked against what the *submitting
user* may read before anything is fetched or even looked at:

* ``upload:<sha256>/<name>``: a file the user's client uploaded into the
  user's own prefix (``<storage>/users/<user>/uploads/``); the way a local
  ``--input=data.txt`` travels.  It reaches that user's uploads only.
  ``upload-dir:<sha256>/<name>``: a local directory the same way, the upload
  being the list of its files (``skyport.dirinputs``).
* a ``file://`` directory or a storage prefix is taken whole, recursively.
* ``file://`` (or a plain path): only under a directory the configuration
  grants to that user (``inputs.file_roots``; none by default), never inside
  the state directory, after every symlink is resolved.
* ``http://`` / ``https://``: only hosts whose every address is public
  (no loopback, link-local, private, multicast, reserved or metadata
  address), unless an admin allows the host by name (``inputs.allowed_hosts``).
* the storage's own protocol (e.g. ``s3://``): only under the user's prefix
  ``<storage>/users/<user>/``, read with the storage's credentials; never a
  job's prefix.
* anything else is refused.

A refusal is a ValidationError that says which rule refused the URL and never
whether a file exists: the policy is checked before the URL is touched.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from skyport.config import InputPolicy
from skyport.errors import ValidationError

__all__ = ["UPLOAD_SCHEME", "InputPolicy", "InputSource", "check_input_url", "upload_url"]

UPLOAD_SCHEME = "upload"
UPLOAD_DIR_SCHEME = "upload-dir"  # a directory the client sent: the list of its files
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.+-][A-Za-z0-9_.+ -]{0,199}$")
Resolver = Callable[[str], list[str]]


@dataclass(frozen=True)
class InputSource:
    """A checked input: where to read it and with which filesystem rules."""

    kind: str  # "upload" | "upload-dir" | "file" | "http" | "storage"
    url: str  # what to open (for "upload": the path relative to the user's prefix)
    name: str  # the file name it gets in the job's inputs/


def upload_url(sha256: str, name: str) -> str:
    return f"{UPLOAD_SCHEME}:{sha256}/{name}"


def check_upload_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise ValidationError("name", name, "a file name of letters, digits, ' ', '_', '.', "
                              "'+', '-' (at most 200 characters, no '/')")
    return name


def _system_resolver(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_link_local)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_input_url(url: str, user: str, policy: InputPolicy, *, state_dir: Path,
                    storage_protocols: tuple[str, ...], storage_root: str,
                    resolve: Resolver = _system_resolver) -> InputSource:
    """The input as ``user`` may read it; ValidationError (field ``input``) otherwise."""
    def refuse(why: str) -> ValidationError:
        return ValidationError("input", url, why)

    if url.startswith(UPLOAD_DIR_SCHEME + ":"):
        sha, _, name = url[len(UPLOAD_DIR_SCHEME) + 1:].partition("/")
        if not _SHA256.fullmatch(sha):
            raise refuse("upload-dir:<sha256 of the list>/<name>, as the client writes it")
        try:
            check_upload_name(name)
        except ValidationError as exc:
            raise refuse(f"a directory name: {exc.allowed}") from exc
        return InputSource("upload-dir", f"uploads/{sha}/{name}", name)
    if UPLOAD_SCHEME + ":" == url[: len(UPLOAD_SCHEME) + 1]:
        sha, _, name = url[len(UPLOAD_SCHEME) + 1:].partition("/")
        if not _SHA256.fullmatch(sha):
            raise refuse("upload:<sha256 of the file>/<name>, as the client writes it")
        try:
            check_upload_name(name)
        except ValidationError as exc:
            raise refuse(f"an upload name: {exc.allowed}") from exc
        return InputSource("upload", f"uploads/{sha}/{name}", name)
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    if scheme in ("file", "local"):
        raw = url.split("://", 1)[1] if "://" in url else url
        if not raw.startswith("/"):
            raise refuse("an absolute path (a client uploads files relative to where it runs)")
        real = os.path.realpath(raw)
        if _inside(real, os.path.realpath(state_dir)):
            raise refuse("a file outside the control plane's state directory")
        roots = [os.path.realpath(r) for r in
                 policy.file_roots.get(user, []) + policy.file_roots.get("*", [])]
        if not any(_inside(real, root) for root in roots):
            raise refuse("a file under a directory this control plane lets you read ("
                         + (", ".join(roots) if roots else "none: let the client upload it,"
                            " e.g. --input=./data.txt") + ")")
        return InputSource("file", real, posixpath.basename(real))
    if scheme in ("http", "https"):
        host = urlsplit(url).hostname or ""
        if not host:
            raise refuse("an http(s) URL with a host")
        if host.lower() not in {h.lower() for h in policy.allowed_hosts}:
            try:
                addresses = resolve(host)
            except OSError as exc:
                raise refuse(f"a host that resolves ({type(exc).__name__})") from exc
            if not addresses or not all(_is_public(a) for a in addresses):
                raise refuse("a host with public addresses only (no loopback, link-local, "
                             "private or metadata address) or one an admin allows by name")
        name = posixpath.basename(urlsplit(url).path.rstrip("/"))
        return InputSource("http", url, name)
    if scheme in storage_protocols:
        path = url.split("://", 1)[1]
        norm = posixpath.normpath(path)
        prefix = f"{storage_root.rstrip('/')}/users/{user}/"
        if ".." in path.split("/") or not _inside(norm, prefix.rstrip("/")) or norm == \
                prefix.rstrip("/"):
            raise refuse(f"a {scheme}:// URL under your own prefix {scheme}://{prefix}")
        return InputSource("storage", url, posixpath.basename(norm))
    raise refuse("upload:, file://, http(s):// or "
                 + ", ".join(f"{p}://" for p in storage_protocols if p not in ("file", "local"))
                 + " under your prefix")
