"""Parallel launch: the job's layout on its nodes, with any MPI, through the node agents.

* ``layout``: which cores and which OpenMP settings a rank gets; which
  variables are a node's own and must not be copied from node 0.
* ``hostfile``: the job's nodes with their slots, in the job's MPI's format.
* ``mpiexec``: ``python -m skyport.launch.mpiexec -- CMD`` (``$SKYPORT_MPIEXEC``):
  starts nodes x ranks-per-node ranks with the MPI the job asked for.
* ``rank``: wraps every rank: binds it, sets its OpenMP variables, execs CMD.
* ``rsh``: the rsh-compatible program MPI launchers use instead of ssh; it
  asks the local agent (over a Unix socket) to run the command on a node.
* ``mpi``: where each MPI implementation is installed.
"""
