/* tp.h: tensor parallelism, Megatron-style. The one place that knows how a
 * layer is split over the ranks of the tp communicator.
 *
 *   column-parallel linear  Y_r = X W_r^T + b_r      W split by output rows.
 *       forward: no communication (X is replicated);
 *       backward: each rank holds a partial dX; the caller sums the partials
 *       of every column-parallel layer reading the same X, then calls
 *       st_tp_allreduce once (that is the "g" operator of Megatron).
 *   row-parallel linear     Y = sum_r X_r W_r^T + b   W split by input columns.
 *       forward: partial products all-reduced over tp, then the replicated
 *       bias added once (the "f" operator);
 *       backward: dY is replicated, so dX_r, dW_r and db need no communication.
 *
 * The attention block is q, k, v column-parallel (each rank owns H/tp query
 * heads and KV/tp key/value heads) and o row-parallel; the MLP is gate/up
 * column-parallel and down row-parallel (each rank owns d_ff/tp hidden units).
 * src/model/model.c: proj() gives each projection its split (st_tp_linear);
 * attn_forward and mlp_forward run the sequence.
 *
 * Embedding and LM head are split by vocabulary: each rank owns ceil(V/tp)
 * rows. The embedding sums one-hot lookups over tp; the cross-entropy works on
 * local logits and exchanges only per-row maxima and sums, so no rank ever
 * holds the full (tokens x V) logits.
 */
#ifndef ST_TP_H
#define ST_TP_H

#include <mpi.h>
#include <stdint.h>

#include "core/err.h"
#include "kernels/kernels.h"

/* In-place sum over the tp communicator (no-op for one rank). */
st_err st_tp_allreduce(MPI_Comm tp, float *buf, int64_t n);

/* One linear layer's slice on this rank: Megatron's ColumnParallelLinear
 * (COLUMN: w holds this rank's output rows, Y_r = X W_r^T + b_r) or
 * RowParallelLinear (ROW: w holds this rank's input columns,
 * Y = sum_r X_r W_r^T + b). The model's projections all go through it. */
typedef enum { ST_TP_COLUMN, ST_TP_ROW } st_tp_split;
typedef struct {
    st_tp_split split;
    const float *w;        /* (out, in): this rank's slice */
    const st_bf16 *w16;    /* w rounded to bf16 for bf16 products (kernels.h), or NULL for fp32 */
    const float *b;        /* COLUMN: this rank's `out` biases; ROW: the whole bias, added once; or NULL */
    float *dw, *db;        /* where backward adds the gradients; NULL for a frozen tensor */
    int64_t in, out;       /* this rank's input and output features */
} st_tp_linear;

/* out (N, l->out) from inp (N, l->in). COLUMN: no communication; ROW: the
 * partial products are all-reduced over tp, then the bias is added. */
st_err st_tp_linear_forward(MPI_Comm tp, const st_tp_linear *l, float *out, const float *inp, int64_t N);
/* Adds dw, db; dinp (N, l->in) = dout @ w, added (+=) when accumulate.
 * COLUMN: dinp is this rank's PARTIAL input gradient -- the caller sums the
 * partials of every column-parallel layer reading the same input, then calls
 * st_tp_allreduce once. ROW: dout is replicated, so dinp, dw and db are
 * complete without communication. */
st_err st_tp_linear_backward(const st_tp_linear *l, float *dinp, const float *dout, const float *inp, int64_t N,
                             int accumulate);

/* out (N,C) = wte[tokens] over the full vocabulary; wte_local (Vl,C) holds
 * rows [v0, v0+Vl). */
st_err st_tp_embed_forward(MPI_Comm tp, float *out, const int32_t *tokens, const float *wte_local,
                           int64_t N, int64_t C, int v0, int Vl);
/* dwte_local += scatter of dout rows whose token is local. */
void st_tp_embed_backward(float *dwte_local, const float *dout, const int32_t *tokens, int64_t N,
                          int64_t C, int v0, int Vl);

/* Vocab-parallel masked cross-entropy.
 * logits (N,Vl) local columns [v0, v0+Vl), of which the first V - v0 are real
 * (the rest is padding, ignored). Returns in *loss_sum the sum over rows of
 * mask * (logsumexp - logit[target]) * scale (identical on every tp rank), and
 * when dlogits is non-NULL writes d(loss_sum)/d(logits) there (may alias
 * logits). rowbuf is scratch of 3*N floats; afterwards it holds per row the
 * maximum logit, the sum of exp(logit - maximum) and the target's logit.
 * entropy (N), when not NULL, receives each row's softmax entropy in nats
 * (one more exchange of N floats). */
st_err st_tp_cross_entropy(MPI_Comm tp, double *loss_sum, float *dlogits, float *logits,
                           const int32_t *targets, const float *mask, float scale, int64_t N,
                           int v0, int Vl, int V, float *rowbuf, float *entropy);

/* Full logits (N, V) on every rank from the local (N, Vl) slices (generation
 * only; training never calls this). full must hold N * Vl * tp floats; the
 * first V columns of each row are the vocabulary, row stride Vl*tp. */
st_err st_tp_gather_logits(MPI_Comm tp, float *full, const float *local, int64_t N, int Vl);

#endif
