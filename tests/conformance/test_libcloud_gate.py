"""The libcloud gate, driving the local-process libcloud driver, runs the suite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gates.libcloud.localdriver import LocalProcessNodeDriver
from skyport.agent.procfs import is_alive
from skyport.config import StateDir
from skyport.errors import ConfigError, GateError
from skyport.gate import ClusterInfo, Gate, make_gate
from tests.conformance.gate_suite import GateConformance, NodeFacts

pytestmark = pytest.mark.timeout(120)

DRIVER = "gates.libcloud.localdriver:LocalProcessNodeDriver"


def libcloud_config(**overrides: Any) -> dict[str, Any]:
    return {"provider": DRIVER, "image": "local-python",
            "flavors": ["lp.small", "lp.medium"], "max_nodes": 2, "poll_s": 0.1,
            "create_timeout_s": 30, "delete_timeout_s": 10, "boot_s": 1,
            "driver_args": {"kill_grace_s": 1.0}, **overrides}


class TestLibcloudGate(GateConformance):
    fill_limit = 2

    @pytest.fixture
    def reopen_gate(self, tmp_path: Path) -> Callable[[], Gate]:
        return lambda: make_gate("cloud", "libcloud", libcloud_config(),
                                 StateDir(tmp_path / "home"))

    @pytest.fixture
    def gate(self, reopen_gate: Callable[[], Gate]) -> Iterator[Gate]:
        gate = reopen_gate()
        yield gate
        for info in gate.list_clusters():
            gate.delete_cluster(info.cluster_id)

    @pytest.fixture
    def node_probe(self, tmp_path: Path) -> Callable[[ClusterInfo], list[NodeFacts]]:
        """From a driver of our own on the same folder and /proc."""

        def probe(info: ClusterInfo) -> list[NodeFacts]:
            driver = LocalProcessNodeDriver(root=str(tmp_path / "home" / "gates" / "cloud"
                                                     / "localdriver"))
            return [NodeFacts(alive=is_alive(n.extra["pid"]) if n.extra["pid"] else False,
                              job_id=n.extra["tags"]["skyport-job"])
                    for n in driver.list_nodes()
                    if n.extra["tags"].get("skyport-cluster") == info.cluster_id]

        return probe


class FlakyDriver(LocalProcessNodeDriver):
    """Its second create_node of every cluster fails (a stock-out midway)."""

    def create_node(self, name, size, image, **kwargs):  # type: ignore[no-untyped-def]
        if name.endswith("-n1"):
            raise RuntimeError("InsufficientInstanceCapacity")
        return super().create_node(name, size, image, **kwargs)


def test_half_created_cluster_is_deleted_before_the_error(
    tmp_path: Path, make_request: Callable[..., Any]
) -> None:
    cfg = libcloud_config(provider=f"{__name__}:FlakyDriver")
    gate = make_gate("cloud", "libcloud", cfg, StateDir(tmp_path / "home"))
    req = make_request(nodes=2)
    with pytest.raises(GateError, match="InsufficientInstanceCapacity"):
        gate.create_cluster(req)
    assert gate.list_clusters() == [] and gate.driver.list_nodes() == []


def test_userdata_carries_a_one_time_credential_never_the_token_or_cloud_credentials(
    tmp_path: Path, make_request: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONF_CLOUD_SECRET", "top-secret-credential")
    gate = make_gate("cloud", "libcloud", libcloud_config(
        credentials_env={"key": "CONF_CLOUD_SECRET"}), StateDir(tmp_path / "home"))
    assert gate.driver.key == "top-secret-credential"  # resolved on the control plane
    req = make_request()
    try:
        gate.create_cluster(req)
        (script,) = (tmp_path / "home").rglob("user-data")
        text = script.read_text()
        assert text.startswith("#!/bin/bash") and "skyport.agent" in text
        # user-data outlives the boot: it holds a bootstrap credential that the agent
        # exchanges once, never the job token itself
        assert req.token not in text and "spb.cloud." in text and "pip install" in text
        assert "top-secret-credential" not in text
        (node,) = gate.driver.list_nodes()
        assert node.extra["tags"]["skyport-job"] == req.job_id
        with open(f"/proc/{node.extra['pid']}/environ", "rb") as f:
            assert b"top-secret-credential" not in f.read()
    finally:
        gate.delete_cluster(req.cluster_id)


def test_bad_config_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="driver_args must not hold 'secret'"):
        make_gate("c", "libcloud", libcloud_config(driver_args={"secret": "x"}),
                  StateDir(tmp_path))
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        make_gate("c", "libcloud", libcloud_config(credentials_env={"key": "NOPE_NOT_SET"}),
                  StateDir(tmp_path))
    gate = make_gate("c", "libcloud", libcloud_config(flavors=["m5.huge"]), StateDir(tmp_path))
    with pytest.raises(ConfigError, match="m5.huge"):
        gate.flavors()
