"""The node agent: one process per node of a job's cluster (see ``PROTOCOL.md``).

Start it with ``python -m skyport.agent --bootstrap PATH``.  Modules:
``bootstrap`` (the start-up file the gate writes), ``client`` (the REST
protocol), ``payload`` (running the job script: process group, affinity, time
limit, log pump), ``procfs`` (process facts from ``/proc``), ``main`` (the
agent's flow).  Importing this package imports none of them.
"""
