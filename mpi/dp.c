/* dp.c: bucketed, overlapped gradient reduction and ZeRO-1 slices. */
#include "mpi/dp.h"

#include <stdlib.h>
#include <string.h>

#include "core/timer.h"
#include "mpi/commstats.h"

st_err st_dp_init(st_dp *d, MPI_Comm dp, size_t numel, int zero)
{
    memset(d, 0, sizeof *d);
    d->dp = dp;
    d->size = st_comm_size(dp);
    d->rank = st_comm_rank(dp);
    d->zero = zero && d->size > 1;
    d->numel = numel;
    /* a rank with another layout would hang in the first reduction */
    ST_TRY(st_same_everywhere(dp, (int64_t)numel, "the number of parameters per rank"));
    ST_ALLOC(d->own, d->size + 1, "ZeRO slice table");
    ST_ALLOC(d->counts, d->size, "all-gather counts");
    ST_ALLOC(d->displs, d->size, "all-gather displacements");
    for (int r = 0; r <= d->size; r++)
        d->own[r] = d->zero ? (int64_t)(numel * (size_t)r / (size_t)d->size) : (r ? (int64_t)numel : 0);
    if (!d->zero) d->own[d->rank] = 0, d->own[d->rank + 1] = (int64_t)numel;
    for (int r = 0; r < d->size; r++) {
        d->counts[r] = d->own[r + 1] - d->own[r];
        d->displs[r] = d->own[r];
    }
    if (d->zero) ST_ALLOC(d->slice, d->own[d->rank + 1] - d->own[d->rank] + 1, "ZeRO gradient slice");
    return ST_OK;
}

void st_dp_free(st_dp *d)
{
    free(d->own);
    free(d->counts);
    free(d->displs);
    st_requests_free(&d->pending);
    free(d->slice);
    memset(d, 0, sizeof *d);
}

void st_dp_owned(const st_dp *d, size_t *begin, size_t *end)
{
    if (d->zero) {
        *begin = (size_t)d->own[d->rank];
        *end = (size_t)d->own[d->rank + 1];
    } else {
        *begin = 0;
        *end = d->numel;
    }
}

void st_dp_begin(st_dp *d)
{
    d->reduced_lo = d->reduced_hi = d->numel;
}

st_err st_dp_bucket_ready(st_dp *d, float *grads, size_t lo, size_t hi)
{
    if (hi != d->reduced_lo || lo > hi)
        ST_FAIL(ST_ERR_INTERNAL, "gradient bucket [%zu, %zu) does not continue the reduced range [%zu, %zu)",
                lo, hi, d->reduced_lo, d->reduced_hi);
    d->reduced_lo = lo;
    if (d->size == 1 || lo == hi) return ST_OK;
    st_comm.dp_bytes += (hi - lo) * sizeof(float);
    if (!d->zero)
        ST_TRY(st_iallreduce_sum_f32(d->dp, grads + lo, (int64_t)(hi - lo), &d->pending));
    else
        ST_TRY(st_ireduce_scatter_sum_f32(d->dp, grads + lo, (int64_t)lo, (int64_t)(hi - lo), d->own, d->slice,
                                          &d->pending));
    /* Open MPI advances nonblocking collectives only inside MPI calls; with no
     * tp collectives in the backward pass nothing else would (RESULTS.md, 2) */
    return st_requests_test(&d->pending);
}

st_err st_dp_extra_ready(st_dp *d, float *grads, size_t n)
{
    if (d->size == 1 || !n) return ST_OK;
    st_comm.dp_bytes += n * sizeof(float);
    ST_TRY(st_iallreduce_sum_f32(d->dp, grads, (int64_t)n, &d->pending));
    return st_requests_test(&d->pending);
}

st_err st_dp_finish(st_dp *d, float *grads)
{
    if (grads) ST_TRY(st_dp_bucket_ready(d, grads, 0, d->reduced_lo));
    double t0 = st_now();
    ST_TRY(st_requests_wait(&d->pending));
    st_comm.dp_wait_seconds += st_now() - t0;
    if (d->zero && grads) {
        size_t b = (size_t)d->own[d->rank], e = (size_t)d->own[d->rank + 1];
        memcpy(grads + b, d->slice, (e - b) * sizeof(float));
    }
    return ST_OK;
}

st_err st_dp_allgather_params(st_dp *d, float *params)
{
    if (!d->zero) return ST_OK;
    st_comm.dp_bytes += d->numel * sizeof(float);
    return st_allgatherv(d->dp, params, d->counts, d->displs, ST_M_F32);
}
