"""Input URLs as attacks: what another user, a payload or a curious user may not fetch."""

from __future__ import annotations

from pathlib import Path

import pytest

from skyport.config import InputPolicy
from skyport.core.inputs import check_input_url
from skyport.errors import ValidationError

SHA = "a" * 64


def check(url: str, tmp_path: Path, user: str = "alice", policy: InputPolicy | None = None,
          resolve: dict[str, list[str]] | None = None):  # type: ignore[no-untyped-def]
    table = resolve or {}
    return check_input_url(url, user, policy or InputPolicy(), state_dir=tmp_path / "home",
                           storage_protocols=("s3", "s3a"), storage_root="bucket/sp",
                           resolve=lambda host: table[host])


@pytest.mark.parametrize("target", ["pki/ca.key", "pki/users/admin.key", "jobs.db",
                                    "storage/jobs/other/outputs/secret.txt", "missing"])
def test_the_state_directory_is_never_an_input(tmp_path: Path, target: str) -> None:
    home = tmp_path / "home"
    (home / "pki").mkdir(parents=True)
    (home / "pki" / "ca.key").write_text("KEY")
    everything = InputPolicy(file_roots={"*": ["/"]})  # even an admin's widest grant
    for url in (f"file://{home}/{target}", f"{home}/{target}",
                f"file://{tmp_path}/elsewhere/../home/{target}"):
        with pytest.raises(ValidationError) as info:
            check(url, tmp_path, policy=everything)
        # the same answer whether or not the file exists: nothing to probe with
        assert info.value.allowed == "a file outside the control plane's state directory"


def test_a_symlink_into_the_state_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "home" / "pki").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path / "home" / "pki")
    policy = InputPolicy(file_roots={"alice": [str(tmp_path / "data")]})
    with pytest.raises(ValidationError, match="state directory"):
        check(f"file://{tmp_path}/data/link/ca.key", tmp_path, policy=policy)


def test_file_inputs_need_a_root_granted_to_that_user(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ValidationError, match="none: let the client upload it"):
        check(f"file://{data}/x", tmp_path)  # the default: no file:// at all
    policy = InputPolicy(file_roots={"alice": [str(data)]})
    assert check(f"file://{data}/x", tmp_path, policy=policy).kind == "file"
    with pytest.raises(ValidationError, match="directory this control plane lets you read"):
        check(f"file://{data}/x", tmp_path, user="bob", policy=policy)
    with pytest.raises(ValidationError, match="absolute path"):
        check("../x", tmp_path, policy=policy)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.5", "172.16.0.1",
                                     "169.254.169.254", "::1", "fe80::1", "fd00::1",
                                     "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1"])
def test_http_inputs_to_local_private_or_metadata_addresses_are_refused(
        tmp_path: Path, address: str) -> None:
    with pytest.raises(ValidationError, match="public addresses only"):
        check("http://h.example/data", tmp_path, resolve={"h.example": [address]})


def test_a_host_with_one_private_address_among_public_ones_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="public addresses only"):
        check("https://h.example/d", tmp_path, resolve={"h.example": ["8.8.8.8", "10.0.0.1"]})


def test_public_hosts_and_hosts_an_admin_allows_are_fetched(tmp_path: Path) -> None:
    assert check("https://h.example/a/d.nc", tmp_path,
                 resolve={"h.example": ["8.8.8.8"]}).name == "d.nc"
    policy = InputPolicy(allowed_hosts=["data.internal"])
    assert check("http://data.internal/x", tmp_path, policy=policy).kind == "http"


def test_object_store_inputs_only_under_the_users_own_prefix(tmp_path: Path) -> None:
    assert check("s3://bucket/sp/users/alice/in/x.nc", tmp_path).kind == "storage"
    for url in ("s3://bucket/sp/users/bob/in/x.nc", "s3://bucket/sp/jobs/j1/outputs/x",
                "s3://bucket/sp/users/alice/../bob/x", "s3://other-bucket/x",
                "s3://bucket/sp/users/alice"):
        with pytest.raises(ValidationError, match="under your own prefix"):
            check(url, tmp_path)


def test_uploads_name_a_digest_and_a_plain_file_name(tmp_path: Path) -> None:
    source = check(f"upload:{SHA}/mesh.dat", tmp_path)
    assert (source.kind, source.url, source.name) == ("upload", f"uploads/{SHA}/mesh.dat",
                                                      "mesh.dat")
    for bad in (f"upload:{SHA}/../x", "upload:abc/x", f"upload:{SHA}/a/b", f"upload:{SHA}/"):
        with pytest.raises(ValidationError):
            check(bad, tmp_path)


def test_other_schemes_are_refused(tmp_path: Path) -> None:
    for url in ("ftp://h/x", "gopher://h/x", "memory://x", "gs://b/x"):
        with pytest.raises(ValidationError, match="upload:, file://, http"):
            check(url, tmp_path)
