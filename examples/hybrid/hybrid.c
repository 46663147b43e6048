/* Hybrid MPI + OpenMP: one line per rank with the threads it really ran. */
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int provided, rank, size, threads = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
#pragma omp parallel
    {
#pragma omp single
        threads = omp_get_num_threads();
    }
    long mine = rank + 1, total = 0;
    MPI_Allreduce(&mine, &total, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    const char *node = getenv("SKYPORT_NODE_NAME");
    printf("rank %d size %d node %s threads %d allreduce %ld expected %ld\n", rank, size,
           node ? node : "?", threads, total, (long)size * (size + 1) / 2);
    fflush(stdout);
    MPI_Finalize();
    return total == (long)size * (size + 1) / 2 ? 0 : 1;
}
