/* peak.h: the measured matmul ceiling that model FLOP utilisation (MFU) is
 * reported against. */
#ifndef ST_PEAK_H
#define ST_PEAK_H

#include "core/err.h"

/* fp32 matrix-product rate of this process (GFLOP/s) measured with oneDNN on
 * an n x n x n product, best of a few runs. SHARDTUNE_PEAK_GFLOPS overrides
 * it (to skip the measurement or use a number from benchmarks/). */
st_err st_measure_peak_gflops(int n, double *gflops);

#endif
