"""The fast path, measured end to end against bare baselines in the same run.

    python -m benchmarks.system [--quick] [--json] [--only NAME ...]

Starts a private control plane (local Ray, Core, Scheduler, local gates, the
REST API over mutual TLS) in a temporary state directory, runs every measure
of issue 11 next to its baseline on the same machine, prints a table and,
with ``--json``, one JSON object.  See ``benchmarks/RESULTS.md``.
"""
