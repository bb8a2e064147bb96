/* job.h: the life of one shardtune process inside its MPI job: start, and an
 * end that stops every rank when any one failed.
 *
 * A failure on one rank must not leave the others waiting in a collective
 * forever, nor end the job with a silent MPI abort. At the end every rank
 * takes part in one nonblocking vote; a rank that failed waits a grace
 * period for the others to vote too (they do when they agreed on the error
 * with st_agree, or failed themselves) and aborts the job only if they never
 * arrive -- after its own message is printed.
 */
#ifndef ST_JOB_H
#define ST_JOB_H

#include <mpi.h>

#include "core/err.h"

/* MPI_Init_thread (FUNNELED) with MPI_ERRORS_RETURN on MPI_COMM_WORLD, so an
 * MPI failure is an error to report, not a crash. Returns nonzero (after a
 * message on stderr) when MPI cannot start. */
int st_job_start(int *argc, char ***argv, int *rank, int *size);

/* The vote and MPI_Finalize: returns the process exit status, the same on
 * every rank: 0 when every rank succeeded, ST_EXIT_STOPPED when every rank
 * stopped early (ST_STOPPED: saved, resumable), else 1. local is this rank's
 * result; an error's message must be printed before (st_error_print). */
#define ST_EXIT_STOPPED 75 /* EX_TEMPFAIL: the job scripts requeue or resubmit on it */
int st_job_finish(st_err local, double grace_seconds);

#endif
