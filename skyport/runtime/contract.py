"""The function-job file contract, in one place.

The decorator (``skyport.decorator``), the server (``skyport.core.service``),
the runner on the node (``skyport.runtime.function``) and the in-memory test
double (``skyport.client.fake``) agree on these names:

- the decorator sends the cloudpickled ``(fn, args, kwargs)``; the server stores
  it as the job's input ``PAYLOAD_FILE`` (``PAYLOAD_STORED_AS``), so node 0's
  agent fetches it into the working directory like any input;
- the job's script (``FUNCTION_SCRIPT``) runs ``python -m RUNNER PAYLOAD RESULT``,
  and the spec lists ``RESULT_FILE`` as an output (``RESULT_STORED_AS``);
- a multi-rank job's script (``RANKS_SCRIPT``) runs the runner on every rank
  under ``$SKYPORT_MPIEXEC`` with the result directory ``RESULTS_DIR/``; rank
  ``r``'s outcome is ``rank_result_name(r)`` in it (``rank_result_path(r)``);
- a function job called with another job's handle as an argument lists
  ``upstream_url(id)`` among its inputs; the Core stages that job's outcome as
  ``inputs/upstream_input_name(id)`` and the runner puts its value in place.

Only constants and string functions: the runner imports this on the node.
"""

from __future__ import annotations

import re

PAYLOAD_FILE = "skyport-payload.pkl"
"""The pickled call, in the job's working directory."""

RESULT_FILE = "skyport-result.pkl"
"""A single-rank job's outcome, in the job's working directory."""

RESULTS_DIR = "skyport-results"
"""A multi-rank job's output: one ``rank_result_name(rank)`` per rank."""

RUNNER = "skyport.runtime.function"
"""The module the job's script runs (``python -m``)."""

PAYLOAD_STORED_AS = f"inputs/{PAYLOAD_FILE}"
RESULT_STORED_AS = f"outputs/{RESULT_FILE}"

FUNCTION_SCRIPT = f"""\
#!/bin/bash
# Sky Port function job: call the pickled function, store its outcome.
exec "${{SKYPORT_PYTHON:-python3}}" -m {RUNNER} {PAYLOAD_FILE} {RESULT_FILE}
"""

RANKS_SCRIPT = f"""\
#!/bin/bash
# Sky Port function job: call the pickled function on every rank, store each outcome.
exec "$SKYPORT_MPIEXEC" "${{SKYPORT_PYTHON:-python3}}" -m {RUNNER} \\
    {PAYLOAD_FILE} {RESULTS_DIR}/
"""


_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
UPSTREAM_SCHEME = "job"
"""``job://<id>/result``: an input that is another job's result (``skyport.core.dependencies``)."""


def upstream_url(job_id: str) -> str:
    """The input URL of job ``job_id``'s result (rank 0's, for a multi-rank job)."""
    return f"{UPSTREAM_SCHEME}://{job_id}/result"


def parse_upstream_url(url: str) -> str | None:
    """The job id of a ``job://<id>/result`` input, or None if ``url`` is not one."""
    prefix = f"{UPSTREAM_SCHEME}://"
    if not url.startswith(prefix):
        return None
    job_id, _, rest = url[len(prefix):].partition("/")
    return job_id if rest == "result" and _JOB_ID.fullmatch(job_id) else None


def upstream_input_name(job_id: str) -> str:
    """Where the Core stages job ``job_id``'s result among a dependent job's inputs."""
    return f"skyport-upstream.{job_id}.pkl"


def is_result_path(path: str) -> bool:
    """Is ``path`` (under the job's prefix) where a function's outcome is stored?

    An outcome is unpickled by its owner's ``result()``: the control plane records
    the digest of each one an attempt's agent stores (``skyport.core.service``).
    """
    if path == RESULT_STORED_AS:
        return True
    prefix, _, name = path.rpartition("/")
    stem = name.removeprefix("skyport-result.").removesuffix(".pkl")
    return prefix == f"outputs/{RESULTS_DIR}" and name == rank_result_name(int(stem)) \
        if stem.isdigit() else False


def rank_result_name(rank: int) -> str:
    """The file of one rank's outcome inside a multi-rank job's result directory."""
    return f"skyport-result.{rank}.pkl"


def rank_result_path(rank: int) -> str:
    """Where rank ``rank``'s outcome is stored: ``outputs/skyport-results/...``."""
    return f"outputs/{RESULTS_DIR}/{rank_result_name(rank)}"
