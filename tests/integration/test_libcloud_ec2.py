"""The libcloud gate on libcloud's own EC2 driver, against moto's EC2 server.

Everything goes through the real API path: libcloud's ``EC2NodeDriver``
builds, signs and sends RunInstances / DescribeInstances (with tag filters) /
TerminateInstances to the local moto server (``s3_server``: one moto server
serves every service), and boto3 checks what moto holds.  Nothing ever
reaches AWS: the driver gets ``host``/``port``/``secure=False`` (its own
keyword arguments), boto3 gets ``endpoint_url``, and the credentials are
dummies.

Two things make libcloud's EC2 driver talk to moto, neither a patch of
libcloud:

* ``signature_version="4"`` (a driver keyword argument): libcloud signs EC2
  in us-east-1 with SigV2, whose requests carry no ``Authorization`` header;
  moto's server then cannot tell the service from ``127.0.0.1`` and hands the
  request to S3.  A SigV4 header names ``ec2`` in its credential scope.
* ``MotoEC2NodeDriver`` below: moto 5 serialises EC2 replies with botocore's
  ``xmlNamespace`` (``http://ec2.amazonaws.com/doc/2016-11-15``), AWS and
  libcloud use the same URI with a trailing ``/``; libcloud's namespaced
  XPath then finds nothing (no images, no instances).  The subclass only swaps
  the response class for one that restores the slash before parsing; request
  building, signing, parsing and every compute call are libcloud's EC2 code.

moto's instances never boot anything, so no agent ever dials in: the gate
reports what the cloud says (moto shows a new instance ``running`` at once,
so the cluster is ``running`` and each node ``alive``), and no test waits for
an agent.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from libcloud.compute.drivers.ec2 import EC2Connection, EC2NodeDriver, EC2Response
from libcloud.compute.types import Provider

from gates.libcloud.config import driver_class
from gates.libcloud.gate import LibcloudGate
from skyport.config import StateDir
from skyport.gate import ClusterRequest, make_gate
from tests.conformance.gate_suite import ca_pem_for_tests

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KEY_VAR, SECRET_VAR = "SKYPORT_TEST_EC2_KEY", "SKYPORT_TEST_EC2_SECRET"
DUMMY_KEY = "testing-key"  # moto accepts any key; this is the conftest's dummy one
DUMMY_SECRET = "moto-dummy-secret-" + "q9" * 10  # distinctive: grep-able in user-data
FLAVOR, PRICE = "t3.medium", 0.0416
CONTROL_URL = "https://skyport-control.test:8443"
_IDS = itertools.count()

_MOTO_NS = 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15"'
_AWS_NS = 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'


class _MotoEC2Response(EC2Response):
    def parse_body(self):  # type: ignore[no-untyped-def]
        if isinstance(self.body, str) and _MOTO_NS in self.body:
            self.body = self.body.replace(_MOTO_NS, _AWS_NS, 1)
        return super().parse_body()


class _MotoEC2Connection(EC2Connection):
    responseCls = _MotoEC2Response


class MotoEC2NodeDriver(EC2NodeDriver):
    """libcloud's EC2 driver, reading moto's namespace (see the module docstring)."""

    connectionCls = _MotoEC2Connection


DRIVER = f"{__name__}:MotoEC2NodeDriver"


@pytest.fixture(scope="module")
def endpoint(s3_server: str) -> tuple[str, int]:
    parts = urlsplit(s3_server)
    assert parts.scheme == "http" and parts.hostname == "127.0.0.1" and parts.port
    return parts.hostname, parts.port


@pytest.fixture(scope="module")
def ec2(s3_server: str) -> Any:
    """boto3's view of moto's EC2 (the checks never trust the gate's own reading)."""
    import boto3

    return boto3.client("ec2", endpoint_url=s3_server, region_name="us-east-1",
                        aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_SECRET)


@pytest.fixture(scope="module")
def image_id(ec2: Any) -> str:
    """A Linux AMI that moto ships."""
    images = ec2.describe_images(Owners=["amazon"],
                                 Filters=[{"Name": "architecture", "Values": ["x86_64"]}])
    ids = sorted(i["ImageId"] for i in images["Images"] if i.get("Platform") != "windows")
    assert ids, "moto lists no Linux AMI"
    return ids[0]


@pytest.fixture
def config(endpoint: tuple[str, int], image_id: str, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv(KEY_VAR, DUMMY_KEY)
    monkeypatch.setenv(SECRET_VAR, DUMMY_SECRET)
    prices = tmp_path / "ec2-prices.json"
    prices.write_text(json.dumps({FLAVOR: PRICE, "c6i.large": 0.085}))
    host, port = endpoint
    return {"provider": DRIVER, "region": "us-east-1", "image": image_id,
            "flavors": [FLAVOR], "price_file": str(prices), "max_nodes": 4,
            "credentials_env": {"key": KEY_VAR, "secret": SECRET_VAR},
            "driver_args": {"host": host, "port": port, "secure": False,
                            "signature_version": "4"},
            "poll_s": 0.2, "create_timeout_s": 20, "delete_timeout_s": 20, "boot_s": 90}


@pytest.fixture
def open_gate(config: dict[str, Any], tmp_path: Path) -> Iterator[Callable[[], LibcloudGate]]:
    """A new gate instance on the same state folder each call (a restarted control plane)."""
    gates: list[LibcloudGate] = []

    def open_() -> LibcloudGate:
        gate = make_gate("aws", "libcloud", config, StateDir(tmp_path / "home"))
        assert isinstance(gate, LibcloudGate)
        gates.append(gate)
        return gate

    yield open_
    if gates:  # never leave instances behind on the shared moto server
        for info in gates[-1].list_clusters():
            gates[-1].delete_cluster(info.cluster_id)


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    return ca_pem_for_tests(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def make_request(ca_pem: str) -> Callable[..., ClusterRequest]:
    def make(**overrides: Any) -> ClusterRequest:
        job_id = f"ec2j{next(_IDS)}{secrets.token_hex(3)}"
        fields: dict[str, Any] = dict(
            cluster_id=f"{job_id}-0", job_id=job_id, owner="alice", nodes=2,
            cpus_per_node=2, gpus_per_node=0, mem_mb=None, flavor=None,
            control_url=CONTROL_URL, ca_pem=ca_pem, token="tok-" + secrets.token_hex(16))
        return ClusterRequest(**{**fields, **overrides})

    return make


def _instances(ec2: Any, **tags: str) -> list[dict[str, Any]]:
    """moto's instances with all these tags, terminated ones too."""
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    out = ec2.describe_instances(Filters=filters)
    return [i for r in out["Reservations"] for i in r["Instances"]]


def _live(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in instances if i["State"]["Name"] not in ("terminated", "shutting-down")]


def test_driver_is_libclouds_ec2_driver(open_gate: Callable[[], LibcloudGate]) -> None:
    assert driver_class("EC2") is EC2NodeDriver and driver_class("ec2") is EC2NodeDriver
    gate = open_gate()
    assert isinstance(gate.driver, EC2NodeDriver) and gate.driver.type == Provider.EC2
    conn = gate.driver.connection
    assert (conn.host, conn.secure) == ("127.0.0.1", False)  # never AWS
    assert gate.driver.key == DUMMY_KEY and gate.driver.secret == DUMMY_SECRET
    (flavor,) = gate.flavors()
    assert (flavor.name, flavor.cpus, flavor.mem_mb, flavor.gpus) == (FLAVOR, 2, 4096, 0)
    assert flavor.price_per_hour == PRICE and flavor.boot_s == 90
    cap = gate.capacity()
    assert (cap.total_cpus, cap.free_cpus) == (8, 8)


def test_cluster_lifecycle_through_moto(
    open_gate: Callable[[], LibcloudGate], make_request: Callable[..., ClusterRequest],
    ec2: Any, image_id: str,
) -> None:
    gate = open_gate()
    req = make_request()
    info = gate.create_cluster(req)
    # moto shows new instances "running" at once: the cluster is up as far as the cloud says
    assert info.state == "running" and info.job_id == req.job_id and info.flavor == FLAVOR
    assert [n.rank for n in info.nodes] == [0, 1] and all(n.alive for n in info.nodes)
    assert all(n.details["state"] == "running" for n in info.nodes)
    assert info.price_per_hour == pytest.approx(2 * PRICE)

    # moto holds two instances with our tags, image and size
    found = _instances(ec2, **{"skyport-job": req.job_id, "skyport-cluster": req.cluster_id})
    assert len(found) == 2 and len(_live(found)) == 2
    assert {i["InstanceId"] for i in found} == {n.details["id"] for n in info.nodes}
    for inst in found:
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["skyport-gate"] == "aws" and tags["skyport-scope"] == gate.scope
        assert tags["skyport-flavor"] == FLAVOR and tags["skyport-rank"] in ("0", "1")
        assert tags["Name"] == f"skyport-{req.cluster_id}-n{tags['skyport-rank']}"
        assert inst["ImageId"] == image_id and inst["InstanceType"] == FLAVOR
        # the user-data moto was given: the bootstrap, never the cloud credentials
        attr = ec2.describe_instance_attribute(InstanceId=inst["InstanceId"],
                                               Attribute="userData")
        script = base64.b64decode(attr["UserData"]["Value"]).decode()
        assert script.startswith("#!/bin/bash") and "skyport.agent" in script
        assert CONTROL_URL in script and req.token not in script and "spb." in script
        assert f'"node_rank": {tags["skyport-rank"]}' in script
        assert DUMMY_SECRET not in script and SECRET_VAR not in script
        assert len(script.encode()) < 16 * 1024  # EC2's user-data limit

    # describe / list find them by tag
    again = gate.describe_cluster(req.cluster_id)
    assert again.state == "running" and again.nodes == info.nodes
    assert [c.cluster_id for c in gate.list_clusters()] == [req.cluster_id]
    assert gate.capacity().free_cpus == 2 * 2  # 4 nodes of 2 cpus, 2 taken

    gate.delete_cluster(req.cluster_id)
    assert gate.list_clusters() == []
    assert gate.describe_cluster(req.cluster_id).state == "gone"
    left = _instances(ec2, **{"skyport-cluster": req.cluster_id})
    assert len(left) == 2 and _live(left) == []  # terminated (EC2 lists them a while)


def test_a_new_gate_instance_sees_and_deletes_the_cluster(
    open_gate: Callable[[], LibcloudGate], make_request: Callable[..., ClusterRequest],
    ec2: Any,
) -> None:
    first = open_gate()
    req = make_request()
    first.create_cluster(req)
    del first  # nothing is kept in process memory: the cloud is the record

    second = open_gate()
    (info,) = second.list_clusters()
    assert (info.cluster_id, info.job_id, info.state) == (req.cluster_id, req.job_id,
                                                          "running")
    assert second.describe_cluster(req.cluster_id).nodes == info.nodes
    # a retried create of the same request finds the existing nodes instead of doubling them
    assert second.create_cluster(req).nodes == info.nodes
    assert len(_live(_instances(ec2, **{"skyport-cluster": req.cluster_id}))) == 2

    second.delete_cluster(req.cluster_id)
    assert second.list_clusters() == [] and open_gate().list_clusters() == []
    assert _live(_instances(ec2, **{"skyport-cluster": req.cluster_id})) == []


def test_gates_on_other_state_folders_do_not_see_each_other(
    config: dict[str, Any], make_request: Callable[..., ClusterRequest], tmp_path: Path,
) -> None:
    """Same account, same gate name, two control planes: the scope tag keeps them apart."""
    a = make_gate("aws", "libcloud", config, StateDir(tmp_path / "a"))
    b = make_gate("aws", "libcloud", config, StateDir(tmp_path / "b"))
    req = make_request(nodes=1)
    a.create_cluster(req)
    try:
        assert b.list_clusters() == [] and b.describe_cluster(req.cluster_id).state == "gone"
        assert [c.cluster_id for c in a.list_clusters()] == [req.cluster_id]
    finally:
        a.delete_cluster(req.cluster_id)
    assert a.list_clusters() == []


def test_the_cloud_filters_by_tag_and_foreign_instances_are_left_alone(
    open_gate: Callable[[], LibcloudGate], make_request: Callable[..., ClusterRequest],
    ec2: Any, image_id: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Other instances of the account (untagged, or another gate's) are never listed
    as ours nor touched; the gate asks EC2 for its own tags, not for everything."""
    foreign = ec2.run_instances(ImageId=image_id, InstanceType=FLAVOR, MinCount=1, MaxCount=1,
                                TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                    {"Key": "skyport-gate", "Value": "aws"},
                                    {"Key": "skyport-scope", "Value": "someone-else"},
                                    {"Key": "skyport-cluster", "Value": "theirs-0"}]}])
    plain = ec2.run_instances(ImageId=image_id, InstanceType=FLAVOR, MinCount=1, MaxCount=1)
    others = [i["InstanceId"] for r in (foreign, plain) for i in r["Instances"]]
    gate = open_gate()
    calls: list[dict[str, Any]] = []
    real = gate.driver.list_nodes

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs)
        nodes = real(**kwargs)
        assert not {n.id for n in nodes} & set(others)  # EC2 itself left them out
        return nodes

    monkeypatch.setattr(gate.driver, "list_nodes", spy)
    try:
        assert gate.list_clusters() == []
        req = make_request(nodes=1)
        gate.create_cluster(req)
        assert [c.cluster_id for c in gate.list_clusters()] == [req.cluster_id]
        gate.delete_cluster(req.cluster_id)
        assert gate.list_clusters() == []
        assert calls and all(c["ex_filters"]["tag:skyport-scope"] == gate.scope
                             and c["ex_filters"]["tag:skyport-gate"] == "aws" for c in calls)
        states = ec2.describe_instances(InstanceIds=others)["Reservations"]
        assert {i["State"]["Name"] for r in states for i in r["Instances"]} == {"running"}
    finally:
        ec2.terminate_instances(InstanceIds=others)
