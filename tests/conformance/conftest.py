"""Fixtures every gate's conformance module may use."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skyport.gate import ClusterRequest
from tests.conformance.gate_suite import ca_pem_for_tests

_COUNTER = itertools.count()


@pytest.fixture(scope="session")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    return ca_pem_for_tests(Path(tmp_path_factory.mktemp("ca")))


@pytest.fixture
def make_request(ca_pem: str) -> Callable[..., ClusterRequest]:
    """A 1-node, 1-cpu request with fresh ids; agents dial a port where nobody listens."""

    def make(**overrides: Any) -> ClusterRequest:
        n = next(_COUNTER)
        job_id = f"cj{n}{secrets.token_hex(2)}"
        fields: dict[str, Any] = dict(
            cluster_id=f"{job_id}-0", job_id=job_id, owner="alice", nodes=1,
            cpus_per_node=1, gpus_per_node=0, mem_mb=None, flavor=None,
            control_url="https://127.0.0.1:9", ca_pem=ca_pem,
            token="tok-" + secrets.token_hex(16))
        fields.update(overrides)
        return ClusterRequest(**fields)

    return make
