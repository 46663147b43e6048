"""Sky Port's own certificate authority: the CA, the server certificate, user certificates.

Every REST call is authenticated (DESIGN.md, Trust). Users prove who they are
with a client certificate issued by this CA; the subject carries the identity:

    CN = username   (``^[a-z][a-z0-9_-]{0,31}$``)
    OU = role       (``user`` or ``admin``)

Layout of a PKI directory (mode 0700; every private key mode 0600)::

    pki_dir/
        ca.crt  ca.key               10 years, signs everything below
        server.crt  server.key       the REST server (serverAuth only)
        users/<username>.crt|.key    one per user (clientAuth only)

Keys are EC P-256: as strong as RSA-3072 for TLS, and quick enough to make in
tests. They are stored unencrypted because the control plane starts
unattended; the file modes are the protection.

Keeping serverAuth and clientAuth apart matters: OpenSSL checks the extended
key usage during the handshake, so the server's certificate cannot be replayed
as a user's, and :func:`identity_from_cert` refuses any certificate without
clientAuth as a second line of defence.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from skyport.errors import PkiError
from skyport.users import UserRegistry

__all__ = [
    "ROLES",
    "USERNAME_PATTERN",
    "Identity",
    "Role",
    "ca_cert_path",
    "identity_from_cert",
    "init_ca",
    "issue_server_cert",
    "issue_user_cert",
    "server_cert_paths",
    "user_cert_paths",
]

Role = Literal["user", "admin"]
ROLES: tuple[str, ...] = get_args(Role)

USERNAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
_USERNAME_RE = re.compile(USERNAME_PATTERN)
_USERNAME_ALLOWED = (
    f"must match {USERNAME_PATTERN}: a lower-case letter, then at most 31 "
    "lower-case letters, digits, '_' or '-'"
)

CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 730
USER_VALID_DAYS = 365
# Back-date notBefore a little so a peer whose clock is slightly behind does
# not reject a certificate issued a second ago.
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Identity:
    """Who is calling, as proven by a verified client certificate."""

    username: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# --------------------------------------------------------------------------- paths


def ca_cert_path(pki_dir: Path) -> Path:
    return Path(pki_dir) / "ca.crt"


def server_cert_paths(pki_dir: Path) -> tuple[Path, Path]:
    """``(server.crt, server.key)`` inside ``pki_dir``."""
    pki_dir = Path(pki_dir)
    return pki_dir / "server.crt", pki_dir / "server.key"


def user_cert_paths(pki_dir: Path, username: str) -> tuple[Path, Path]:
    """``(users/<username>.crt, users/<username>.key)``; checks the name first.

    The check also keeps a name like ``../ca`` from escaping ``users/``.
    """
    _check_username(username)
    users = Path(pki_dir) / "users"
    return users / f"{username}.crt", users / f"{username}.key"


# --------------------------------------------------------------------------- issuing


def init_ca(pki_dir: Path, *, common_name: str = "Sky Port CA") -> None:
    """Create ``ca.crt`` and ``ca.key`` in ``pki_dir`` (made if missing, mode 0700).

    Refuses to replace an existing CA: every certificate it signed would stop
    working, so that must be a deliberate act (delete the files by hand).
    """
    pki_dir = Path(pki_dir)
    cert_path, key_path = ca_cert_path(pki_dir), pki_dir / "ca.key"
    existing = [p.name for p in (cert_path, key_path) if p.exists()]
    if existing:
        raise PkiError(
            f"a CA already exists in {pki_dir} ({', '.join(existing)}); refusing to "
            "overwrite it, since every certificate it signed would stop working"
        )
    _make_private_dir(pki_dir)

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        # path_length=0: this CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    try:
        # Key first and exclusively: two racing `init_ca` calls cannot both win.
        _write_file(key_path, _key_pem(key), mode=0o600, replace=False)
        _write_file(
            cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, replace=False
        )
    except FileExistsError as exc:
        # Another process made a CA between our check and our write.
        raise PkiError(f"a CA already exists in {pki_dir}; refusing to overwrite it") from exc


def issue_server_cert(pki_dir: Path, hostnames: list[str]) -> tuple[Path, Path]:
    """Write ``server.crt``/``server.key``, valid for ``hostnames``, 127.0.0.1 and localhost.

    An IP address becomes an IPAddress SAN (clients match IPs only against
    those), anything else a DNSName. Replaces an earlier server certificate:
    re-issuing with new hostnames is routine and invalidates nothing else.
    """
    pki_dir = Path(pki_dir)
    ca_cert, ca_key = _load_ca(pki_dir)

    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in [*hostnames, "127.0.0.1", "localhost"]:
        host = str(raw).strip().lower()
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise PkiError(
                f"invalid hostname: {raw!r} (a DNS name like 'head.example.org' or an IP address)"
            )
        if host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME, (hostnames[0] if hostnames else "localhost")[:64]
            ),
        ]
    )
    cert = (
        _leaf_builder(subject, key, ca_cert, ca_key, SERVER_VALID_DAYS)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = server_cert_paths(pki_dir)
    _write_file(key_path, _key_pem(key), mode=0o600, replace=True)
    _write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, replace=True)
    return cert_path, key_path


def issue_user_cert(
    pki_dir: Path, username: str, *, role: Role = "user", overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``users/<username>.crt|.key`` (CN=username, OU=role, clientAuth).

    Refuses to re-issue an existing user unless ``overwrite=True``: silently
    replacing a key would lock the user out of the machine holding the old one.
    The new certificate is registered (``skyport.users``): it is the only one
    of ``username`` the API accepts from now on, so re-issuing revokes the old.
    """
    if role not in ROLES:
        raise PkiError(f"invalid role: {role!r} (one of {', '.join(ROLES)})")
    pki_dir = Path(pki_dir)
    cert_path, key_path = user_cert_paths(pki_dir, username)
    if not overwrite and (cert_path.exists() or key_path.exists()):
        raise PkiError(
            f"a certificate for user {username!r} already exists in {cert_path.parent}; "
            "pass overwrite=True to re-issue it"
        )
    ca_cert, ca_key = _load_ca(pki_dir)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, username),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
    )
    cert = (
        _leaf_builder(subject, key, ca_cert, ca_key, USER_VALID_DAYS)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _make_private_dir(cert_path.parent)
    _write_file(key_path, _key_pem(key), mode=0o600, replace=True)
    _write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644, replace=True)
    UserRegistry(pki_dir).register(username, role, cert.serial_number)
    return cert_path, key_path


