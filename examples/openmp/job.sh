#!/bin/bash
#SKYPORT --name=openmp --time=00:02:00
#SKYPORT --nodes=1 --cpus-per-node=4 --threads-per-rank=4
#SKYPORT --input=omp.c
set -e
gcc -fopenmp -O2 -o omp omp.c -lm
echo "OMP_NUM_THREADS=$OMP_NUM_THREADS"
./omp
