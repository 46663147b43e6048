"""One-time bootstrap credentials: user-data never carries the job token."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from gates.libcloud.userdata import render_userdata
from skyport.agent.bootstrap import EXCHANGE_PATH, Bootstrap, exchange_credential
from skyport.errors import AuthenticationError, ConfigError
from skyport.gate.bootstrapcred import BootstrapVault, gate_of

TOKEN = "job-token-" + "x" * 33


def test_a_credential_is_exchanged_once_and_only_before_it_expires(tmp_path: Path) -> None:
    vault = BootstrapVault("cloud", tmp_path / "vault.json", ttl_s=60)
    cred = vault.issue(TOKEN, "j1", 2, now=1000.0)
    assert gate_of(cred) == "cloud" and TOKEN not in cred
    # the file alone gives no token: only a hash and the sealed token
    text = (tmp_path / "vault.json").read_text()
    assert TOKEN not in text and cred.split(".")[2] not in text
    assert stat.S_IMODE((tmp_path / "vault.json").stat().st_mode) == 0o600
    again = BootstrapVault("cloud", tmp_path / "vault.json")  # a restarted gate
    got = again.exchange(cred, now=1010.0)
    assert (got.job_id, got.node_rank, got.token) == ("j1", 2, TOKEN)
    with pytest.raises(AuthenticationError, match="used or expired"):
        again.exchange(cred, now=1011.0)
    late = vault.issue(TOKEN, "j1", 0, now=1000.0)
    with pytest.raises(AuthenticationError):
        vault.exchange(late, now=1061.0)
    with pytest.raises(AuthenticationError, match="another gate"):
        vault.exchange(BootstrapVault("other").issue(TOKEN, "j", 0))
    with pytest.raises(AuthenticationError):
        vault.exchange("spb.cloud.guessed")
    vault.issue(TOKEN, "j9", 0)
    assert vault.revoke_job("j9") == 1


def test_user_data_carries_the_credential_and_the_agent_exchanges_it() -> None:
    vault = BootstrapVault("cloud")
    boot = Bootstrap(control_url="https://cp:1", ca_pem="", token="", job_id="j1",
                     node_rank=1, node_name="n1", cluster_id="c",
                     bootstrap_credential=vault.issue(TOKEN, "j1", 1))
    assert TOKEN not in render_userdata(boot)
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append(request.url.path)
        try:
            got = vault.exchange(body["credential"])
        except AuthenticationError as exc:
            return httpx.Response(401, json={"message": str(exc)})
        return httpx.Response(200, json={"job_id": got.job_id, "node_rank": got.node_rank,
                                         "token": got.token})

    mock = httpx.MockTransport(handler)
    done = exchange_credential(boot, transport=mock)
    assert done.token == TOKEN and not done.bootstrap_credential and calls == [EXCHANGE_PATH]
    with pytest.raises(ConfigError, match="refused"):  # a second node replaying it
        exchange_credential(boot, transport=mock)
    assert exchange_credential(replace(boot, token="t")).token == "t"  # nothing to exchange
