"""The Core: owns jobs, persists every change, drives the lifecycle."""

from skyport.core.service import CoreService

__all__ = ["CoreService"]
