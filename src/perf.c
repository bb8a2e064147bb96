/* perf.c: timers and the measured matmul ceiling. */
#include "perf.h"

#include <stdlib.h>
#include <time.h>

#include "kernels.h"

double st_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char *phase_name[ST_PH_COUNT] = {"data", "forward", "backward", "grad reduce (dp)",
                                              "optimizer", "evaluation", "checkpoint"};

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

st_err st_measure_peak_gflops(int n, double *gflops)
{
    const char *env = getenv("SHARDTUNE_PEAK_GFLOPS");
    if (env && atof(env) > 0) {
        *gflops = atof(env);
        return ST_OK;
    }
    float *a = malloc(sizeof(float) * (size_t)n * n * 3);
    if (!a) ST_FAIL(ST_ERR_MEM, "out of memory measuring the matmul rate");
    float *b = a + (size_t)n * n, *c = b + (size_t)n * n;
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = (float)((i % 7) - 3) * 0.01f;
    st_matmul_desc d = {.B0 = 1, .B1 = 1, .M = n, .K = n, .N = n,
                        .sa = {0, 0, n, 1}, .sb = {0, 0, n, 1}, .sc = {0, 0, n, 1}};
    st_err e = st_matmul(&d, c, a, b, NULL); /* warm-up, creates the primitive */
    double best = 1e30;
    for (int r = 0; r < 5 && !e; r++) {
        double t0 = st_now();
        e = st_matmul(&d, c, a, b, NULL);
        double dt = st_now() - t0;
        if (dt < best) best = dt;
    }
    free(a);
    if (e) { st_error_trace(__FILE__, __LINE__, __func__); return e; }
    *gflops = 2.0 * n * (double)n * n / best / 1e9;
    return ST_OK;
}
