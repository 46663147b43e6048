"""Configuration of the local gate and the host facts its defaults come from."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Literal

from pydantic import Field, field_validator

from skyport.gate import GateConfig

IDLE_TIMEOUT_S = 0.0
"""Warm reuse is off by default (set ``idle_timeout_s``, e.g. 30, to turn it on): with
it a burst of small jobs of one owner and shape runs on the clusters its first jobs
made, and a parked cluster a queued job needs is evicted
(``skyport.core.warm.WarmBook.settle``).  On by default, the full test suite showed
notebook-server jobs failing when they landed on a reused node, not yet understood,
so the default stays off until that is."""


class LocalGateConfig(GateConfig):
    """What the local gate hands out.

    ``cpus`` may exceed the physical core count: the gate then hands out
    *virtual* cores, and node ``v``'s core is physical core
    ``allowed[v % len(allowed)]`` (``allowed`` = the gate process's CPU
    affinity), so several nodes share a physical core.  That is the way to run
    an 8-node job on a 2-core laptop; it is correct but not fast.  ``mem_mb``
    is accounted (no cluster gets more than is free) but not enforced.
    ``gpus`` are GPU ids (as ``CUDA_VISIBLE_DEVICES`` takes them); they may be
    declared on a machine without GPUs, for tests.
    """

    cpus: int | None = Field(None, ge=1, description="cores handed out; default os.cpu_count()")
    mem_mb: int | None = Field(None, ge=1, description="memory handed out; default: all")
    gpus: list[str] | None = Field(None, description="GPU ids; default: nvidia-smi's list")
    max_nodes: int = Field(8, ge=1, le=1024)
    workdir_root: str | None = Field(None, description="default <gate dir>/nodes")
    agent_command: list[str] | None = Field(
        None, min_length=1, description="argv prefix that starts an agent; default "
        "[sys.executable, '-m', 'skyport.agent']; '--bootstrap PATH' is appended")
    isolation: Literal["auto", "user", "sandbox", "none"] = Field(
        "auto", description="how payloads are kept from the control plane and other jobs: "
        "'user' (a user of its own per cluster; needs root), 'sandbox' (bubblewrap hides the "
        "state directory), 'none' (payloads run as the control plane's user and can read its "
        "state directory); 'auto': 'user' as root, else 'sandbox'")
    network: Literal["host", "namespace"] = Field(
        "host", description="'host' (default): nodes share this machine's network; "
        "'namespace' (needs root and iproute2): each node gets a network namespace of its "
        "own on a private bridge with its cluster's other nodes, and reaches only the "
        "control plane, through a forwarder (skyport.gate.netns)")
    kill_grace_s: float = Field(3.0, ge=0, le=60)
    boot_s: float = Field(1.0, ge=0)
    price_per_hour: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="price of one node-hour of its flavor, "
        "for the planner's --max-price and --prefer=cost, budgets and cost reports (0: free)")
    idle_timeout_s: float = Field(
        IDLE_TIMEOUT_S, ge=0, le=86400, description="keep a finished job's cluster this long "
        f"for the next job of the same owner and shape (default {IDLE_TIMEOUT_S:g}; a queued "
        "job that needs its cores has it deleted sooner); 0: delete it at once")

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_ids(cls, v: object) -> object:
        """Ids may be written as numbers (``gpus = [0, 1]``); they are kept as text."""
        if isinstance(v, list | tuple):
            return [str(g) if isinstance(g, int) and not isinstance(g, bool) else g for g in v]
        return v


def host_cpus() -> int:
    return os.cpu_count() or 1


def host_mem_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))


def detect_gpus() -> list[str]:
    """GPU ids from ``nvidia-smi``; none when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]
