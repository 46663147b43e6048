#!/bin/bash
#SKYPORT --name=checkpoint-counter --time=00:05:00
#SKYPORT --nodes=2 --cpus-per-node=1 --ranks-per-node=1 --threads-per-rank=1
#SKYPORT --checkpoint-every=5s
#SKYPORT --input=counter.py
$SKYPORT_MPIEXEC "$SKYPORT_PYTHON" counter.py 60 0.25
