/* pi by the midpoint rule on 4/(1+x^2) over [0,1], the steps shared among MPI ranks. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long steps = argc > 1 ? atol(argv[1]) : 10000000L;
    double h = 1.0 / (double)steps, sum = 0.0, pi = 0.0;
    for (long i = rank; i < steps; i += size) {
        double x = h * ((double)i + 0.5);
        sum += 4.0 / (1.0 + x * x);
    }
    double mine = h * sum;
    MPI_Reduce(&mine, &pi, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("pi %.15f error %.3e ranks %d steps %ld\n", pi, fabs(pi - M_PI), size, steps);
        fflush(stdout);
    }
    MPI_Finalize();
    return 0;
}
