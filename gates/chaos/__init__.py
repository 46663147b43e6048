"""The chaos gate: wraps any gate and makes some creates and deletes fail."""

from gates.chaos.gate import ChaosGate, ChaosGateConfig

__all__ = ["ChaosGate", "ChaosGateConfig"]
