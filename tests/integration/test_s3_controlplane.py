"""The whole job flow with job storage on S3 (moto's server), not the state dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import skyport
from skyport.models import JobState
from skyport.script import build_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SCRIPT = """#!/bin/bash
#SKYPORT --name=on-s3 --input={input} --output=out/report.txt
mkdir -p out
tr a-z A-Z < data.txt > out/report.txt
env > out/env.txt
echo done
"""


def test_jobs_keep_everything_on_s3(fresh_controlplane, s3_bucket: tuple[str, dict[str, Any]],
                                    tmp_path: Path) -> None:
    import s3fs

    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    # the input itself comes from S3 too
    # (under the user's own prefix: the only storage URLs a user may name as inputs)
    fs.pipe(f"{bucket}/sp/users/admin/data.txt", b"hello s3\n")
    prefix = f"s3://{bucket}/sp"
    cp = fresh_controlplane(storage=prefix, storage_options=options)
    with cp.client() as c:
        job = c.submit(build_spec(SCRIPT.format(input=f"s3://{bucket}/sp/users/admin/data.txt")
                                  .replace("--output=out/report.txt",
                                           "--output=out/report.txt --output=out/env.txt")))
        done = c.wait(job.id, timeout=120)
        assert done.state == JobState.SUCCEEDED, done.events
        assert c.download(job.id, "outputs/out/report.txt") == b"HELLO S3\n"
        env = c.download(job.id, "outputs/out/env.txt").decode()

        @skyport.job(cpus=1, time="2m", home=cp.home)
        def add(a: int, b: int) -> int:
            return a + b

        assert add.submit(2, 3).result(timeout=120) == 5

    stored = {p.split("/sp/", 1)[1] for p in fs.find(f"{bucket}/sp")}
    assert f"jobs/{job.id}/script.sh" in stored
    assert f"jobs/{job.id}/inputs/data.txt" in stored
    assert f"jobs/{job.id}/outputs/out/report.txt" in stored
    assert f"jobs/{job.id}/logs/stdout" in stored
    assert fs.cat(f"{bucket}/sp/jobs/{job.id}/logs/stdout") == b"done\n"
    assert any(p.endswith("outputs/skyport-result.pkl") for p in stored)
    # nothing went to the state directory's own storage
    assert not list((cp.home / "storage").rglob("*.txt"))
    # the storage credentials never reach the job
    assert options["secret"] not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
