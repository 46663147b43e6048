"""Sky Port's CA: issuing certificates, reading identities back, refusing mistakes.

Also covers the per-job tokens (``skyport.tokens``), the other half of REST
authentication.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import stat
import string
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from skyport import tokens
from skyport.errors import PkiError
from skyport.pki import (
    Identity,
    ca_cert_path,
    identity_from_cert,
    init_ca,
    issue_server_cert,
    issue_user_cert,
)


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    path = tmp_path / "pki"
    init_ca(path)
    return path


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# --------------------------------------------------------------------------- CA


def test_init_ca_makes_a_ten_year_ca_with_a_private_key(pki_dir: Path) -> None:
    ca = _load(pki_dir / "ca.crt")

    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Sky Port CA"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)
    ca.verify_directly_issued_by(ca)
    assert _mode(pki_dir / "ca.key") == 0o600
    assert _mode(pki_dir) == 0o700


def test_init_ca_refuses_to_overwrite_and_leaves_the_ca_alone(pki_dir: Path) -> None:
    before = (pki_dir / "ca.crt").read_bytes(), (pki_dir / "ca.key").read_bytes()

    with pytest.raises(PkiError, match="already exists"):
        init_ca(pki_dir)

    assert ((pki_dir / "ca.crt").read_bytes(), (pki_dir / "ca.key").read_bytes()) == before


def test_init_ca_refuses_when_only_the_key_is_left(tmp_path: Path) -> None:
    tmp_path.joinpath("ca.key").write_text("an old key")

    with pytest.raises(PkiError, match="ca.key"):
        init_ca(tmp_path)


def test_issuing_without_a_ca_says_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="init_ca"):
        issue_user_cert(tmp_path, "alice", role="user")


# --------------------------------------------------------------------------- server


def test_server_cert_names_every_host_plus_loopback(pki_dir: Path) -> None:
    cert_path, key_path = issue_server_cert(pki_dir, ["head.example.org", "10.0.0.5"])

    cert = _load(cert_path)
    cert.verify_directly_issued_by(_load(ca_cert_path(pki_dir)))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"head.example.org", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    }
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _mode(key_path) == 0o600


def test_server_cert_rejects_a_malformed_hostname(pki_dir: Path) -> None:
    with pytest.raises(PkiError, match="hostname.*'bad host'"):
        issue_server_cert(pki_dir, ["bad host"])


# --------------------------------------------------------------------------- users


def test_user_cert_carries_name_role_and_client_auth(pki_dir: Path) -> None:
    cert_path, key_path = issue_user_cert(pki_dir, "alice", role="admin")

    assert cert_path == pki_dir / "users" / "alice.crt"
    assert key_path == pki_dir / "users" / "alice.key"
    assert _mode(key_path) == 0o600
    cert = _load(cert_path)
    cert.verify_directly_issued_by(_load(ca_cert_path(pki_dir)))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "admin"
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # The key on disk is the one the certificate is for.
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == cert.public_key()


@pytest.mark.parametrize("username", ["a", "bob", "a-b_9", "x" * 32])
def test_valid_usernames_are_accepted(pki_dir: Path, username: str) -> None:
    cert_path, _ = issue_user_cert(pki_dir, username, role="user")
    assert identity_from_cert(_load(cert_path)) == Identity(username, "user")


@pytest.mark.parametrize(
    "username",
    ["", "Alice", "1alice", "_alice", "al ice", "alice\n", "../ca", "x" * 33, "alïce"],
)
def test_bad_usernames_are_refused_naming_field_value_and_rule(
    pki_dir: Path, username: str
) -> None:
    with pytest.raises(PkiError) as info:
        issue_user_cert(pki_dir, username, role="user")

    message = str(info.value)
    assert "username" in message
    assert repr(username) in message
    assert "^[a-z][a-z0-9_-]{0,31}$" in message
    assert not (pki_dir / "users").exists() or not any((pki_dir / "users").iterdir())


def test_unknown_role_is_refused(pki_dir: Path) -> None:
    with pytest.raises(PkiError, match="role: 'root'.*user, admin"):
        issue_user_cert(pki_dir, "alice", role="root")  # type: ignore[arg-type]


def test_reissue_is_refused_unless_overwrite(pki_dir: Path) -> None:
    cert_path, key_path = issue_user_cert(pki_dir, "alice", role="user")
    first_cert, first_key = cert_path.read_bytes(), key_path.read_bytes()

    with pytest.raises(PkiError, match="overwrite=True"):
        issue_user_cert(pki_dir, "alice", role="admin")
    assert cert_path.read_bytes() == first_cert

    issue_user_cert(pki_dir, "alice", role="admin", overwrite=True)
    assert key_path.read_bytes() != first_key
    assert identity_from_cert(_load(cert_path)) == Identity("alice", "admin")
    assert _mode(key_path) == 0o600


# --------------------------------------------------------------------------- identities


def test_identity_from_der_pem_and_object_agree(pki_dir: Path) -> None:
    cert_path, _ = issue_user_cert(pki_dir, "carol", role="user")
    cert = _load(cert_path)

    der = cert.public_bytes(serialization.Encoding.DER)
    assert identity_from_cert(der) == identity_from_cert(cert_path.read_bytes())
    assert identity_from_cert(der) == identity_from_cert(cert) == Identity("carol", "user")
    assert not identity_from_cert(der).is_admin


def test_server_cert_is_not_an_identity(pki_dir: Path) -> None:
    cert_path, _ = issue_server_cert(pki_dir, ["head"])

    with pytest.raises(PkiError, match="clientAuth"):
        identity_from_cert(_load(cert_path))


def test_garbage_is_not_an_identity() -> None:
    with pytest.raises(PkiError, match="not an X.509 certificate"):
        identity_from_cert(b"\x30\x03not a certificate")


def _client_cert_with_subject(pki_dir: Path, subject: x509.Name) -> x509.Certificate:
    """A clientAuth certificate signed by the CA but not made by issue_user_cert."""
    ca = _load(ca_cert_path(pki_dir))
    ca_key = serialization.load_pem_private_key((pki_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("attributes", "match"),
    [
        ([(NameOID.COMMON_NAME, "alice"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "root")], "role"),
        ([(NameOID.COMMON_NAME, "alice")], "OU"),
        ([(NameOID.COMMON_NAME, "Alice"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "user")], "username"),
        (
            [
                (NameOID.COMMON_NAME, "alice"),
                (NameOID.COMMON_NAME, "bob"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "user"),
            ],
            "CN",
        ),
    ],
)
def test_identity_refuses_malformed_subjects(
    pki_dir: Path, attributes: list[tuple[x509.ObjectIdentifier, str]], match: str
) -> None:
    subject = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    cert = _client_cert_with_subject(pki_dir, subject)

    with pytest.raises(PkiError, match=match):
        identity_from_cert(cert)


# --------------------------------------------------------------------------- job tokens


def test_new_tokens_are_long_url_safe_and_unique() -> None:
    made = {tokens.new_token() for _ in range(100)}

    assert len(made) == 100
    allowed = set(string.ascii_letters + string.digits + "-_")
    assert all(len(t) == 43 and set(t) <= allowed for t in made)


def test_the_store_keeps_a_hash_that_matches_only_its_token() -> None:
    token = tokens.new_token()
    stored = tokens.hash_token(token)

    assert stored == hashlib.sha256(token.encode()).hexdigest()
    assert token not in stored
    assert tokens.token_matches(token, stored)
    assert not tokens.token_matches(tokens.new_token(), stored)
    assert not tokens.token_matches("", stored)


def test_tokens_equal_handles_any_client_input() -> None:
    assert tokens.tokens_equal("abc", "abc")
    assert not tokens.tokens_equal("abc", "abd")
    assert not tokens.tokens_equal("abc", "ab")
    assert not tokens.tokens_equal("ünïcode", "abc")  # must not raise TypeError
