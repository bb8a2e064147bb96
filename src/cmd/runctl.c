/* runctl.c: stop and save requests of a training run (runctl.h). */
#include "cmd/runctl.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/timer.h"
#include "mpi/comm.h"

/* Time kept for leaving after the last save (reports, MPI_Finalize). */
#define EXIT_SECONDS 5.0

static volatile sig_atomic_t pending_signal;
static struct sigaction saved_actions[3];
static const int stop_signals[3] = {SIGTERM, SIGUSR1, SIGINT};

void st_runctl_request_stop(int sig)
{
    if (!pending_signal) pending_signal = sig;
}

static void on_signal(int sig) { st_runctl_request_stop(sig); }

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGINT: return "SIGINT";
    default: return "a signal";
    }
}

st_err st_runctl_start(st_runctl *c, double time_limit_min, double save_min)
{
    memset(c, 0, sizeof *c);
    c->start = c->last_save = st_now();
    c->save_interval = save_min > 0 ? save_min * 60 : 0;
    c->save_guess = 5;
    if (time_limit_min > 0) c->deadline = c->start + time_limit_min * 60;
    const char *end = getenv("SLURM_JOB_END_TIME");
    if (end && *end) {
        char *rest;
        errno = 0;
        long long epoch = strtoll(end, &rest, 10);
        if (errno || *rest || epoch <= 0)
            ST_FAIL(ST_ERR_ARG, "SLURM_JOB_END_TIME='%s' is not a time in seconds since the epoch", end);
        /* epoch -> this process's monotonic clock */
        double at = c->start + (double)(epoch - (long long)time(NULL));
        if (!c->deadline || at < c->deadline) c->deadline = at;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART; /* file and MPI I/O go on; the step ends normally */
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++)
        if (sigaction(stop_signals[i], &sa, &saved_actions[i]))
            ST_FAIL(ST_ERR_INTERNAL, "cannot install the %s handler: %s", signal_name(stop_signals[i]),
                    strerror(errno));
    c->installed = 1;
    return ST_OK;
}

void st_runctl_end(st_runctl *c)
{
    if (c->installed)
        for (int i = 0; i < 3; i++) sigaction(stop_signals[i], &saved_actions[i], NULL);
    c->installed = 0;
    pending_signal = 0; /* the process ends, or the next run in it starts clean */
}

void st_runctl_expect_save(st_runctl *c, double bytes) { c->save_guess = bytes / 100e6 + 5; }

void st_runctl_step_took(st_runctl *c, double seconds)
{
    if (seconds > c->step_max) c->step_max = seconds;
}

void st_runctl_saved(st_runctl *c, double seconds)
{
    c->last_save = st_now();
    if (seconds > c->save_max) c->save_max = seconds;
}

st_err st_runctl_decide(st_runctl *c, MPI_Comm world, st_run_action *what, char *why, size_t cap)
{
    /* [0] a signal seen on any rank; [1] rank 0's clock: 2 deadline, 1 save due */
    int32_t v[2] = {pending_signal, 0};
    if (st_comm_rank(world) == 0) {
        double now = st_now(), save = c->save_max > 0 ? c->save_max : c->save_guess;
        if (c->deadline > 0 && now + 2 * c->step_max + 2 * save + EXIT_SECONDS >= c->deadline) v[1] = 2;
        else if (c->save_interval > 0 && now - c->last_save >= c->save_interval) v[1] = 1;
    }
    ST_TRY(st_allreduce(world, v, 2, ST_M_I32, ST_OP_MAX));
    *what = ST_RUN_GO;
    if (v[0]) {
        c->signal = v[0];
        *what = ST_RUN_STOP;
        snprintf(why, cap, "%s", signal_name(v[0]));
    } else if (v[1] == 2) {
        *what = ST_RUN_STOP;
        snprintf(why, cap, "the time limit (too little time left for another step and a save)");
    } else if (v[1] == 1) {
        *what = ST_RUN_SAVE;
        snprintf(why, cap, "%g minutes since the last checkpoint", c->save_interval / 60);
    }
    return ST_OK;
}
