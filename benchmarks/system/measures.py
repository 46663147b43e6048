"""Each measure of issue 11, beside its bare baseline in the same run.

Every function returns a dict: the figure, its baseline, and ``ratio`` (Sky
Port over the baseline: a time ratio above 1, or a rate ratio below 1, is how
far Sky Port is from the bare figure).
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.system.plane import USER, Plane, bare_get, bare_post, echo_server, venv_bin
from skyport.client import Client
from skyport.models import Job, JobSpec
from skyport.script import build_spec

TRUE = "#!/bin/bash\ntrue\n"


def spec(gate: str, script: str = TRUE, name: str = "bench", **options: str) -> JobSpec:
    lines = [f"#SKYPORT --gate={gate} --name={name}"]
    lines += [f"#SKYPORT --{k.replace('_', '-')}={v}" for k, v in options.items()]
    head, _, body = script.partition("\n")
    return build_spec("\n".join([head, *lines, body]))


def _p50(xs: list[float]) -> float:
    return statistics.median(xs)


def _ms(x: float) -> float:
    return round(x * 1000, 1)


# -- accepting jobs -----------------------------------------------------------------


def _submit_n(client: Client, n: int) -> float:
    s = spec("accept")
    t0 = time.perf_counter()
    for _ in range(n):
        client.submit(s)
    return time.perf_counter() - t0


def _bare_n(client: Client, n: int) -> float:
    body = {"spec": spec("accept").model_dump(mode="json"), "payload_b64": None}
    t0 = time.perf_counter()
    for _ in range(n):
        bare_post(client, body)
    return time.perf_counter() - t0


def _worker(home: str, target: str, n: int, start_at: float, out: multiprocessing.Queue) -> None:
    from benchmarks.system.plane import Plane
    from skyport.config import StateDir

    plane = Plane(StateDir(Path(home)))
    if target in ("skyport", "skyport-batch"):
        client = plane.client()
        client.whoami()  # the connection is open before the clock starts
        run = _submit_n if target == "skyport" else _batches
    else:
        port = int((plane.home / "echo.port").read_text())
        from skyport.client.core import _ssl_context
        cert, key = plane.state.user_cert(USER)
        client = Client(f"https://127.0.0.1:{port}",
                        ssl_context=_ssl_context(plane.state.pki / "ca.crt", cert, key))
        bare_get(client)
        run = _bare_n
    time.sleep(max(0.0, start_at - time.time()))
    run(client, n)
    out.put(time.time())


def _parallel(plane: Plane, target: str, clients: int, n: int) -> float:
    """Jobs per second from ``clients`` processes submitting ``n`` each at once."""
    ctx = multiprocessing.get_context("spawn")
    q: multiprocessing.Queue = ctx.Queue()
    start_at = time.time() + 4.0 + clients  # every worker is up and connected by then
    procs = [ctx.Process(target=_worker, args=(str(plane.home), target, n, start_at, q))
             for _ in range(clients)]
    for p in procs:
        p.start()
    ends = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(30)
    return clients * n / (max(ends) - start_at)


BATCH = 100  # jobs in one POST /v1/jobs/batch


def _batches(client: Client, n: int) -> float:
    """Seconds for ``n`` jobs submitted in calls of ``BATCH`` (``Client.submit_many``)."""
    s = spec("accept")
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        client.submit_many([s] * min(BATCH, n - i))
    return time.perf_counter() - t0


def _bare_batches(client: Client, n: int) -> float:
    one = {"spec": spec("accept").model_dump(mode="json"), "payload_b64": None}
    t0 = time.perf_counter()
    for i in range(0, n, BATCH):
        bare_post(client, {"jobs": [one] * min(BATCH, n - i)})
    return time.perf_counter() - t0


def accept(plane: Plane, n: int) -> dict:
    with plane.client() as client, echo_server(plane) as bare:
        client.whoami()
        bare_get(bare)
        seq = n / _submit_n(client, n)
        seq_bare = n / _bare_n(bare, n)
        par = _parallel(plane, "skyport", 4, n // 2)
        par_bare = _parallel(plane, "bare", 4, n // 2)
        client.cancel_many(all=True)
        batched = 10 * n / _batches(client, 10 * n)
        batched_bare = 10 * n / _bare_batches(bare, 10 * n)
        client.cancel_many(all=True)
        batched_par = _parallel(plane, "skyport-batch", 4, 5 * n)
        client.cancel_many(all=True)
    return {
        "accept_batch_4_clients": {"unit": "jobs/s", "skyport": round(batched_par, 1),
                                   "baseline": round(par_bare, 1),
                                   "ratio": round(batched_par / par_bare, 3),
                                   "baseline_is": "minimal HTTPS+mTLS endpoint, 4 processes, "
                                                  "one job a call", "n": 20 * n},
        "accept_batch_seq": {"unit": "jobs/s", "skyport": round(batched, 1),
                             "baseline": round(batched_bare, 1),
                             "ratio": round(batched / batched_bare, 3),
                             "baseline_is": f"the same {BATCH}-job bodies to the minimal "
                                            "endpoint, same client", "n": 10 * n},
        "accept_seq": {"unit": "jobs/s", "skyport": round(seq, 1),
                       "baseline": round(seq_bare, 1), "ratio": round(seq / seq_bare, 3),
                       "baseline_is": "minimal HTTPS+mTLS endpoint, same client", "n": n},
        "accept_4_clients": {"unit": "jobs/s", "skyport": round(par, 1),
                             "baseline": round(par_bare, 1), "ratio": round(par / par_bare, 3),
                             "baseline_is": "minimal HTTPS+mTLS endpoint, 4 processes",
                             "n": 4 * (n // 2)},
    }


# -- the CLI ------------------------------------------------------------------------


def cli_submit(plane: Plane, reps: int) -> dict:
    script = plane.home / "cli-job.sh"
    script.write_text("#!/bin/bash\n#SKYPORT --gate=accept --name=cli\ntrue\n")
    skyport = venv_bin("skyport")

    def timed(argv: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(argv, env=plane.env(), check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0

    timed([skyport, "submit", str(script)])  # page cache warm for both
    cli = _p50([timed([skyport, "submit", str(script)]) for _ in range(reps)])
    bare = _p50([timed([sys.executable, "-c", "pass"]) for _ in range(reps)])
    with plane.client() as client:
        client.cancel_many(all=True)
    return {"cli_submit": {"unit": "ms p50", "skyport": _ms(cli), "baseline": _ms(bare),
                           "ratio": round(cli / bare, 2),
                           "baseline_is": "spawn of `python -c pass`", "n": reps}}


# -- submit -> script start, function round trip --------------------------------------


STAMP = "#!/bin/bash\ndate +%s.%N\n"


def _start_latencies(client: Client, gate: str, reps: int) -> list[float]:
    out = []
    s = spec(gate, STAMP, name="stamp", cpus_per_node="1")
    for _ in range(reps):
        t0 = time.time()
        job = client.submit(s)
        done = client.wait(job.id, timeout=120)
        text = client.logs(job.id).data.decode().strip()
        if done.state.value != "SUCCEEDED" or not text:
            raise RuntimeError(f"stamp job {job.id}: {done.state.value} {done.reason}")
        out.append(float(text.splitlines()[-1]) - t0)
    return out


def start_latency(plane: Plane, reps: int) -> dict:
    with plane.client() as client:
        cold = _start_latencies(client, "cold", reps)
        _start_latencies(client, "warm", 1)  # parks the first cluster
        warm = _start_latencies(client, "warm", reps)
    bare = []
    for _ in range(reps):
        t0 = time.time()
        out = subprocess.run(["bash", "-c", "date +%s.%N"], capture_output=True, text=True)
        bare.append(float(out.stdout) - t0)
    return {
        "start_cold": {"unit": "ms p50", "skyport": _ms(_p50(cold)), "baseline": _ms(_p50(bare)),
                       "ratio": round(_p50(cold) / _p50(bare), 1),
                       "baseline_is": "spawn of the same script", "n": reps},
        "start_warm": {"unit": "ms p50", "skyport": _ms(_p50(warm)), "baseline": _ms(_p50(bare)),
                       "ratio": round(_p50(warm) / _p50(bare), 1),
                       "baseline_is": "spawn of the same script", "n": reps},
    }


def function_round_trip(plane: Plane, reps: int) -> dict:
    import skyport

    fn = skyport.job(home=plane.home, user=USER, cpus=1, gate="warm", time="2m")(math.sqrt)
    if fn.submit(4.0).result(timeout=120) != 2.0:  # the warm cluster for this shape
        raise RuntimeError("sqrt(4) is not 2")
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn.submit(float(i)).result(timeout=120)
        times.append(time.perf_counter() - t0)
    bare = []
    for i in range(reps):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import math; math.sqrt({i})"], check=True)
        bare.append(time.perf_counter() - t0)
    return {"function_round_trip_warm": {
        "unit": "ms p50", "skyport": _ms(_p50(times)), "baseline": _ms(_p50(bare)),
        "ratio": round(_p50(times) / _p50(bare), 1),
        "baseline_is": "spawn of python calling the function", "n": reps}}


# -- many small jobs ------------------------------------------------------------------


def drain(plane: Plane, n: int) -> dict:
    s = spec("local", cpus_per_node="1", time="5m", name="drain")
    with plane.client() as client:
        t0 = time.time()
        jobs = [client.submit(s) for _ in range(n)]
        done: list[Job] = [client.wait(j.id, timeout=1800) for j in jobs]
    bad = [j.id for j in done if j.state.value != "SUCCEEDED"]
    if bad:
        raise RuntimeError(f"{len(bad)} drain jobs did not succeed, e.g. {bad[0]}")
    last = max(j.ended_at.timestamp() for j in done if j.ended_at)
    rate = n / (last - t0)
    script = plane.home / "true.sh"
    script.write_text(TRUE)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: subprocess.run(["bash", str(script)], check=True), range(n)))
    bare = n / (time.perf_counter() - t0)
    return {"drain_1core_jobs": {"unit": "jobs/s", "skyport": round(rate, 2),
                                 "baseline": round(bare, 1), "ratio": round(rate / bare, 4),
                                 "baseline_is": "the same script spawned, 8 at a time", "n": n}}


# -- MPI --------------------------------------------------------------------------------

HELLO_C = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    printf("hello %d/%d\n", rank, size);
    MPI_Finalize();
    return 0;
}
"""


