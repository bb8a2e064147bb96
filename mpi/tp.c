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
#include "mpi/comm.h"

st_comm_stats st_comm;
void st_comm_reset(void) { memset(&st_comm, 0, sizeof st_comm); }

/* Every tp collective goes through here, so its time and bytes are counted. */
static st_err tp_allreduce(MPI_Comm tp, float *buf, int64_t n, st_op op)
{
    double t0 = st_now();
    ST_TRY(st_allreduce(tp, buf, n, ST_M_F32, op));
    st_comm.tp_seconds += st_now() - t0;
    st_comm.tp_bytes += (uint64_t)n * sizeof(float);
    st_comm.tp_calls++;
    return ST_OK;
}

st_err st_tp_allreduce(MPI_Comm tp, float *buf, int64_t n)
{
    if (st_comm_size(tp) == 1) return ST_OK;
    return tp_allreduce(tp, buf, n, ST_OP_SUM);
}

st_err st_tp_linear_forward(MPI_Comm tp, const st_tp_linear *l, float *out, const float *inp, int64_t N)
{
    if (l->split == ST_TP_COLUMN) /* X is replicated: no communication */
        return st_linear_forward(out, inp, l->w, l->w16, l->b, N, l->in, l->out);
    /* row: partial products over this rank's input columns, summed ("f") */
    ST_TRY(st_linear_forward(out, inp, l->w, l->w16, NULL, N, l->in, l->out));
    ST_TRY(st_tp_allreduce(tp, out, N * l->out));
    if (l->b) /* added once, after the sum, so tp ranks do not add it tp times */
        for (int64_t i = 0; i < N; i++)
            for (int64_t j = 0; j < l->out; j++) out[i * l->out + j] += l->b[j];
    return ST_OK;
}

st_err st_tp_linear_backward(const st_tp_linear *l, float *dinp, const float *dout, const float *inp, int64_t N,
                             int accumulate)
{
    /* column: dinp is this rank's partial ("g" sums it); row: dout is replicated, dinp complete */
    return st_linear_backward(dinp, l->dw, l->db, dout, inp, l->w, l->w16, N, l->in, l->out, accumulate);
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
                           int v0, int Vl, int V, float *rowbuf, float *entropy)
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
    const int size = st_comm_size(tp);
    if (size > 1) ST_TRY(tp_allreduce(tp, rmax, N, ST_OP_MAX));
    /* 2. sum of exp and the target's logit (held by exactly one rank) */
    for (int64_t i = 0; i < N; i++) {
        const float *l = logits + i * Vl;
        double s = 0.0;
        for (int j = 0; j < real; j++) s += exp((double)(l[j] - rmax[i]));
        rsum[i] = (float)s;
        int64_t t = (int64_t)targets[i] - v0;
        rtgt[i] = (t >= 0 && t < real) ? l[t] : 0.0f;
    }
    if (size > 1) ST_TRY(tp_allreduce(tp, rsum, 2 * N, ST_OP_SUM));
    if (entropy) { /* H = log Z + max - E[logit], E[logit] = sum exp(l - max) l / Z */
        for (int64_t i = 0; i < N; i++) {
            const float *l = logits + i * Vl;
            double s = 0.0;
            for (int j = 0; j < real; j++) s += exp((double)(l[j] - rmax[i])) * l[j];
            entropy[i] = (float)s;
        }
        if (size > 1) ST_TRY(tp_allreduce(tp, entropy, N, ST_OP_SUM));
        for (int64_t i = 0; i < N; i++)
            entropy[i] = (float)(log((double)rsum[i]) + rmax[i] - entropy[i] / (double)rsum[i]);
    }
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
    const int size = st_comm_size(tp);
    if (size == 1) {
        memmove(full, local, (size_t)N * Vl * sizeof(float));
        return ST_OK;
    }
    float *tmp = malloc((size_t)N * Vl * size * sizeof(float));
    if (!tmp) ST_FAIL(ST_ERR_MEM, "out of memory gathering logits");
    st_err e = st_allgather(tp, local, tmp, N * Vl, ST_M_F32);
    if (e) {
        free(tmp);
        ST_TRY(e);
    }
    /* (tp, N, Vl) -> (N, tp*Vl) */
    for (int r = 0; r < size; r++)
        for (int64_t i = 0; i < N; i++)
            memcpy(full + i * (int64_t)Vl * size + (int64_t)r * Vl, tmp + ((int64_t)r * N + i) * Vl,
                   (size_t)Vl * sizeof(float));
    free(tmp);
    return ST_OK;
}
