"""The ray gate: per-job clusters placed on an existing (autoscaling) Ray cluster."""

from gates.ray.config import RayGateConfig
from gates.ray.gate import RayGate

__all__ = ["RayGate", "RayGateConfig"]
