"""GPUs: a declared 2-GPU local gate; each job sees exactly the GPUs it holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from skyport.errors import ValidationError
from skyport.models import JobState
from skyport.script import build_spec, cli_directives

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpu" / "job.sh"


def test_two_concurrent_gpu_jobs_get_different_devices(fresh_controlplane) -> None:
    cp = fresh_controlplane(local_gpus=[0, 1])
    with cp.client() as admin:
        assert admin.gates()[0].flavors[0].gpus == 2  # declared, no nvidia-smi here
        spec = build_spec(EXAMPLE.read_text(), cli_directives([("env", "HOLD_S=4")]))
        jobs = [admin.submit(spec) for _ in range(2)]
        done = [admin.wait(j.id, timeout=120) for j in jobs]
        assert all(d.state == JobState.SUCCEEDED for d in done), [d.reason for d in done]
        outs = [admin.logs(j.id).data.decode() for j in jobs]
        devices = [re.search(r"CUDA_VISIBLE_DEVICES=(\S*)", o).group(1) for o in outs]
        assert sorted(devices) == ["0", "1"], outs  # one each, never the same one
        # they really held their GPUs at the same time
        assert done[0].started_at < done[1].ended_at and done[1].started_at < done[0].ended_at
        with pytest.raises(ValidationError, match="GPU"):
            admin.submit(build_spec("#SKYPORT --gpus-per-node=3\necho\n"))
