/* timer.h: clocks and per-phase timers (where a run's time went). */
#ifndef ST_TIMER_H
#define ST_TIMER_H

#include <stdio.h>

#include "core/err.h"

double st_now(void);  /* seconds, monotonic */
/* A duration for a progress line, rounded to whole seconds first: "42s",
 * "10m05s", "3h07m" ("?" when negative or not finite). */
void st_format_eta(char *buf, size_t n, double seconds);

/* Start-up figures: main() marks the process's start first thing; a
 * command reports st_since_start() when its weights are loaded, its first
 * token is drawn, its first step begins. (Unmarked: since the first call.) */
void st_clock_start(void);
double st_since_start(void);

/* Per-phase wall time of a run (PETSc's -log_view, in small). */
enum { ST_PH_DATA, ST_PH_GENERATE, ST_PH_REWARD, ST_PH_FORWARD, ST_PH_BACKWARD, ST_PH_GRAD_REDUCE,
       ST_PH_OPTIMIZER, ST_PH_EVAL, ST_PH_CHECKPOINT, ST_PH_COUNT };
typedef struct { double total[ST_PH_COUNT], start[ST_PH_COUNT]; long calls[ST_PH_COUNT]; } st_timers;
void st_timer_start(st_timers *t, int phase);
void st_timer_stop(st_timers *t, int phase);
void st_timers_print(const st_timers *t, double wall, FILE *f);

#endif
