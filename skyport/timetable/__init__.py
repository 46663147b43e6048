"""The timetable engine: a snapshot of the queue goes in, a timetable comes out.

Pure code (no I/O, no clock, no randomness), shared by the Scheduler actor and
the benchmark harness. Policies are plugins (entry-point group
``skyport.policies``, see :mod:`skyport.timetable.registry`).
"""

from skyport.timetable.engine import plan
from skyport.timetable.errors import InvalidSnapshotError, TimetableError, UnknownPolicyError
from skyport.timetable.policy import Capability, Discipline, Policy, PolicyConfig
from skyport.timetable.profile import AvailabilityProfile
from skyport.timetable.registry import known_policies, load_policy, policy_class
from skyport.timetable.snapshot import JobId, Pool, QueuedJob, RunningJob, Snapshot
from skyport.timetable.timetable import Placement, PlacementKind, Timetable, Unplaceable
from skyport.timetable.usage import UsageLedger

__all__ = [
    "AvailabilityProfile",
    "Capability",
    "Discipline",
    "InvalidSnapshotError",
    "JobId",
    "Placement",
    "PlacementKind",
    "Policy",
    "PolicyConfig",
    "Pool",
    "QueuedJob",
    "RunningJob",
    "Snapshot",
    "Timetable",
    "TimetableError",
    "Unplaceable",
    "UnknownPolicyError",
    "UsageLedger",
    "known_policies",
    "load_policy",
    "plan",
    "policy_class",
]