# --------------------------------------------------------------------------- reading


def identity_from_cert(cert: x509.Certificate | bytes) -> Identity:
    """Read the identity (CN=username, OU=role) from a user certificate.

    ``cert`` is a certificate object or its DER (PEM is accepted too). This does
    NOT check the signature: call it only on a certificate the TLS handshake
    has already verified against the CA. It does check that the certificate is
    a user certificate (clientAuth, one well-formed CN and OU), so a verified
    certificate of another kind (the server's) never becomes an identity.
    """
    if isinstance(cert, bytes | bytearray | memoryview):
        data = bytes(cert)
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
        except ValueError as exc:
            raise PkiError(f"not an X.509 certificate ({len(data)} bytes): {exc}") from exc

    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise PkiError(
            f"certificate {cert.subject.rfc4514_string()!r} is not a user certificate "
            "(it lacks the clientAuth extended key usage)"
        )

    username = _single_attribute(cert, NameOID.COMMON_NAME, "CN (username)")
    role = _single_attribute(cert, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (role)")
    _check_username(username)
    if role not in ROLES:
        raise PkiError(f"invalid role in certificate OU: {role!r} (one of {', '.join(ROLES)})")
    return Identity(username=username, role=role)  # type: ignore[arg-type]  # checked above


# --------------------------------------------------------------------------- helpers


def _check_username(username: str) -> None:
    if not isinstance(username, str) or not _USERNAME_RE.fullmatch(username):
        raise PkiError(f"invalid username: {username!r} ({_USERNAME_ALLOWED})")


def _single_attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise PkiError(
            f"certificate {cert.subject.rfc4514_string()!r} has {len(values)} {label} "
            "attributes (exactly one is allowed)"
        )
    value = values[0].value
    return value.decode() if isinstance(value, bytes) else value


def _load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = ca_cert_path(pki_dir), Path(pki_dir) / "ca.key"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PkiError(
            f"no CA in {pki_dir}: {exc.filename} is missing (run init_ca first)"
        ) from exc
    except ValueError as exc:
        raise PkiError(f"the CA in {pki_dir} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"the CA key {key_path} is {type(key).__name__}; expected an EC key")
    return cert, key


def _leaf_builder(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    valid_days: int,
) -> x509.CertificateBuilder:
    """The parts every end-entity certificate shares; the caller adds SAN/EKU and signs."""
    now = _now()
    # A leaf never outlives its CA: clients would reject it anyway, and an
    # explicit cap makes the failure date the CA's, not a surprise.
    not_after = min(now + dt.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write_file(path: Path, data: bytes, *, mode: int, replace: bool) -> None:
    """Write ``data`` so that no reader ever sees a partial file or a wider mode.

    The bytes go to a temporary file created with ``mode`` from the start (a
    key is never world-readable, not even for a moment), then appear under
    ``path`` in one step: ``os.replace`` when replacing is allowed, otherwise
    ``os.link``, which fails with FileExistsError instead of clobbering.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # the umask may have narrowed it; set exactly
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
