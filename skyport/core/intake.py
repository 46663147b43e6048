"""Taking a job in: the spec checked against every gate and input, its files, its row.

Nothing is queued unless the whole request can ever run; a job that is in the
store always has its script (and a function job its payload) in storage.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skyport.config import InputPolicy, SubmitLimits
from skyport.core.inputs import InputSource, check_input_url
from skyport.errors import ConflictError, NotFoundError, ValidationError
from skyport.models import Job, JobSpec, JobState
from skyport.pki import Identity
from skyport.runtime.contract import PAYLOAD_FILE as PAYLOAD_INPUT
from skyport.storage import JobStorage
from skyport.store import JobStore


class JobIntake:
    def __init__(self, store: JobStore, storage: JobStorage, gates: Mapping[str, Any],
                 inputs: InputPolicy | None = None, state_dir: Path | None = None,
                 limits: SubmitLimits | None = None) -> None:
        self.store = store
        self.limits = limits or SubmitLimits()
        self.storage = storage
        self.gates = gates
        self.inputs = inputs or InputPolicy()
        # the state directory is never an input: by default the store's own directory
        self.state_dir = state_dir or store.path.parent
        protocols = storage.fs.protocol
        self._storage_protocols = tuple(protocols) if isinstance(protocols, tuple) \
            else (protocols,)

    def sources(self, spec: JobSpec, owner: str) -> list[InputSource]:
        """The job's inputs as ``owner`` may read them; ValidationError names the first refused."""
        out: list[InputSource] = []
        for url in spec.inputs:
            source = check_input_url(url, owner, self.inputs, state_dir=self.state_dir,
                                     storage_protocols=self._storage_protocols,
                                     storage_root=self.storage.root)
            if not source.name or source.name == PAYLOAD_INPUT:
                raise ValidationError("input", url, "a URL that names a file")
            if source.name in {s.name for s in out}:
                raise ValidationError("input", url, "inputs with distinct file names")
            out.append(source)
        return out

    async def submit(self, who: Identity, spec: JobSpec, payload_b64: str | None = None) -> Job:
        queued = self.store.count(owner=who.username, states=[JobState.QUEUED])
        if queued >= self.limits.max_queued_per_user:
            # one user's flood must not slow every listing and plan for everyone
            raise ConflictError(
                f"user {who.username} already has {queued} queued jobs: at most "
                f"{self.limits.max_queued_per_user} (limits.max_queued_per_user in config.json)")
        await self._validate(spec, who.username)
        payload = None
        if spec.kind == "function":
            if not payload_b64:
                raise ValidationError("payload_b64", None, "a function job needs its payload")
            try:
                payload = base64.b64decode(payload_b64, validate=True)
            except ValueError as exc:
                raise ValidationError("payload_b64", "<not base64>", "base64 text") from exc
        elif payload_b64:
            raise ValidationError("payload_b64", "<payload>", "only function jobs carry one")
        job_id = self._new_job_id()
        # files first: a job that is in the store always has its script; a failed add
        # takes them away again, so a refused submission leaves nothing in storage
        try:
            self.storage.put(job_id, "script.sh", spec.script.encode())
            if payload is not None:
                self.storage.put(job_id, f"inputs/{PAYLOAD_INPUT}", payload)
            return self.store.add(job_id, who.username, spec)
        except BaseException:
            self.storage.remove_job(job_id)
            raise

    def _new_job_id(self) -> str:
        # short enough to type; drawn again on a clash, before any file is written
        while True:
            job_id = secrets.token_hex(4)
            try:
                self.store.get(job_id, events=False)
            except NotFoundError:
                return job_id

    async def _validate(self, spec: JobSpec, owner: str) -> None:
        if spec.gate is not None and spec.gate not in self.gates:
            raise ValidationError("gate", spec.gate, "one of: " + ", ".join(sorted(self.gates)))
        candidates = [spec.gate] if spec.gate else sorted(self.gates)
        r = spec.resources
        reasons = []
        for name in candidates:
            why = await self.gates[name].can_ever_fit(
                r.nodes, r.cpus_per_node, r.gpus_per_node, r.mem_mb, spec.flavor
            )
            if why is None:
                break
            reasons.append(why)
        else:
            raise ValidationError(
                "resources",
                f"{r.nodes} nodes x {r.cpus_per_node} cpus, {r.gpus_per_node} gpus"
                + (f", {r.mem_mb} MB" if r.mem_mb else "")
                + (f", flavor {spec.flavor}" if spec.flavor else ""),
                "no gate can ever run this: " + " | ".join(reasons),
            )
        for url, source in zip(spec.inputs, self.sources(spec, owner), strict=True):
            # only now, with the policy passed, may the answer say whether the file exists
            why = self.storage.check_input(source, owner)
            if why is not None:
                raise ValidationError("input", url, f"a URL that exists and can be read ({why})")
        # Whether the nodes have the job's MPI is theirs to say (their agents report it at
        # hello; ``core.machine.nodes_lack``): the control plane's host proves nothing.
