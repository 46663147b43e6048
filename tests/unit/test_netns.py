"""Names and addresses of the nodes' network namespaces (pure parts; skyport.gate.netns)."""

from __future__ import annotations

import os
import shutil

import pytest

from skyport.agent.bootstrap import Bootstrap
from skyport.agent.main import payload_env
from skyport.errors import ConfigError, GateError
from skyport.gate import netns
from skyport.models import JobSpec


def test_node_addresses_are_distinct_and_in_the_private_subnet() -> None:
    addrs = [netns.node_address(r) for r in range(1024)]
    assert addrs[:3] == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    assert addrs[255] == "10.77.1.0" and len(set(addrs)) == 1024


def test_names_fit_linux_limits_and_belong_to_their_gate(monkeypatch) -> None:
    monkeypatch.setattr(netns, "require", lambda *a: "/sbin/ip")
    cid = "c" * 128  # the longest cluster id a gate accepts
    a = netns.ClusterNet("/gates/a", cid, 1024)
    b = netns.ClusterNet("/gates/b", cid, 1024)
    assert len(a.bridge) <= 15 and len(a.veth(1023)) <= 15  # IFNAMSIZ - 1
    assert len({a.veth(r) for r in range(1024)}) == 1024
    assert a.bridge != b.bridge and a.namespace(0) != b.namespace(0)
    assert a.namespace(3) == f"skyport-{netns.gate_tag('/gates/a')}-{cid}-n3"
    assert a.alias == f"skyport {netns.gate_tag('/gates/a')} {cid}"


def test_the_control_address_is_what_the_url_names() -> None:
    assert netns.control_listen_address("https://127.0.0.1:8443/x") == ("127.0.0.1", 8443)
    assert netns.control_listen_address("https://[::1]:9/") == ("::1", 9)
    assert netns.control_listen_address("https://10.1.2.3") == ("10.1.2.3", 443)
    with pytest.raises(GateError, match="names no host"):
        netns.control_listen_address("file:///x")


def test_namespace_network_is_refused_without_root_or_ip(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match='network = "namespace" needs root'):
        netns.require()
    assert netns.reap("/gates/a", set()) == []  # nothing to do, nothing tried
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(ConfigError, match="needs iproute2"):
        netns.require()


def test_the_payload_learns_its_nodes_interface_only_when_it_has_one() -> None:
    spec = JobSpec(script="#!/bin/sh\ntrue\n")
    boot = Bootstrap(control_url="https://x", ca_pem="", token="t", job_id="j")
    assert "SKYPORT_NET_IFACE" not in payload_env(boot, spec, {})
    boot = Bootstrap(control_url="https://x", ca_pem="", token="t", job_id="j",
                     net_iface="sky0")
    assert payload_env(boot, spec, {})["SKYPORT_NET_IFACE"] == "sky0"


def test_the_libcloud_local_driver_refuses_namespaces_it_cannot_make(monkeypatch,
                                                                       tmp_path) -> None:
    from gates.libcloud.localdriver import LocalProcessNodeDriver
    from skyport.config import StateDir
    from skyport.gate import make_gate

    with pytest.raises(ConfigError, match="network 'bridge' is not one of 'host', 'namespace'"):
        LocalProcessNodeDriver(root=str(tmp_path / "d"), network="bridge")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    config = {"provider": "gates.libcloud.localdriver:LocalProcessNodeDriver",
              "driver_args": {"network": "namespace"}, "image": "local-python",
              "flavors": ["lp.small"]}
    with pytest.raises(ConfigError, match='gate cloud: libcloud local-process driver: '
                                          'network = "namespace" needs root'):
        make_gate("cloud", "libcloud", config, StateDir(tmp_path / "home"))
    assert LocalProcessNodeDriver(root=str(tmp_path / "d")).node_iface == ""  # host: as before


def test_the_ray_gate_network_setting_is_checked() -> None:
    from pydantic import ValidationError

    from gates.ray.config import RayGateConfig

    assert RayGateConfig().network == "host"
    with pytest.raises(ValidationError, match="network"):
        RayGateConfig(network="bridge")
