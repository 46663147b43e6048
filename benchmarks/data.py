"""Data path: MB/s in and out of a job, against a raw fsspec copy on the same storage.

    python -m benchmarks.data [--sizes 100M,1G,5G] [--storage file|s3] [--json]

On a fresh control plane of its own (local gate, a temporary state directory;
``--storage s3`` puts the job storage on a moto server, a process of its own) it
generates a file of each size and runs one job that copies its input to its
output.  For each size it reports, in MB/s (10^6 bytes a second):

* ``upload``: the client sending the local file to the control plane (mTLS)
  into storage (``Client.upload``, streamed, sha256-checked);
* ``stage in``: STAGING_IN to RUNNING in the job's events: the agent fetching
  the input (``file://``: the control plane's streaming file route; S3: a
  presigned GET straight from the storage);
* ``stage out``: STAGING_OUT to the end: the agent sending the output (S3:
  presigned multipart parts, then the control plane's completion);
* ``fetch``: ``Client.download_to`` of the output (streamed, sha256-checked);
* ``raw in`` / ``raw out``: ``fs.put_file`` / ``fs.get_file`` of the same
  file with fsspec on the same storage, no Sky Port in between; ``in/raw`` is
  stage in over raw out (both read the storage), ``out/raw`` stage out over raw in;
* ``peak growth``: the most the summed RSS of the control plane's session
  (API, Ray, the Core and gate actors; the local gate's agents run in it too)
  plus the job's own processes rose above idle while it all ran; ``CP MB``: the
  session's peak (control plane with the local gate's agents); ``job MB``: the
  job's processes (``SKYPORT_JOB_ID`` in their environment) alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import httpx

from benchmarks.memsample import MemorySampler
from skyport.client import Client, connect
from skyport.config import StateDir
from skyport.controlplane import init_state, read_pid, start, stop
from skyport.models import JobState
from skyport.script import build_spec

BLOCK = 8 << 20
SCRIPT = """#!/bin/bash
#SKYPORT --name=data-bench --input={input} --output=out.bin --time=1h
cat big.bin > out.bin
"""


def parse_size(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].isalpha() else int(text)


def generate(path: Path, size: int) -> str:
    block = bytearray(os.urandom(BLOCK))
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left, i = size, 0
        while left > 0:
            block[:8] = i.to_bytes(8, "little")
            piece = block[: min(BLOCK, left)]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
            i += 1
    return digest.hexdigest()


@dataclass(frozen=True)
class Row:
    size_mb: float
    upload: float
    stage_in: float
    stage_out: float
    fetch: float
    raw_in: float
    raw_out: float
    peak_growth_mb: float
    peak_cp_mb: float
    peak_agent_mb: float

    def line(self) -> str:
        return (f"{self.size_mb:>8.0f} {self.upload:>8.0f} {self.stage_in:>10.0f} "
                f"{self.stage_out:>11.0f} {self.fetch:>7.0f} {self.raw_in:>8.0f} "
                f"{self.raw_out:>9.0f} {self.stage_in / self.raw_out:>8.2f} "
                f"{self.stage_out / self.raw_in:>9.2f} {self.peak_growth_mb:>14.0f} "
                f"{self.peak_cp_mb:>8.0f} {self.peak_agent_mb:>7.0f}")


HEADER = ("  size MB upload/s stage-in/s stage-out/s fetch/s raw-in/s raw-out/s in/raw "
          "out/raw peak-growth MB   CP MB  job MB")


def _between(job: Any, first: JobState, then: set[JobState]) -> float:
    t0 = next(e.time for e in job.events if e.state == first)
    t1 = next(e.time for e in job.events if e.state in then and e.time >= t0)
    return max((t1 - t0).total_seconds(), 1e-6)


def one_size(client: Client, sampler: MemorySampler, work: Path, size: int, storage_url: str,
             options: dict[str, Any]) -> Row:
    src = work / "big.bin"
    want = generate(src, size)
    mb = size / 1e6
    fs, root = fsspec.core.url_to_fs(storage_url, **options)
    raw = f"{root.rstrip('/')}/raw-copy.bin"
    t = time.perf_counter()
    fs.put_file(str(src), raw)
    raw_in = mb / (time.perf_counter() - t)
    back = work / "raw-back.bin"
    t = time.perf_counter()
    fs.get_file(raw, str(back))
    raw_out = mb / (time.perf_counter() - t)
    back.unlink()
    fs.rm(raw)

    t = time.perf_counter()
    url = client.upload(src)
    upload = mb / (time.perf_counter() - t)
    src.unlink()
    job = client.submit(build_spec(SCRIPT.format(input=url)))
    sampler.job_id = job.id
    done = client.wait(job.id, timeout=3600)
    if done.state != JobState.SUCCEEDED:
        raise SystemExit(f"job {job.id} ended {done.state.value}: {done.events[-1].reason}")
    stage_in = mb / _between(done, JobState.STAGING_IN, {JobState.RUNNING})
    stage_out = mb / _between(done, JobState.STAGING_OUT, {JobState.SUCCEEDED})
    out = work / "out.bin"
    t = time.perf_counter()
    client.download_to(job.id, "outputs/out.bin", out)
    fetch = mb / (time.perf_counter() - t)
    digest = hashlib.sha256()
    with out.open("rb") as f:
        while chunk := f.read(BLOCK):
            digest.update(chunk)
    out.unlink()
    if digest.hexdigest() != want:
        raise SystemExit(f"the fetched output's sha256 differs from the input's ({job.id})")
    return Row(mb, upload, stage_in, stage_out, fetch, raw_in, raw_out,
               (sampler.peak - sampler.idle) / 1e6, sampler.peak_cp / 1e6,
               sampler.peak_job / 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100M,1G", help="comma-separated: 100M,1G,5G")
    parser.add_argument("--storage", choices=("file", "s3"), default="file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    home = Path(tempfile.mkdtemp(prefix="sp-data-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="sp-data-work-", dir="/tmp"))
    server = None
    storage_url, options = "", {}
    if args.storage == "s3":
        import s3fs

        for k, v in (("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s"),
                     ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ[k] = v
        # moto in a process of its own: sharing this one's GIL would slow the raw
        # copy (client and server in one interpreter) and not Sky Port's agents
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()",
                                   "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        # botocore's default 60 s read timeout is shorter than moto's assembly of GBs
        options = {"client_kwargs": {"endpoint_url": endpoint}, "key": "k", "secret": "s",
                   "config_kwargs": {"read_timeout": 900}}
        s3fs.S3FileSystem(**options).mkdir("bench")
        storage_url = "s3://bench/sp"
    state = StateDir(home)
    init_state(state, local_cpus=4, storage=storage_url or None, storage_options=options)
    start(state)
    rows = []
    try:
        pid = read_pid(state)
        assert pid is not None
        raw_url = storage_url or (home / "storage").as_uri()
        with connect(home) as client:
            for size in [parse_size(s) for s in args.sizes.split(",")]:
                with MemorySampler(os.getsid(pid), 0.25) as sampler:
                    rows.append(one_size(client, sampler, work, size, raw_url, options))
                if not args.json:
                    print(HEADER if len(rows) == 1 else "", end="\n" if len(rows) == 1 else "")
                    print(rows[-1].line(), flush=True)
        if args.json:
            print(json.dumps([asdict(r) for r in rows], indent=2))
    finally:
        stop(state)
        if server is not None:
            server.terminate()
            server.wait(30)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
