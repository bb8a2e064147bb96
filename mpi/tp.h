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
 * See block_forward in src/model/model.c for the sequence.
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

/* w16: this rank's w rounded to bf16 for a bf16 product (kernels.h), or NULL for fp32. */
st_err st_tp_column_forward(float *out, const float *inp, const float *w, const st_bf16 *w16,
                            const float *bias, int64_t N, int64_t IC, int64_t OC_local);
/* dinp (N,IC) is this rank's PARTIAL input gradient, added (+=) when accumulate. */
st_err st_tp_column_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                             const float *w, const st_bf16 *w16, int64_t N, int64_t IC,
                             int64_t OC_local, int accumulate);

/* out (N,OC) = allreduce(inp (N,IC_local) @ w_r^T) + bias */
st_err st_tp_row_forward(MPI_Comm tp, float *out, const float *inp, const float *w,
                         const st_bf16 *w16, const float *bias, int64_t N, int64_t IC_local,
                         int64_t OC);
st_err st_tp_row_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                          const float *w, const st_bf16 *w16, int64_t N, int64_t IC_local, int64_t OC);

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
 * logits). rowbuf is scratch of 3*N floats. */
st_err st_tp_cross_entropy(MPI_Comm tp, double *loss_sum, float *dlogits, float *logits,
                           const int32_t *targets, const float *mask, float scale, int64_t N,
                           int v0, int Vl, int V, float *rowbuf);

/* Full logits (N, V) on every rank from the local (N, Vl) slices (generation
 * only; training never calls this). full must hold N * Vl * tp floats; the
 * first V columns of each row are the vocabulary, row stride Vl*tp. */
st_err st_tp_gather_logits(MPI_Comm tp, float *full, const float *local, int64_t N, int Vl);

#endif
