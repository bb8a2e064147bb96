/* peak.h: the measured matmul ceiling that model FLOP utilisation (MFU) is
 * reported against. */
#ifndef ST_PEAK_H
#define ST_PEAK_H

#include "core/err.h"

/* Matrix-product rate of this process (GFLOP/s) measured with oneDNN on an
 * n x n x n product, best of a few runs: fp32, or bf16 inputs with fp32
 * accumulation when bf16 (the ceiling MFU of a bf16 run is reported against).
 * SHARDTUNE_PEAK_GFLOPS (SHARDTUNE_PEAK_GFLOPS_BF16) overrides it (to skip the
 * measurement or use a number from benchmarks/). */
st_err st_measure_peak_gflops(int n, int bf16, double *gflops);

/* The precision of a run's matrix products, from want = "fp32", "bf16" or
 * "auto", with the rates measured here on n x n x n products:
 *   fp32  fp32.
 *   bf16  bf16 mixed precision where oneDNN has a bf16 matmul on this CPU
 *         (an error otherwise; without bf16 instructions it is emulated, slowly).
 *   auto  bf16 when the CPU has bf16 dot products, oneDNN a bf16 matmul, and
 *         that matmul runs at least ST_BF16_MIN_GAIN times the fp32 rate
 *         (below that, rounding the activations and refreshing the weights'
 *         copy eat the gain: Intel CPUs without AMX run bf16 no faster than
 *         fp32), else fp32.
 * p gets the choice, both rates (bf16's 0 when not measured) and why, in words. */
#define ST_BF16_MIN_GAIN 1.2
typedef struct {
    int bf16;
    double fp32_gflops, bf16_gflops;
    char why[240];
} st_precision;
st_err st_precision_choose(const char *want, int n, st_precision *p);

#endif
