/* dp.h: data parallelism. Gradient reduction over the dp communicator,
 * bucketed by layer and overlapped with the backward pass, and with ZeRO-1 the
 * optimizer slices and the parameter all-gather.
 *
 * Buckets: the backward pass finishes layers from last to first; as soon as a
 * layer's gradients (one contiguous range, see src/core/params.h) are
 * complete, st_dp_bucket_ready starts a nonblocking reduction of that range
 * and the backward pass goes on with the next layer. st_dp_finish reduces
 * what is left (embeddings, final norm, head) and waits for everything.
 *
 * Without ZeRO each bucket is all-reduced: every rank ends with the whole
 * summed gradient. With ZeRO-1 each bucket is reduce-scattered: rank r ends
 * with the summed gradient of its own slice [own[r], own[r+1]) only, updates
 * that slice with its share of the AdamW state (1/dp of it), and
 * st_dp_allgather_params then makes the parameters whole again.
 *
 * Extra parameter sets (a classification head, LoRA adapters) are replicated
 * over dp and never sliced: st_dp_extra_ready all-reduces one set's gradients
 * alongside the buckets, and st_dp_finish waits for them too.
 *
 * Counts are 64-bit: ranges longer than one MPI call are chunked (mpi/comm.h).
 */
#ifndef ST_DP_H
#define ST_DP_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "mpi/comm.h"

typedef struct {
    MPI_Comm dp;
    int size, rank;
    int zero;             /* ZeRO-1 on */
    size_t numel;         /* floats in the gradient buffer */
    int64_t *own;         /* size+1 slice boundaries; this rank owns [own[rank], own[rank+1]) */
    int64_t *counts, *displs; /* size each, for the parameter all-gather */
    st_requests pending;  /* buckets and extra sets in flight */
    float *slice;         /* ZeRO: reduce-scatter results for the owned slice */
    size_t reduced_hi;    /* buckets cover [reduced_lo, numel) so far (they arrive top-down) */
    size_t reduced_lo;
} st_dp;

/* numel must be the same on every rank of dp (checked). */
st_err st_dp_init(st_dp *d, MPI_Comm dp, size_t numel, int zero);
void st_dp_free(st_dp *d);

/* This rank's optimizer range: its ZeRO slice, or everything without ZeRO. */
void st_dp_owned(const st_dp *d, size_t *begin, size_t *end);

/* Start of a step's last backward: nothing reduced yet. */
void st_dp_begin(st_dp *d);
/* grads[lo, hi) are final on this rank: start reducing them (sum). Ranges must
 * arrive in descending order and tile the buffer from the top. */
st_err st_dp_bucket_ready(st_dp *d, float *grads, size_t lo, size_t hi);
/* An extra set's gradients (n floats, replicated over dp) are final: start
 * summing them over dp. */
st_err st_dp_extra_ready(st_dp *d, float *grads, size_t n);
/* Reduce [0, reduced_lo) and wait for every bucket and extra set. Afterwards
 * the owned range of grads (and every extra set) holds the sum over dp. */
st_err st_dp_finish(st_dp *d, float *grads);

/* ZeRO-1: every rank contributes its updated slice; all get all params. */
st_err st_dp_allgather_params(st_dp *d, float *params);

#endif
