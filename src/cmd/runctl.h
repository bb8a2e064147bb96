/* runctl.h: when a training run saves or stops besides its schedule.
 *
 *   signals    SIGTERM (scancel, pre-emption), SIGUSR1 (Slurm's warning
 *              before the time limit: --signal=B:USR1@300) and SIGINT ask
 *              the run to stop: every rank finishes its step, a checkpoint
 *              is saved and the command returns ST_STOPPED (exit 75);
 *   time       the run stops the same way when the time left before its
 *              deadline -- time_limit minutes after the start, or Slurm's
 *              SLURM_JOB_END_TIME -- no longer covers two steps, two saves
 *              (the longest measured, or before the first save an estimate
 *              of 100 MB/s + 5 s) and 5 s to exit;
 *   interval   a checkpoint every save_minutes of wall time, besides
 *              save_every steps.
 * A signal may reach some ranks only, or at different moments; the decision
 * after each step is agreed over the world (one small all-reduce), with the
 * clocks of world rank 0 deciding the time-based parts, so every rank saves
 * and stops at the same step.
 */
#ifndef ST_RUNCTL_H
#define ST_RUNCTL_H

#include <mpi.h>
#include <stdint.h>

#include "core/err.h"

typedef enum { ST_RUN_GO = 0, ST_RUN_SAVE = 1, ST_RUN_STOP = 2 } st_run_action;

typedef struct {
    double start, deadline;      /* st_now() seconds; deadline 0 = none */
    double save_interval;        /* seconds, 0 = off */
    double last_save;            /* when the last checkpoint was written (or the start) */
    double step_max, save_max;   /* the longest step and save measured so far */
    double save_guess;           /* a save's duration before one is measured */
    int signal;                  /* the agreed stop signal, 0 = none */
    int installed;
} st_runctl;

/* Start: handlers for TERM, USR1 and INT; the deadline from time_limit_min
 * (0 = none) and SLURM_JOB_END_TIME (epoch seconds, when set); a save every
 * save_min minutes (0 = off). A malformed SLURM_JOB_END_TIME is an error
 * naming it. */
st_err st_runctl_start(st_runctl *c, double time_limit_min, double save_min);
/* The size of a checkpoint, for the estimate of a save before one is timed. */
void st_runctl_expect_save(st_runctl *c, double bytes);
/* Restore the previous handlers and forget any stop request. */
void st_runctl_end(st_runctl *c);
void st_runctl_step_took(st_runctl *c, double seconds);
void st_runctl_saved(st_runctl *c, double seconds);

/* After a step, collectively over world: what to do now. why receives the
 * reason of a STOP or SAVE ("SIGTERM", "the time limit", "30 minutes since
 * the last checkpoint"). */
st_err st_runctl_decide(st_runctl *c, MPI_Comm world, st_run_action *what, char *why, size_t cap);

/* What the signal handlers do; tests call it to ask for a stop in-process. */
void st_runctl_request_stop(int sig);

#endif
