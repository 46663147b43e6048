"""GateRunner: what every gate gets, driven on a small in-memory test gate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from skyport.errors import (
    CapacityError,
    ConfigError,
    GateError,
    NeverFitsError,
    UnsupportedFeatureError,
    ValidationError,
)
from skyport.gate import (
    Capacity,
    ClusterInfo,
    ClusterRequest,
    Flavor,
    Gate,
    GateCapabilities,
    GateConfig,
    GateFeature,
)
from skyport.gate.environment import agent_environment, is_allowed, skyport_root
from skyport.gate.runner import GateRunner, RetryPolicy, with_retries


@dataclass
class Script:
    """What the test gate does on its next calls: exceptions to raise, in order."""

    create: list[BaseException] = field(default_factory=list)
    delete: list[BaseException] = field(default_factory=list)
    build_before_failing: bool = False  # a failed create leaves its cluster behind


class TinyGate(Gate):
    """Two flavors, 4 nodes at most, 16 cpus and 2 GPUs in all; clusters in a dict."""

    type_name = "tiny"
    capabilities: ClassVar[GateCapabilities] = GateCapabilities(unsupported={
        GateFeature.KILL_NODE: "tiny nodes cannot die",
        GateFeature.PREEMPT: "nobody takes tiny nodes back",
    })

    def __init__(self, name: str = "tiny1", idle_timeout_s: float = 30.0) -> None:
        super().__init__(name, GateConfig(), state_dir=None)
        self.clusters: dict[str, ClusterRequest] = {}
        self.script = Script()
        self.calls: list[str] = []
        self.idle_timeout_s = idle_timeout_s

    def flavors(self) -> list[Flavor]:
        return [Flavor("s", cpus=2, mem_mb=1024, max_nodes=4),
                Flavor("g", cpus=4, mem_mb=4096, gpus=1, max_nodes=2)]

    def capacity(self) -> Capacity:
        return Capacity(total_cpus=16, free_cpus=16, total_gpus=2, free_gpus=2)

    def create_cluster(self, request: ClusterRequest) -> ClusterInfo:
        self.calls.append("create")
        if self.script.create:
            if self.script.build_before_failing:
                self.clusters[request.cluster_id] = request
            raise self.script.create.pop(0)
        self.clusters[request.cluster_id] = request
        return self.describe_cluster(request.cluster_id)

    def describe_cluster(self, cluster_id: str) -> ClusterInfo:
        req = self.clusters.get(cluster_id)
        if req is None:
            return ClusterInfo(cluster_id, "", self.name, "", "gone")
        return ClusterInfo(cluster_id, req.job_id, self.name, "s", "running")

    def delete_cluster(self, cluster_id: str) -> None:
        self.calls.append("delete")
        if self.script.delete:
            raise self.script.delete.pop(0)
        self.clusters.pop(cluster_id, None)

    def list_clusters(self) -> list[ClusterInfo]:
        return [self.describe_cluster(c) for c in self.clusters]

    def warm_idle_timeout_s(self) -> float:
        return self.idle_timeout_s


def request(**overrides: Any) -> ClusterRequest:
    fields: dict[str, Any] = dict(
        cluster_id="j1-0", job_id="j1", owner="alice", nodes=1, cpus_per_node=1,
        gpus_per_node=0, mem_mb=None, flavor=None, control_url="https://cp:1",
        ca_pem="PEM", token="tok")
    fields.update(overrides)
    return ClusterRequest(**fields)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def runner(sleeps: list[float]) -> GateRunner:
    return GateRunner(TinyGate(), retry=RetryPolicy(attempts=4, backoff_s=0.5,
                                                    max_backoff_s=1.5),
                      sleep=sleeps.append, environ={"PATH": "/bin"})


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "field_name", "allowed"), [
    ({"nodes": 0}, "nodes", "at least 1"),
    ({"cpus_per_node": 0}, "cpus_per_node", "at least 1"),
    ({"gpus_per_node": -1}, "gpus_per_node", "at least 0"),
    ({"cpus_per_node": 8}, "cpus_per_node", "at most 4 per node"),
    ({"gpus_per_node": 2}, "gpus_per_node", "at most 1 per node"),
    ({"mem_mb": 8192}, "mem_mb", "at most 4096 per node"),
    ({"nodes": 5}, "nodes", "at most 4"),
    # one GPU per node exists only on flavor g, which has 2 nodes at most
    ({"nodes": 3, "gpus_per_node": 1}, "nodes", "at most 2 on a flavor that holds"),
    ({"flavor": "xl"}, "flavor", "one of s, g"),
    ({"flavor": "s", "cpus_per_node": 3}, "cpus_per_node", "at most 2 per node"),
    ({"cluster_id": "../etc"}, "cluster_id", "letters, digits"),
])
def test_a_request_that_never_fits_names_field_value_and_what_is_allowed(
    runner: GateRunner, overrides: dict[str, Any], field_name: str, allowed: str,
) -> None:
    with pytest.raises(NeverFitsError) as err:
        runner.create_cluster(request(**overrides))
    assert err.value.field == field_name and err.value.gate == "tiny1"
    assert allowed in err.value.allowed, err.value.message
    assert f"invalid {field_name}" in err.value.message
    assert isinstance(err.value, GateError) and not isinstance(err.value, CapacityError)
    assert runner.gate.calls == [], "the plugin never sees a request that cannot fit"  # type: ignore[attr-defined]


def test_the_gate_totals_bound_all_nodes_at_once(runner: GateRunner) -> None:
    # 4 nodes x 2 cpus fits flavor s; 4 x 4 = 16 fits the total; 4 x 4 on s does not
    assert runner.can_ever_fit(4, 2, 0, None) is None
    big = TinyGate()
    big.capacity = lambda: Capacity(total_cpus=6, free_cpus=6)  # type: ignore[method-assign]
    why = GateRunner(big).can_ever_fit(4, 2, 0, None)
    assert why is not None and "nodes x cpus_per_node: 8" in why and "at most 6 cpus" in why


def test_features_bound_requests() -> None:
    class OneNode(TinyGate):
        capabilities = GateCapabilities(unsupported={
            GateFeature.MULTI_NODE: "a tiny gate has one machine",
            GateFeature.GPUS: "no GPUs here",
            GateFeature.KILL_NODE: "x", GateFeature.PREEMPT: "x"})

    runner = GateRunner(OneNode())
    assert runner.can_ever_fit(1, 1, 0, None) is None
    assert "a tiny gate has one machine" in (runner.can_ever_fit(2, 1, 0, None) or "")
    assert "no GPUs here" in (runner.can_ever_fit(1, 1, 1, None) or "")


# -- retries and half-cluster cleanup --------------------------------------------------


def test_create_is_retried_with_exponential_backoff(runner: GateRunner,
                                                     sleeps: list[float]) -> None:
    gate: TinyGate = runner.gate  # type: ignore[assignment]
    gate.script.create = [GateError("flaky"), GateError("flaky"), GateError("flaky")]
    info = runner.create_cluster(request())
    assert info.state == "running"
    assert gate.calls == ["create"] * 4
    assert sleeps == [0.5, 1.0, 1.5]  # doubled, capped at max_backoff_s


def test_a_create_that_finally_fails_leaves_no_half_cluster(runner: GateRunner,
                                                            sleeps: list[float]) -> None:
    gate: TinyGate = runner.gate  # type: ignore[assignment]
    gate.script.create = [GateError(f"boom {i}") for i in range(4)]
    gate.script.build_before_failing = True
    with pytest.raises(GateError, match="boom 3"):
        runner.create_cluster(request())
    assert gate.calls == ["create"] * 4 + ["delete"]
    assert gate.clusters == {} and runner.describe_cluster("j1-0").state == "gone"


def test_a_failed_cleanup_is_retried_then_noted_on_the_create_error(
    runner: GateRunner, sleeps: list[float],
) -> None:
    gate: TinyGate = runner.gate  # type: ignore[assignment]
    gate.script.create = [GateError("boom")] * 4
    gate.script.build_before_failing = True
    gate.script.delete = [GateError("cloud down")] * 4
    with pytest.raises(GateError, match="boom") as err:
        runner.create_cluster(request())
    assert gate.calls == ["create"] * 4 + ["delete"] * 4
    assert any("j1-0" in n and "cloud down" in n for n in err.value.__notes__)
    assert "j1-0" in gate.clusters  # left for the reaper: it is still listed


def test_capacity_errors_are_not_retried_but_cleaned_up(runner: GateRunner,
                                                        sleeps: list[float]) -> None:
    gate: TinyGate = runner.gate  # type: ignore[assignment]
    gate.script.create = [CapacityError("full now")]
    with pytest.raises(CapacityError):
        runner.create_cluster(request())
    assert gate.calls == ["create", "delete"] and sleeps == []


def test_delete_is_retried(runner: GateRunner, sleeps: list[float]) -> None:
    gate: TinyGate = runner.gate  # type: ignore[assignment]
    runner.create_cluster(request())
    gate.script.delete = [GateError("flaky")]
    runner.delete_cluster("j1-0")
    assert gate.clusters == {} and sleeps == [0.5]


def test_with_retries_gives_up_after_its_attempts_and_skips_what_never_changes() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def fails(exc: BaseException) -> Callable[[], None]:
        def op() -> None:
            calls.append(1)
            raise exc
        return op

    with pytest.raises(GateError):
        with_retries(fails(GateError("x")), attempts=2, sleep=waits.append)
    assert len(calls) == 2 and waits == [0.5]
    calls.clear()
    with pytest.raises(NeverFitsError):
        with_retries(fails(NeverFitsError("g", "nodes", 9, "at most 4")), sleep=waits.append)
    with pytest.raises(ValueError):  # not a gate error: a bug, not a flaky cloud
        with_retries(fails(ValueError("bug")), sleep=waits.append)
    assert len(calls) == 2


# -- the agent's environment ------------------------------------------------------------

CONTROL_PLANE_ENV = {
    "PATH": "/opt/bin:/usr/bin", "HOME": "/home/op", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
    "TZ": "UTC", "TMPDIR": "/scratch", "PYTHONPATH": "/site/extra",
    "SKYPORT_OPENMPI_HOME": "/opt/ompi", "OMPI_MCA_btl": "self,tcp", "UCX_TLS": "tcp",
    # what must never reach a payload
    "AZURE_STORAGE_KEY": "azkey", "DATABASE_URL": "postgres://u:p@db/x",
    "LIBCLOUD_KEY": "lckey", "GITHUB_PAT": "ghp_x", "AWS_PROFILE": "prod",
    "AWS_SECRET_ACCESS_KEY": "awss", "OPENAI_API_KEY": "sk-x", "RAY_ADDRESS": "10.0.0.1:6379",
    "RAY_TMPDIR": "/tmp/ray", "CUDA_VISIBLE_DEVICES": "0,1", "SKYPORT_KEY": "/home/op/key.pem",
    "SKYPORT_HOME": "/srv/skyport", "PMI_RANK": "3",
}
SECRETS = ("AZURE_STORAGE_KEY", "DATABASE_URL", "LIBCLOUD_KEY", "GITHUB_PAT", "AWS_PROFILE",
           "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY")


def test_the_agent_env_is_an_allow_list() -> None:
    runner = GateRunner(TinyGate(), environ=CONTROL_PLANE_ENV)
    runner.create_cluster(request())
    env = dict(runner.gate.clusters["j1-0"].agent_env)  # type: ignore[attr-defined]
    for name in (*SECRETS, "RAY_ADDRESS", "RAY_TMPDIR", "CUDA_VISIBLE_DEVICES",
                 "SKYPORT_KEY", "SKYPORT_HOME", "PMI_RANK"):
        assert name not in env, name
    assert not any(v in env.values() for v in ("azkey", "lckey", "ghp_x", "sk-x", "prod"))
    for name in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SKYPORT_OPENMPI_HOME",
                 "OMPI_MCA_btl", "UCX_TLS"):
        assert env[name] == CONTROL_PLANE_ENV[name]
    # this Sky Port first, so the agent and a payload import the same one
    assert env["PYTHONPATH"].split(":") == [skyport_root(), "/site/extra"]


def test_agent_env_has_a_path_even_from_an_empty_environment() -> None:
    env = agent_environment({})
    assert env["PATH"] and set(env) == {"PATH", "PYTHONPATH"}
    assert not is_allowed("RAY_ADDRESS") and not is_allowed("MY_TOKEN")


def test_a_gate_driven_without_a_runner_applies_the_same_allow_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GITHUB_PAT", "ghp_y")
    env = TinyGate().agent_env(request())
    assert "GITHUB_PAT" not in env and "PATH" in env


# -- features ---------------------------------------------------------------------------


def test_unsupported_features_raise_with_gate_feature_and_reason(runner: GateRunner) -> None:
    assert runner.supports(GateFeature.WARM_REUSE) and runner.supports("gpus")
    assert not runner.supports(GateFeature.KILL_NODE)
    with pytest.raises(UnsupportedFeatureError) as err:
        runner.kill_node("j1-0", 0)
    assert err.value.gate == "tiny1" and err.value.feature == "kill_node"
    assert str(err.value) == "gate tiny1 (tiny) does not support kill_node: tiny nodes cannot die"
    with pytest.raises(UnsupportedFeatureError, match="kill_node: tiny nodes cannot die; "
                       "preempt: nobody takes tiny nodes back"):
        runner.check_features_are_supported(GateFeature.GPUS, "kill_node", "preempt")
    runner.check_features_are_supported(GateFeature.GPUS, GateFeature.MULTI_NODE)
    with pytest.raises(ValidationError, match="invalid feature: 'teleport'"):
        runner.supports("teleport")


def test_warm_idle_timeout_is_zero_without_warm_reuse() -> None:
    class Cold(TinyGate):
        capabilities = GateCapabilities()  # declares nothing: no warm reuse

    assert GateRunner(TinyGate(idle_timeout_s=30.0)).warm_idle_timeout_s() == 30.0
    assert GateRunner(Cold(idle_timeout_s=30.0)).warm_idle_timeout_s() == 0.0


def test_a_declared_feature_must_be_implemented() -> None:
    class Boasts(TinyGate):
        capabilities = GateCapabilities(unsupported={GateFeature.PREEMPT: "no"})

    with pytest.raises(ConfigError, match="declares kill_node but does not implement"):
        GateRunner(Boasts())


def test_capabilities_need_a_reason_for_each_unsupported_feature() -> None:
    with pytest.raises(ConfigError, match="needs a GateFeature key and a reason"):
        GateCapabilities(unsupported={GateFeature.GPUS: ""})


def test_describe_names_type_features_and_capacity(runner: GateRunner) -> None:
    d = runner.describe()
    assert (d.name, d.type_name) == ("tiny1", "tiny")
    assert d.features["kill_node"] == "tiny nodes cannot die" and d.features["gpus"] is None
    assert d.capacity == Capacity(total_cpus=16, free_cpus=16, total_gpus=2, free_gpus=2)
    assert d.to_dict()["flavors"] == ["s", "g"] and d.error == ""

    broken = TinyGate()

    def down() -> Capacity:
        raise GateError("cloud unreachable")

    broken.capacity = down  # type: ignore[method-assign]
    d = GateRunner(broken).describe()
    assert d.capacity is None and "cloud unreachable" in d.error


def test_capabilities_and_gate_errors_cross_process_boundaries_intact() -> None:
    import pickle

    caps = TinyGate.capabilities
    assert pickle.loads(pickle.dumps(caps)) == caps
    err = NeverFitsError("tiny1", "nodes", 9, "at most 4")
    err.add_note("a note")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.field, back.value, str(back)) == \
        (NeverFitsError, "nodes", 9, str(err)) and back.__notes__ == ["a note"]
    feat = pickle.loads(pickle.dumps(UnsupportedFeatureError("g", "tiny", "preempt", "no")))
    assert (feat.gate, feat.feature, feat.reason) == ("g", "preempt", "no")
