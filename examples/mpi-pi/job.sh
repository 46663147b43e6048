#!/bin/bash
#SKYPORT --name=mpi-pi --time=00:03:00
#SKYPORT --nodes=2 --cpus-per-node=2 --ranks-per-node=2 --threads-per-rank=1
#SKYPORT --input=pi.c
set -e
mpicc -O2 -o pi pi.c -lm
$SKYPORT_MPIEXEC --bcast ./pi 20000000  # built here only: copied to every node
