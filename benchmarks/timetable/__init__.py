"""Timetable benchmark: replay workload traces through the timetable engine.

Run ``python -m benchmarks.timetable --help``. Modules: :mod:`.swf` reads
traces, :mod:`.replay` drives the engine, :mod:`.metrics` scores a replay,
:mod:`.windows` cuts window samples, :mod:`.baseline` is an independent EASY
simulator, :mod:`.passbench` times single planning passes, :mod:`.compare`
runs every policy and draws the plots.
"""
