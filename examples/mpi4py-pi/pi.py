"""pi by the midpoint rule on 4/(1+x^2) over [0,1], the steps shared among MPI ranks (mpi4py)."""

import math
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
h = 1.0 / steps
mine = h * sum(4.0 / (1.0 + (h * (i + 0.5)) ** 2) for i in range(rank, steps, size))
pi = comm.reduce(mine, op=MPI.SUM, root=0)
if rank == 0:
    print(f"pi {pi:.15f} error {abs(pi - math.pi):.3e} ranks {size} steps {steps}", flush=True)
