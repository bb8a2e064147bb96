/* bench_allreduce.c: MPI_Allreduce (float sum) time against message size on
 * the ranks mpirun gives it: the bandwidth term of the communication model
 * (benchmarks/COMM_MODEL.md). Run it inside one node for the tp term
 * (shared memory) and across nodes for the dp term.
 *
 *   mpirun -np R build/benchmarks/bench_allreduce [max_MB=64]
 *
 * algbw = payload bytes / time; busbw = algbw * 2(p-1)/p, the bytes each
 * rank moves in a ring all-reduce per second (comparable across p).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, p;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &p);
    double max_mb = argc > 1 ? atof(argv[1]) : 64;
    size_t max_n = (size_t)(max_mb * 1e6 / 4);
    float *buf = malloc(max_n * sizeof(float) + 4);
    if (!buf) MPI_Abort(MPI_COMM_WORLD, 1);
    for (size_t i = 0; i < max_n; i++) buf[i] = 1.0f;
    if (!rank) printf("MPI_Allreduce float sum on %d ranks: size, time (median of reps), algbw, busbw\n", p);
    for (size_t n = 256; n <= max_n; n *= 4) {
        int reps = n < (1u << 20) ? 50 : 8;
        double t[50];
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); /* warm-up */
        for (int r = 0; r < reps; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            t[r] = MPI_Wtime() - t0;
        }
        for (int i = 1; i < reps; i++) /* insertion sort: reps is small */
            for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
                double x = t[j];
                t[j] = t[j - 1];
                t[j - 1] = x;
            }
        double med = t[reps / 2], bytes = (double)n * 4, alg = bytes / med / 1e9;
        if (!rank)
            printf("RESULT allreduce p=%d bytes=%.0f time_us=%.1f algbw_GBs=%.2f busbw_GBs=%.2f\n", p, bytes, med * 1e6,
                   alg, alg * 2.0 * (p - 1) / p);
    }
    free(buf);
    MPI_Finalize();
    return 0;
}
