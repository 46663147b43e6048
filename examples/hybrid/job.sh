#!/bin/bash
#SKYPORT --name=hybrid --time=00:03:00
#SKYPORT --nodes=2 --cpus-per-node=4 --ranks-per-node=2 --threads-per-rank=2
#SKYPORT --mpi=mpich
#SKYPORT --input=hybrid.c
set -e
mpicc -fopenmp -O2 -o hybrid hybrid.c
$SKYPORT_MPIEXEC --bcast ./hybrid  # the nodes share no files: copy it to each