def mpi_hello(plane: Plane, reps: int) -> dict:
    """``$SKYPORT_MPIEXEC ./hello`` inside a 2 x 2 job, against a plain ``mpiexec -n 4``.

    The nodes share nothing: the first (untimed) launch copies the program to
    node 1 (``--bcast``).  Each timed launch checks that node 1 has it, as a
    user's does; the same launch with ``--no-check`` says what that check costs.
    """
    src = plane.home / "hello.c"
    src.write_text(HELLO_C)
    script = ("#!/bin/bash\nset -e\nmpicc -O2 -o hello hello.c\n"
              "$SKYPORT_MPIEXEC --bcast ./hello > /dev/null\n"
              f"for i in $(seq {reps}); do\n"
              "  t0=$(date +%s.%N); $SKYPORT_MPIEXEC ./hello > /dev/null; t1=$(date +%s.%N)\n"
              "  $SKYPORT_MPIEXEC --no-check ./hello > /dev/null; t2=$(date +%s.%N)\n"
              "  echo \"wall $t0 $t1 $t2\"\ndone\n")
    s = spec("local", script, name="mpi-hello", nodes="2", cpus_per_node="2",
             ranks_per_node="2", mpi="mpich", input=src.as_uri(), time="5m")
    with plane.client() as client:
        job = client.submit(s)
        done = client.wait(job.id, timeout=600)
        out = client.logs(job.id).data.decode()
        if done.state.value != "SUCCEEDED":
            raise RuntimeError(f"mpi job {job.id}: {done.state.value} {done.reason} "
                               f"{client.logs(job.id, 'stderr').data.decode()[-2000:]}")
    marks = [[float(x) for x in line.split()[1:4]] for line in out.splitlines()
             if line.startswith("wall ")]
    walls = [b - a for a, b, _ in marks]
    unchecked = [c - b for _, b, c in marks]
    binary = plane.home / "hello"
    subprocess.run([venv_bin("mpicc"), "-O2", "-o", str(binary), str(src)], check=True)
    mpiexec = venv_bin("mpiexec")
    bare = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([mpiexec, "-n", "4", str(binary)], check=True, stdout=subprocess.DEVNULL)
        bare.append(time.perf_counter() - t0)
    ratio = round(_p50(walls) / _p50(bare), 2)
    return {"mpi_hello_2x2": {"unit": "ms p50", "skyport": _ms(_p50(walls)),
                              "baseline": _ms(_p50(bare)), "ratio": ratio,
                              "no_check": _ms(_p50(unchecked)),
                              "baseline_is": "plain `mpiexec -n 4` of the same program",
                              "n": reps}}


