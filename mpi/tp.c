/* tp.c: column/row-parallel linear layers, vocab-parallel embedding and
 * cross-entropy. The split itself is described in tp.h. */
#include "mpi/tp.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/timer.h"
#include "kernels/kernels.h"
#include "mpi/commstats.h"
#include "mpi/grid.h"

st_comm_stats st_comm;
void st_comm_reset(void) { memset(&st_comm, 0, sizeof st_comm); }

/* Every tp collective goes through here, so its time and bytes are counted. */
static st_err tp_allreduce(MPI_Comm tp, void *buf, int64_t n, MPI_Datatype type, MPI_Op op, int elem)
{
    if (n > INT32_MAX) ST_FAIL(ST_ERR_ARG, "tp all-reduce of %lld elements exceeds one MPI message", (long long)n);
    double t0 = st_now();
    ST_MPI(MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, type, op, tp));
    st_comm.tp_seconds += st_now() - t0;
    st_comm.tp_bytes += (uint64_t)n * (uint64_t)elem;
    st_comm.tp_calls++;
    return ST_OK;
}

st_err st_tp_allreduce(MPI_Comm tp, float *buf, int64_t n)
{
    int size = 1;
    ST_MPI(MPI_Comm_size(tp, &size));
    if (size == 1) return ST_OK;
    return tp_allreduce(tp, buf, n, MPI_FLOAT, MPI_SUM, 4);
}

st_err st_tp_column_forward(float *out, const float *inp, const float *w, const st_bf16 *w16,
                            const float *bias, int64_t N, int64_t IC, int64_t OC_local)
{
    return st_linear_forward(out, inp, w, w16, bias, N, IC, OC_local);
}

st_err st_tp_column_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                             const float *w, const st_bf16 *w16, int64_t N, int64_t IC,
                             int64_t OC_local, int accumulate)
{
    return st_linear_backward(dinp, dw, db, dout, inp, w, w16, N, IC, OC_local, accumulate);
}

st_err st_tp_row_forward(MPI_Comm tp, float *out, const float *inp, const float *w,
                         const st_bf16 *w16, const float *bias, int64_t N, int64_t IC_local,
                         int64_t OC)
{
    ST_TRY(st_linear_forward(out, inp, w, w16, NULL, N, IC_local, OC));
    ST_TRY(st_tp_allreduce(tp, out, N * OC));
    if (bias) /* added once, after the sum, so tp ranks do not add it tp times */
        for (int64_t i = 0; i < N; i++)
            for (int64_t j = 0; j < OC; j++) out[i * OC + j] += bias[j];
    return ST_OK;
}

st_err st_tp_row_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                          const float *w, const st_bf16 *w16, int64_t N, int64_t IC_local, int64_t OC)
{
    return st_linear_backward(dinp, dw, db, dout, inp, w, w16, N, IC_local, OC, 0);
}

st_err st_tp_embed_forward(MPI_Comm tp, float *out, const int32_t *tokens, const float *wte_local,
                           int64_t N, int64_t C, int v0, int Vl)
{
    for (int64_t i = 0; i < N; i++) {
        int64_t r = (int64_t)tokens[i] - v0;
        if (r >= 0 && r < Vl) memcpy(out + i * C, wte_local + r * C, (size_t)C * sizeof(float));
        else memset(out + i * C, 0, (size_t)C * sizeof(float));
    }
    return st_tp_allreduce(tp, out, N * C);
}

void st_tp_embed_backward(float *dwte_local, const float *dout, const int32_t *tokens, int64_t N,
                          int64_t C, int v0, int Vl)
{
    for (int64_t i = 0; i < N; i++) {
        int64_t r = (int64_t)tokens[i] - v0;
        if (r < 0 || r >= Vl) continue;
        float *d = dwte_local + r * C;
        const float *g = dout + i * C;
        for (int64_t c = 0; c < C; c++) d[c] += g[c];
    }
}

st_err st_tp_cross_entropy(MPI_Comm tp, double *loss_sum, float *dlogits, float *logits,
                           const int32_t *targets, const float *mask, float scale, int64_t N,
                           int v0, int Vl, int V, float *rowbuf)
{
    int real = V - v0 < Vl ? V - v0 : Vl; /* columns that are real vocabulary */
    if (real < 0) real = 0;
    float *rmax = rowbuf, *rsum = rowbuf + N, *rtgt = rowbuf + 2 * N;
    /* 1. row maxima over the whole vocabulary */
    for (int64_t i = 0; i < N; i++) {
        const float *l = logits + i * Vl;
        float m = -FLT_MAX;
        for (int j = 0; j < real; j++) m = l[j] > m ? l[j] : m;
        rmax[i] = m;
    }
    int size = 1;
    ST_MPI(MPI_Comm_size(tp, &size));
    if (size > 1) ST_TRY(tp_allreduce(tp, rmax, N, MPI_FLOAT, MPI_MAX, 4));
    /* 2. sum of exp and the target's logit (held by exactly one rank) */
    for (int64_t i = 0; i < N; i++) {
        const float *l = logits + i * Vl;
        double s = 0.0;
        for (int j = 0; j < real; j++) s += exp((double)(l[j] - rmax[i]));
        rsum[i] = (float)s;
        int64_t t = (int64_t)targets[i] - v0;
        rtgt[i] = (t >= 0 && t < real) ? l[t] : 0.0f;
    }
    if (size > 1) ST_TRY(tp_allreduce(tp, rsum, 2 * N, MPI_FLOAT, MPI_SUM, 4));
    /* 3. loss and, on request, its gradient: (softmax - onehot) * mask * scale */
    double total = 0.0;
    for (int64_t i = 0; i < N; i++) {
        float w = mask ? mask[i] : 1.0f;
        if (w != 0.0f) total += (double)w * scale * (log((double)rsum[i]) + rmax[i] - rtgt[i]);
        if (!dlogits) continue;
        float *l = logits + i * Vl, *d = dlogits + i * Vl;
        float k = w * scale, inv = 1.0f / rsum[i];
        for (int j = 0; j < real; j++) d[j] = k * expf(l[j] - rmax[i]) * inv;
        for (int j = real; j < Vl; j++) d[j] = 0.0f;
        int64_t t = (int64_t)targets[i] - v0;
        if (t >= 0 && t < real) d[t] -= k;
    }
    *loss_sum = total;
    return ST_OK;
}

st_err st_tp_gather_logits(MPI_Comm tp, float *full, const float *local, int64_t N, int Vl)
{
    int size = 1;
    ST_MPI(MPI_Comm_size(tp, &size));
    if (size == 1) {
        memmove(full, local, (size_t)N * Vl * sizeof(float));
        return ST_OK;
    }
    float *tmp = malloc((size_t)N * Vl * size * sizeof(float));
    if (!tmp) ST_FAIL(ST_ERR_MEM, "out of memory gathering logits");
    int rc = MPI_Allgather(local, (int)(N * Vl), MPI_FLOAT, tmp, (int)(N * Vl), MPI_FLOAT, tp);
    if (rc != MPI_SUCCESS) {
        free(tmp);
        ST_FAIL(ST_ERR_MPI, "MPI_Allgather of logits failed");
    }
    /* (tp, N, Vl) -> (N, tp*Vl) */
    for (int r = 0; r < size; r++)
        for (int64_t i = 0; i < N; i++)
            memcpy(full + i * (int64_t)Vl * size + (int64_t)r * Vl, tmp + ((int64_t)r * N + i) * Vl,
                   (size_t)Vl * sizeof(float));
    free(tmp);
    return ST_OK;
}
