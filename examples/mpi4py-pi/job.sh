#!/bin/bash
#SKYPORT --name=mpi4py-pi --time=00:03:00
#SKYPORT --nodes=2 --cpus-per-node=2 --ranks-per-node=2 --threads-per-rank=1
#SKYPORT --input=pi.py
$SKYPORT_MPIEXEC "$SKYPORT_PYTHON" pi.py 1000000
