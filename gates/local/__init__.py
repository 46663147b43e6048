"""The local gate: per-job clusters made of node processes on this machine."""

from gates.local.config import LocalGateConfig
from gates.local.gate import LocalGate

__all__ = ["LocalGate", "LocalGateConfig"]
