"""SkyPortSpawner against an in-process control plane: state, poll's grace, progress, options.

The end-to-end run with a real hub, proxy and control plane is
``tests/integration/test_jupyter.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("jupyterhub", reason="the jupyter extra is not installed")

from tornado import web  # noqa: E402

from skyport.client.testing import TestControlPlane  # noqa: E402
from skyport.errors import ControlPlaneError, NotFoundError  # noqa: E402
from skyport.jupyter.node import pick_node_port, pointed_at  # noqa: E402
from skyport.jupyter.options import (  # noqa: E402
    form_to_options,
    options_form_html,
    server_spec,
)
from skyport.jupyter.progress import progress_for  # noqa: E402
from skyport.jupyter.spawner import SkyPortSpawner  # noqa: E402
from skyport.models import JobState  # noqa: E402
from skyport.protocol import Empty, SecretBody  # noqa: E402


@pytest.fixture
def cp():
    with TestControlPlane() as plane:
        yield plane


def _spawner(client_factory: Any = None, **kw: Any) -> SkyPortSpawner:
    user = SimpleNamespace(name="alice", url="/user/alice/", id=1)
    return SkyPortSpawner(user=user, hub=SimpleNamespace(api_url="http://127.0.0.1:8081/hub/api"),
                          client_factory=client_factory, **kw)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_state_round_trips_through_the_hubs_database() -> None:
    s = _spawner()
    s.job_id, s.node_port, s.local_port, s.forwarder_pid = "j-42", 31234, 45678, 999
    state = s.get_state()
    assert json.loads(json.dumps(state)) == state  # the hub stores it as JSON
    again = _spawner()
    again.load_state(state)
    assert (again.job_id, again.node_port, again.local_port, again.forwarder_pid) == \
        ("j-42", 31234, 45678, 999)
    again.clear_state()
    assert again.get_state().get("job_id") is None and again.job_id == ""


class _Flaky:
    """A client whose ``job`` fails while ``down`` is set (a control plane restarting)."""

    def __init__(self, real: Any) -> None:
        self.real, self.down = real, False

    def job(self, job_id: str) -> Any:
        if self.down:
            raise ControlPlaneError("connection refused (the control plane is restarting)")
        return self.real.job(job_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_poll_rides_out_control_plane_errors_for_its_grace_then_reports(cp) -> None:
    flaky = _Flaky(cp.client("alice"))
    s = _spawner(lambda: flaky, poll_grace_s=60)
    job = flaky.submit(server_spec({"time": "00:10:00"}, name="nb", argv=["sleep", "1"]))
    s.load_state({"job_id": job.id, "node_port": 30000, "local_port": 0})
    assert _run(s.poll()) is None  # queued: the server is on its way
    flaky.down = True
    assert _run(s.poll()) is None  # a transient error is not a dead server
    s._last_ok = time.monotonic() - 61
    assert _run(s.poll()) == 1  # past the grace: reported stopped
    flaky.down = False
    assert _run(s.poll()) is None and s._last_ok > time.monotonic() - 5
    flaky.cancel(job.id)
    assert _run(s.poll()) == 0  # cancelled: stopped, cleanly
    s.load_state({"job_id": "no-such-job"})
    assert _run(s.poll()) == 0


def test_progress_follows_the_jobs_real_events(cp) -> None:
    client = cp.client("alice")
    job = client.submit(server_spec({}, name="nb", argv=["sleep", "1"]))
    cp.start(job.id)
    job = client.job(job.id)
    messages = [progress_for(job, e) for e in job.events]
    text = [m["message"] for m in messages]
    assert text[0].startswith("queued")
    assert any(t.startswith("cluster being created") for t in text), text
    assert any(t.startswith("node up") for t in text), text
    assert text[-1].startswith("server starting"), text
    pcts = [m["progress"] for m in messages]
    assert pcts == sorted(pcts) and pcts[-1] < 100


def test_a_failed_job_ends_progress_and_start_at_once_with_its_reason(cp) -> None:
    client = cp.client("alice")
    s = _spawner(lambda: client)
    job = client.submit(server_spec({}, name="nb", argv=["sleep", "1"]))
    s.load_state({"job_id": job.id})
    said = b"".join(f"[I] starting line {i}\n".encode() for i in range(200))
    cp.run(job.id, exit_code=3,
           stderr=said + b"[C] ERROR | Port 23456 is already in use\n\n")
    assert client.job(job.id).state == JobState.FAILED

    async def collect() -> list[dict]:
        return [m async for m in s.progress()]

    got = _run(asyncio.wait_for(collect(), 30))
    assert got[-1]["progress"] == 100
    assert f"Sky Port job {job.id} is FAILED" in got[-1]["message"]
    s.local_port = 1  # nothing listens: only the job's end can stop the wait
    with pytest.raises(web.HTTPError) as info:
        _run(asyncio.wait_for(s._wait_ready(), 30))
    assert "FAILED" in info.value.log_message
    # the user reads why in the server's own last words, not only "exit code 3"
    assert info.value.log_message.endswith("Port 23456 is already in use"), \
        info.value.log_message
    assert "starting line 197 | [I] starting line 199" not in info.value.log_message
    assert "starting line 198 | [I] starting line 199 | [C] ERROR" in info.value.log_message


def test_a_notebook_servers_port_is_outside_the_ephemeral_and_ray_worker_ranges() -> None:
    low, high = (int(x) for x in
                 Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {pick_node_port() for _ in range(2000)}
    assert len(ports) > 1000  # drawn, so two servers started together rarely meet
    assert all(19999 < p < low for p in ports), (min(ports), max(ports), low, high)


@pytest.mark.parametrize("options, field", [
    ({"cpus": "many"}, "cpus"),
    ({"nodes": 0}, "nodes"),
    ({"time": "forever"}, "time"),
    ({"gate": "local\n#SKYPORT --input=file:///etc/passwd"}, "gate"),
    ({"memory": "4G; rm -rf /"}, "memory"),
    ({"shell": "/bin/sh"}, "user_options"),
    ({"gpus": [1, 2]}, "gpus"),
])
def test_bad_options_get_sky_ports_one_line_refusal(options: dict, field: str) -> None:
    s = _spawner()
    with pytest.raises(web.HTTPError) as info:
        s._check_user_options(options)
    assert info.value.status_code == 400
    message = info.value.log_message
    assert "\n" not in message and len(message) < 400
    assert field.replace("_", "") in message.replace("-", "").replace("_", ""), message


def test_good_options_become_the_jobs_resources() -> None:
    s = _spawner()
    s._check_user_options({"nodes": "2", "cpus": 2, "memory": "2G", "gpus": "0",
                           "time": "01:00:00", "gate": "memory"})
    spec = server_spec({"nodes": "2", "cpus": "2", "time": "01:00:00"}, name="nb",
                       argv=["jupyterhub-singleuser", "--debug"])
    assert (spec.resources.nodes, spec.resources.cpus_per_node) == (2, 2)
    assert spec.resources.time_limit_s == 3600
    assert "skyport.jupyter.node -- jupyterhub-singleuser --debug" in spec.script
    assert form_to_options({"choice": ["memory/small"], "nodes": ["2"], "gpus": [""],
                            "evil": ["x"]}) == {"gate": "memory", "flavor": "small",
                                                "nodes": "2"}


def test_the_form_shows_live_gates_with_price_and_start_estimate(cp) -> None:
    client = cp.client("alice")
    gates = client.gates()
    page = options_form_html(gates, client.timetable())
    flavor = gates[0].flavors[0]
    assert f'value="{gates[0].name}/{flavor.name}"' in page
    assert f"${flavor.price_per_hour:.2f}/h" in page and "ready in ~" in page
    s = _spawner(lambda: client)
    assert _run(s._live_form()) == page


def test_the_hub_token_is_a_secret_only_the_jobs_agent_reads(cp) -> None:
    alice, bob = cp.client("alice"), cp.client("bob")
    job = alice.submit(server_spec({}, name="nb", argv=["jupyterhub-singleuser"]))
    other = alice.submit(server_spec({}, name="nb2", argv=["jupyterhub-singleuser"]))
    token = "hub-token-" + "s3cr3t" * 4
    body = SecretBody(value=json.dumps({"JUPYTERHUB_API_TOKEN": token}))
    with pytest.raises(NotFoundError):  # another user's job: as if there were none
        bob.call("PUT", f"/v1/jobs/{job.id}/secrets/jupyter-env", Empty, body=body)
    alice.call("PUT", f"/v1/jobs/{job.id}/secrets/jupyter-env", Empty, body=body)
    agents = cp.start(job.id)
    assert token in agents[0].secret("jupyter-env")
    other_agents = cp.start(other.id)
    with pytest.raises(NotFoundError):  # its own job has no such secret
        other_agents[0].secret("jupyter-env")
    with pytest.raises(Exception, match="token"):  # another job's token reaches nothing
        cp.agent(job.id, other_agents.token).secret("jupyter-env")
    seen = alice.job(job.id)
    assert token not in seen.model_dump_json()  # not in the script, spec or events
    assert token not in alice.logs(job.id).data.decode()


def test_the_node_points_the_hub_urls_at_its_relay_port() -> None:
    assert pointed_at("http://10.0.0.5:8081/hub/api", 4242) == "http://127.0.0.1:4242/hub/api"
    assert pointed_at("https://hub.example.org/hub/api/users/a/activity?x=1", 7) == \
        "http://127.0.0.1:7/hub/api/users/a/activity?x=1"
