/* peak.c: the matmul rate oneDNN reaches on this process's cores. */
#include "kernels/peak.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/timer.h"
#include "kernels/kernels.h"

st_err st_measure_peak_gflops(int n, int bf16, double *gflops)
{
    const char *env = getenv(bf16 ? "SHARDTUNE_PEAK_GFLOPS_BF16" : "SHARDTUNE_PEAK_GFLOPS");
    if (env && atof(env) > 0) {
        *gflops = atof(env);
        return ST_OK;
    }
    float *a = malloc(sizeof(float) * (size_t)n * n * 3);
    st_bf16 *h = malloc(sizeof(st_bf16) * (size_t)n * n);
    if (!a || !h) {
        free(a), free(h);
        ST_FAIL(ST_ERR_MEM, "out of memory measuring the matmul rate");
    }
    float *b = a + (size_t)n * n, *c = b + (size_t)n * n;
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = (float)((i % 7) - 3) * 0.01f;
    st_to_bf16(h, a, (int64_t)n * n);
    /* bf16: both inputs already rounded, as the weights of a bf16 step are */
    st_matmul_desc d = {.B0 = 1, .B1 = 1, .M = n, .K = n, .N = n, .bf16 = bf16,
                        .a_bf16 = bf16, .b_bf16 = bf16,
                        .sa = {0, 0, n, 1}, .sb = {0, 0, n, 1}, .sc = {0, 0, n, 1}};
    const void *x = bf16 ? (const void *)h : (const void *)a, *y = bf16 ? (const void *)h : (const void *)b;
    st_err e = st_matmul(&d, c, x, y, NULL); /* warm-up, creates the primitive */
    double best = 1e30;
    for (int r = 0; r < 5 && !e; r++) {
        double t0 = st_now();
        e = st_matmul(&d, c, x, y, NULL);
        double dt = st_now() - t0;
        if (dt < best) best = dt;
    }
    free(a), free(h);
    if (e) { st_error_trace(__FILE__, __LINE__, __func__); return e; }
    *gflops = 2.0 * n * (double)n * n / best / 1e9;
    return ST_OK;
}

st_err st_precision_choose(const char *want, int n, st_precision *p)
{
    memset(p, 0, sizeof *p);
    const int is_auto = !strcmp(want, "auto"), is_bf16 = !strcmp(want, "bf16");
    if (!is_auto && !is_bf16 && strcmp(want, "fp32"))
        ST_FAIL(ST_ERR_ARG, "precision '%s': expected fp32, bf16 or auto", want);
    ST_TRY(st_measure_peak_gflops(n, 0, &p->fp32_gflops));
    if (!is_auto && !is_bf16) {
        snprintf(p->why, sizeof p->why, "as asked");
        return ST_OK;
    }
    const char *impl = NULL;
    ST_TRY(st_bf16_matmul_available(&impl));
    const int native = st_cpu_has_bf16();
    if (!impl) {
        if (is_bf16)
            ST_FAIL(ST_ERR_ARG, "precision bf16: this oneDNN has no bf16 matrix product on this CPU "
                    "(use precision fp32 or auto)");
        snprintf(p->why, sizeof p->why, "auto: this oneDNN has no bf16 matrix product on this CPU");
        return ST_OK;
    }
    ST_TRY(st_measure_peak_gflops(n, 1, &p->bf16_gflops));
    const double gain = p->bf16_gflops / p->fp32_gflops;
    if (is_bf16) {
        p->bf16 = 1;
        snprintf(p->why, sizeof p->why, "as asked; oneDNN %s, %.2fx the fp32 matmul rate%s", impl, gain,
                 native ? "" : " (no bf16 instructions on this CPU: emulated)");
        return ST_OK;
    }
    p->bf16 = native && gain >= ST_BF16_MIN_GAIN;
    snprintf(p->why, sizeof p->why, "auto: %s; bf16 matmul (oneDNN %s) %.0f GFLOP/s = %.2fx fp32's %.0f%s",
             native ? "the CPU has bf16 dot products" : "the CPU has no bf16 instructions", impl,
             p->bf16_gflops, gain, p->fp32_gflops,
             p->bf16 ? "" : native ? ", below the 1.2x that pays for rounding" : "");
    return ST_OK;
}
