"""Data of any size through a real control plane, its agents and storage.

A 2 GB input goes up with the client, through the Core's staging and the
agent into the job; the job writes it back as a 2 GB output; ``fetch`` brings
it home and its sha256 is the input's.  Memory of the control plane (its whole
session: API, Ray, the Core actor) plus the job's agent is sampled all along
and must grow by less than the issue's bound.  On ``file://`` storage (the
agent through the control plane's streaming routes) and on S3 (moto's server;
the agent straight to the storage on presigned URLs, ``skyport/direct.py``).
A smaller test: directory and glob outputs, and an output that cannot be saved
ending the job FAILED with the reason.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.memsample import MemorySampler
from skyport.agent.transfer import human_bytes
from skyport.controlplane import read_pid
from skyport.models import JobState
from skyport.script import build_spec
from tests.integration.conftest import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

SIZE = 2 << 30
# moto's server moves about 15 MB/s on the 2-core development machine (it assembles
# multipart objects and copies in Python): 2 GB there takes over ten minutes, so the
# S3 run is 512 MiB unless SKYPORT_TEST_S3_BYTES says otherwise (2147483648: the issue's)
S3_SIZE = int(os.environ.get("SKYPORT_TEST_S3_BYTES", str(512 << 20)))
BOUND = 256 << 20  # the bound on growth over idle (control plane + agents)
BLOCK = 8 << 20

BIG = """#!/bin/bash
#SKYPORT --name=big --input={input} --output=out.bin --time=10m
cat big.bin > out.bin
"""


def generated(path: Path, size: int) -> str:
    """A file of ``size`` bytes that no block of repeats (no dedup helps); its sha256."""
    block = bytearray(os.urandom(BLOCK))
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for i in range(size // BLOCK):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def sampler(cp: ControlPlane) -> MemorySampler:
    """Memory of the control plane's whole session plus the job's processes (once set)."""
    pid = read_pid(cp.state)
    assert pid is not None
    return MemorySampler(os.getsid(pid))


def roundtrip(cp: ControlPlane, tmp_path: Path, size: int = SIZE) -> None:
    src = tmp_path / "big.bin"
    want = generated(src, size)
    try:
        with cp.client() as c, sampler(cp) as mem:
            job = c.submit(build_spec(BIG.format(input=src.as_uri())))
            mem.job_id = job.id
            done = c.wait(job.id, timeout=1500)
            assert done.state == JobState.SUCCEEDED, done.events
            src.unlink()  # room on the disk for what comes back
            stored = {f.path: f for f in c.files(job.id)}
            assert stored["outputs/out.bin"].sha256 == want
            assert stored["inputs/big.bin"].sha256 == want
            got = c.fetch(job.id, tmp_path / "fetched", prefix="outputs/")
        out = tmp_path / "fetched" / "outputs" / "out.bin"
        assert out in got
        assert sha256_of(out) == want
        reasons = [e.reason for e in done.events]
        total = human_bytes(size)
        assert f"staged in {total} of {total}" in reasons
        assert f"staged out {total} of {total}" in reasons
        growth = mem.peak - mem.idle
        print(f"memory: idle {mem.idle >> 20} MiB, peak {mem.peak >> 20} MiB, "
              f"growth {growth >> 20} MiB")
        assert growth < BOUND, f"memory grew by {growth >> 20} MiB during the transfers"
    finally:
        for p in tmp_path.rglob("*.bin"):
            p.unlink()


def test_two_gigabytes_in_and_out_on_file_storage(
        fresh_controlplane: Callable[..., ControlPlane], tmp_path: Path) -> None:
    roundtrip(fresh_controlplane(), tmp_path)


def test_two_gigabytes_in_and_out_on_s3(fresh_controlplane: Callable[..., ControlPlane],
                                        s3_bucket: tuple[str, dict[str, Any]],
                                        tmp_path: Path) -> None:
    bucket, options = s3_bucket
    # moto assembles a 2 GB multipart object in Python, slower than botocore's 60 s read
    # timeout on a small machine; a retried "complete" then finds its parts gone
    options = {**options, "config_kwargs": {"read_timeout": 900}}
    roundtrip(fresh_controlplane(storage=f"s3://{bucket}/big", storage_options=options),
              tmp_path, S3_SIZE)


SHAPES = """#!/bin/bash
#SKYPORT --name=shapes --output=results/ --output=*.h5 --output=bad.skyport-sha256
mkdir -p results/deep
echo a > results/a.txt
echo bb > results/deep/b.txt
echo x > x.h5
echo y > y.h5
echo z > bad.skyport-sha256
"""


def test_directories_and_globs_are_kept_and_an_unsaved_output_fails_the_job(
        fresh_controlplane: Callable[..., ControlPlane]) -> None:
    cp = fresh_controlplane()
    with cp.client() as c:
        job = c.submit(build_spec(SHAPES))
        done = c.wait(job.id, timeout=120)
        listed = {f.path: f.sha256 for f in c.files(job.id)}
    assert done.state == JobState.FAILED, done.events
    assert done.exit_code == 0
    why = done.events[-1].reason
    assert "outputs not saved: bad.skyport-sha256" in why, why
    for path, content in (("results/a.txt", b"a\n"), ("results/deep/b.txt", b"bb\n"),
                          ("x.h5", b"x\n"), ("y.h5", b"y\n")):
        assert listed[f"outputs/{path}"] == hashlib.sha256(content).hexdigest()
