"""The memory gate: clusters that are records in memory, for tests and the test double."""

from gates.memory.gate import MemoryGate, MemoryGateConfig

__all__ = ["MemoryGate", "MemoryGateConfig"]
