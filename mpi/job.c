/* job.c: start and end of a process in the MPI job (job.h). */
#include "mpi/job.h"

#include <stdio.h>
#include <unistd.h>

#include "core/timer.h"

int st_job_start(int *argc, char ***argv, int *rank, int *size)
{
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "shardtune: error: MPI_Init failed (is this an Open MPI build matching mpirun?)\n");
        return 1;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
    return 0;
}

int st_job_finish(st_err local, double grace_seconds)
{
    /* 0 ok < 1 stopped early < 2 failed: the worst result on any rank wins */
    int mine = local == ST_OK ? 0 : local == ST_STOPPED ? 1 : 2, any = mine, done = 0, rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Request rq;
    if (MPI_Iallreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD, &rq) != MPI_SUCCESS) {
        fprintf(stderr, "shardtune[rank %d]: the closing vote failed; aborting the job\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    double t0 = st_now();
    while (!done) {
        if (MPI_Test(&rq, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) break;
        if (!done) usleep(1000);
        if (!done && mine == 2 && st_now() - t0 > grace_seconds) {
            fprintf(stderr, "shardtune[rank %d]: other ranks did not stop; aborting the job\n", rank);
            fflush(stderr);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    if (any == 2 && mine < 2 && !rank) fprintf(stderr, "shardtune: stopped because another rank failed\n");
    MPI_Finalize();
    return any == 2 ? 1 : any == 1 ? ST_EXIT_STOPPED : 0;
}
