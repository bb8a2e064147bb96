/* mpi_check.h: running a Check suite under MPI. No fork (MPI and fork do not
 * mix), only rank 0 prints, and every rank exits nonzero if any rank failed. */
#ifndef ST_MPI_CHECK_H
#define ST_MPI_CHECK_H

#include <check.h>
#include <mpi.h>

static inline int st_run_mpi_suite(Suite *s)
{
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, rank ? CK_SILENT : CK_NORMAL);
    int failed = srunner_ntests_failed(sr), any = 0;
    srunner_free(sr);
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any ? 1 : 0;
}

/* A serial test that needs MPI (communicators, MPI-IO): one process, no fork,
 * MPI_Init/Finalize around the runner. Returns the exit status. */
static inline int st_run_serial_mpi_suite(int *argc, char ***argv, Suite *s)
{
    MPI_Init(argc, argv);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    MPI_Finalize();
    return failed ? 1 : 0;
}

#endif
