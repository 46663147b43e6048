/* OpenMP on one node: sum of 1/i^2 (-> pi^2/6) with a parallel reduction. */
#include <math.h>
#include <omp.h>
#include <stdio.h>

int main(void) {
    const long n = 50000000L;
    double sum = 0.0;
    int threads = 0;
#pragma omp parallel reduction(+ : sum)
    {
#pragma omp single
        threads = omp_get_num_threads();
#pragma omp for schedule(static)
        for (long i = 1; i <= n; i++)
            sum += 1.0 / ((double)i * (double)i);
    }
    double pi = sqrt(6.0 * sum);
    printf("threads %d max %d sum %.12f pi %.10f error %.3e\n", threads,
           omp_get_max_threads(), sum, pi, fabs(pi - M_PI));
    return 0;
}
