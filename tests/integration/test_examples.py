"""Every example in ``examples/`` submitted as a user would, its output checked."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from skyport.models import JobState
from skyport.script import build_spec, cli_directives

from .conftest import processes_of_job

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PI = re.compile(r"^pi (\d\.\d+) error (\S+) ranks (\d+) steps (\d+)$", re.M)


def run_example(admin, folder: str, program: str) -> str:
    """Submit ``examples/<folder>/job.sh`` with its program; its stdout once it succeeded."""
    script = (EXAMPLES / folder / "job.sh").read_text()
    spec = build_spec(script, cli_directives([("input", (EXAMPLES / folder / program).as_uri())]))
    job = admin.submit(spec)
    done = admin.wait(job.id, timeout=120)
    out = admin.logs(job.id).data.decode()
    err = admin.logs(job.id, "stderr").data.decode()
    assert done.state == JobState.SUCCEEDED, (done.reason, out, err)
    assert processes_of_job(job.id) == []
    print(out)
    return out


def check_pi(out: str, ranks: int) -> None:
    found = PI.findall(out)
    assert len(found) == 1, out  # rank 0 alone prints
    pi, error, size, _steps = found[0]
    assert int(size) == ranks
    assert abs(float(pi) - math.pi) < 1e-9 and float(error) < 1e-9, out


def test_mpi_pi_in_c(admin) -> None:
    check_pi(run_example(admin, "mpi-pi", "pi.c"), ranks=4)


def test_mpi_pi_with_mpi4py(admin) -> None:
    check_pi(run_example(admin, "mpi4py-pi", "pi.py"), ranks=4)


def test_openmp_runs_four_threads(admin) -> None:
    out = run_example(admin, "openmp", "omp.c")
    assert "OMP_NUM_THREADS=4" in out
    m = re.search(r"^threads (\d+) max (\d+) sum (\S+) pi (\S+) error (\S+)$", out, re.M)
    assert m, out
    assert (m[1], m[2]) == ("4", "4"), out
    assert abs(float(m[4]) - math.pi) < 1e-6, out


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    folders = sorted(p.name for p in EXAMPLES.iterdir() if (p / "job.sh").exists())
    assert {"mpi-pi", "mpi4py-pi", "openmp", "hybrid", "gpu"} <= set(folders)
    for name in folders:
        assert f"`{name}/`" in readme, name
