/* dp.c: bucketed, overlapped gradient reduction and ZeRO-1 slices. */
#include "dp.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "commstats.h"
#include "grid.h"
#include "perf.h"

st_err st_dp_init(st_dp *d, MPI_Comm dp, size_t numel, int zero, int max_buckets)
{
    memset(d, 0, sizeof *d);
    d->dp = dp;
    ST_MPI(MPI_Comm_size(dp, &d->size));
    ST_MPI(MPI_Comm_rank(dp, &d->rank));
    d->zero = zero && d->size > 1;
    d->numel = numel;
    d->max_buckets = max_buckets + 1;
    if (numel > INT_MAX)
        ST_FAIL(ST_ERR_ARG, "%zu parameters on one rank exceed one MPI message; use more tp ranks", numel);
    ST_ALLOC(d->own, d->size + 1, "ZeRO slice table");
    ST_ALLOC(d->counts, d->size, "all-gather counts");
    ST_ALLOC(d->displs, d->size, "all-gather displacements");
    for (int r = 0; r <= d->size; r++) d->own[r] = d->zero ? numel * (size_t)r / d->size : (r ? numel : 0);
    if (!d->zero) d->own[d->rank] = 0, d->own[d->rank + 1] = numel;
    for (int r = 0; r < d->size; r++) {
        d->counts[r] = (int)(d->own[r + 1] - d->own[r]);
        d->displs[r] = (int)d->own[r];
    }
    ST_ALLOC(d->req, d->max_buckets, "bucket requests");
    ST_ALLOC(d->bucket_counts, (size_t)d->max_buckets * d->size, "bucket counts");
    if (d->zero) ST_ALLOC(d->slice, d->own[d->rank + 1] - d->own[d->rank] + 1, "ZeRO gradient slice");
    return ST_OK;
}

void st_dp_free(st_dp *d)
{
    free(d->own);
    free(d->counts);
    free(d->displs);
    free(d->req);
    free(d->bucket_counts);
    free(d->slice);
    memset(d, 0, sizeof *d);
}

void st_dp_owned(const st_dp *d, size_t *begin, size_t *end)
{
    if (d->zero) {
        *begin = d->own[d->rank];
        *end = d->own[d->rank + 1];
    } else {
        *begin = 0;
        *end = d->numel;
    }
}

void st_dp_begin(st_dp *d)
{
    d->n_pending = 0;
    d->reduced_lo = d->reduced_hi = d->numel;
}

static size_t overlap(size_t a0, size_t a1, size_t b0, size_t b1)
{
    size_t lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    return hi > lo ? hi - lo : 0;
}

st_err st_dp_bucket_ready(st_dp *d, float *grads, size_t lo, size_t hi)
{
    if (hi != d->reduced_lo || lo > hi)
        ST_FAIL(ST_ERR_INTERNAL, "gradient bucket [%zu, %zu) does not continue the reduced range [%zu, %zu)",
                lo, hi, d->reduced_lo, d->reduced_hi);
    d->reduced_lo = lo;
    if (d->size == 1 || lo == hi) return ST_OK;
    if (d->n_pending == d->max_buckets) ST_FAIL(ST_ERR_INTERNAL, "too many gradient buckets in flight");
    MPI_Request *rq = &d->req[d->n_pending];
    st_comm.dp_bytes += (hi - lo) * sizeof(float);
    if (!d->zero) {
        ST_MPI(MPI_Iallreduce(MPI_IN_PLACE, grads + lo, (int)(hi - lo), MPI_FLOAT, MPI_SUM, d->dp, rq));
    } else {
        int *counts = d->bucket_counts + (size_t)d->n_pending * d->size;
        for (int r = 0; r < d->size; r++) counts[r] = (int)overlap(lo, hi, d->own[r], d->own[r + 1]);
        size_t mine0 = d->own[d->rank], at = lo > mine0 ? lo - mine0 : 0;
        ST_MPI(MPI_Ireduce_scatter(grads + lo, d->slice + at, counts, MPI_FLOAT, MPI_SUM, d->dp, rq));
    }
    d->n_pending++;
    /* Open MPI advances nonblocking collectives only inside MPI calls; with no
     * tp collectives in the backward pass nothing else would (RESULTS.md, 2) */
    int flag = 0;
    ST_MPI(MPI_Testall(d->n_pending, d->req, &flag, MPI_STATUSES_IGNORE));
    return ST_OK;
}

st_err st_dp_finish(st_dp *d, float *grads)
{
    ST_TRY(st_dp_bucket_ready(d, grads, 0, d->reduced_lo));
    double t0 = st_now();
    if (d->n_pending) ST_MPI(MPI_Waitall(d->n_pending, d->req, MPI_STATUSES_IGNORE));
    st_comm.dp_wait_seconds += st_now() - t0;
    d->n_pending = 0;
    if (d->zero) {
        size_t b = d->own[d->rank], e = d->own[d->rank + 1];
        memcpy(grads + b, d->slice, (e - b) * sizeof(float));
    }
    return ST_OK;
}

st_err st_dp_allgather_params(st_dp *d, float *params)
{
    if (!d->zero) return ST_OK;
    st_comm.dp_bytes += d->numel * sizeof(float);
    ST_MPI(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, params, d->counts, d->displs, MPI_FLOAT,
                          d->dp));
    return ST_OK;
}
