/* perf.h: clocks, per-phase timers, and the measured matmul ceiling that
 * model FLOP utilisation (MFU) is reported against. */
#ifndef ST_PERF_H
#define ST_PERF_H

#include <stdio.h>

#include "err.h"

double st_now(void);  /* seconds, monotonic */

/* Per-phase wall time of a run (PETSc's -log_view, in small). */
enum { ST_PH_DATA, ST_PH_FORWARD, ST_PH_BACKWARD, ST_PH_GRAD_REDUCE, ST_PH_OPTIMIZER, ST_PH_EVAL,
       ST_PH_CHECKPOINT, ST_PH_COUNT };
typedef struct { double total[ST_PH_COUNT], start[ST_PH_COUNT]; long calls[ST_PH_COUNT]; } st_timers;
void st_timer_start(st_timers *t, int phase);
void st_timer_stop(st_timers *t, int phase);
void st_timers_print(const st_timers *t, double wall, FILE *f);

/* fp32 matrix-product rate of this process (GFLOP/s) measured with oneDNN on
 * an n x n x n product, best of a few runs. SHARDTUNE_PEAK_GFLOPS overrides
 * it (to skip the measurement or use a number from benchmarks/). */
st_err st_measure_peak_gflops(int n, double *gflops);

#endif
