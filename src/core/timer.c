/* timer.c: clocks and per-phase timers. */
#include "core/timer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void st_format_eta(char *buf, size_t n, double seconds)
{
    if (seconds < 0 || !isfinite(seconds) || seconds > 1e12) {
        snprintf(buf, n, "?");
        return;
    }
    long long s = llround(seconds), m = llround(seconds / 60); /* round once: never "10m60s" */
    if (s < 90) snprintf(buf, n, "%llds", s);
    else if (m < 90) snprintf(buf, n, "%lldm%02llds", s / 60, s % 60);
    else snprintf(buf, n, "%lldh%02lldm", m / 60, m % 60);
}

double st_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double process_start = -1; /* one per process, like the clock itself */

void st_clock_start(void) { process_start = st_now(); }

double st_since_start(void)
{
    if (process_start < 0) st_clock_start();
    return st_now() - process_start;
}

static const char *phase_name[ST_PH_COUNT] = {"data", "generation", "reward", "forward", "backward",
                                              "grad reduce (dp)", "optimizer", "evaluation", "checkpoint"};

void st_timer_start(st_timers *t, int phase) { t->start[phase] = st_now(); }

void st_timer_stop(st_timers *t, int phase)
{
    t->total[phase] += st_now() - t->start[phase];
    t->calls[phase]++;
}

void st_timers_print(const st_timers *t, double wall, FILE *f)
{
    fprintf(f, "%-18s %10s %8s %8s\n", "phase (rank 0)", "seconds", "share", "calls");
    double acc = 0;
    for (int i = 0; i < ST_PH_COUNT; i++) {
        if (!t->calls[i]) continue;
        acc += t->total[i];
        fprintf(f, "%-18s %10.3f %7.1f%% %8ld\n", phase_name[i], t->total[i],
                wall > 0 ? 100.0 * t->total[i] / wall : 0.0, t->calls[i]);
    }
    fprintf(f, "%-18s %10.3f %7.1f%%\n", "other", wall - acc, wall > 0 ? 100.0 * (wall - acc) / wall : 0.0);
    fprintf(f, "%-18s %10.3f\n", "wall", wall);
}