# -- listings and status with many jobs ---------------------------------------------------


def listing(plane: Plane, jobs: int, reps: int) -> dict:
    """``GET /v1/jobs`` (first page) and ``GET /v1/status`` with ``jobs`` held jobs queued.

    The jobs are written straight into the store (submitting them is the accept
    measure) and held, so that nothing starts them: every planning pass still
    reads them.
    """
    from skyport.store import JobStore

    store = JobStore(plane.state.db_path)
    s = spec("accept", name="many")
    try:
        for i in range(jobs):
            job_id = f"m{i:08d}"
            store.add(job_id, USER, s)
            store.apply([("update", job_id, {"held": 1})])
    finally:
        store.close()

    def timed(call) -> float:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0

    with plane.client() as client, echo_server(plane) as bare:
        client.status()
        first = _p50([timed(lambda: client._request("GET", "/v1/jobs")) for _ in range(reps)])
        status = _p50([timed(client.status) for _ in range(reps)])
        base = _p50([timed(lambda: bare_get(bare)) for _ in range(reps)])
        client.cancel_many(all=True)
    return {
        "list_first_page": {"unit": "ms p50", "skyport": _ms(first), "baseline": _ms(base),
                            "ratio": round(first / base, 1), "jobs": jobs,
                            "baseline_is": "GET on the minimal endpoint", "n": reps},
        "status": {"unit": "ms p50", "skyport": _ms(status), "baseline": _ms(base),
                   "ratio": round(status / base, 1), "jobs": jobs,
                   "baseline_is": "GET on the minimal endpoint", "n": reps},
    }
