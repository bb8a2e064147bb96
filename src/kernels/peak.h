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

#endif
