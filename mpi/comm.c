/* comm.c: checked collectives with 64-bit counts (comm.h). */
#include "mpi/comm.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static int64_t max_count = INT_MAX;

int64_t st_comm_max_count(void) { return max_count; }
void st_comm_set_max_count(int64_t n) { max_count = n > 0 && n <= INT_MAX ? n : INT_MAX; }

MPI_Datatype st_mpi_type(st_mtype t)
{
    switch (t) {
    case ST_M_U8: return MPI_UINT8_T;
    case ST_M_I32: return MPI_INT32_T;
    case ST_M_I64: return MPI_INT64_T;
    case ST_M_U64: return MPI_UINT64_T;
    case ST_M_F32: return MPI_FLOAT;
    case ST_M_F64: return MPI_DOUBLE;
    }
    return MPI_DATATYPE_NULL;
}

size_t st_mtype_size(st_mtype t)
{
    static const size_t size[] = {1, 4, 8, 8, 4, 8};
    return size[t];
}

static MPI_Op mpi_op(st_op op) { return op == ST_OP_SUM ? MPI_SUM : op == ST_OP_MAX ? MPI_MAX : MPI_MIN; }

int st_comm_rank(MPI_Comm c)
{
    int r = -1;
    if (c == MPI_COMM_NULL || MPI_Comm_rank(c, &r) != MPI_SUCCESS) return -1;
    return r;
}

int st_comm_size(MPI_Comm c)
{
    int n = 0;
    if (c == MPI_COMM_NULL || MPI_Comm_size(c, &n) != MPI_SUCCESS) return 0;
    return n;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

st_err st_allreduce(MPI_Comm c, void *buf, int64_t n, st_mtype t, st_op op)
{
    char *p = buf;
    for (int64_t off = 0; off < n; off += max_count)
        ST_MPI(MPI_Allreduce(MPI_IN_PLACE, p + off * (int64_t)st_mtype_size(t), (int)min64(max_count, n - off),
                             st_mpi_type(t), mpi_op(op), c));
    return ST_OK;
}

st_err st_bcast(MPI_Comm c, void *buf, int64_t n, st_mtype t, int root)
{
    char *p = buf;
    for (int64_t off = 0; off < n; off += max_count)
        ST_MPI(MPI_Bcast(p + off * (int64_t)st_mtype_size(t), (int)min64(max_count, n - off), st_mpi_type(t), root,
                         c));
    return ST_OK;
}

st_err st_bcast_str(MPI_Comm c, int root, const char *in, char **out)
{
    int64_t len = -1;
    *out = NULL;
    const int me = st_comm_rank(c);
    if (me == root && in) len = (int64_t)strlen(in);
    ST_TRY(st_bcast(c, &len, 1, ST_M_I64, root));
    if (len < 0) return ST_OK;
    char *p = malloc((size_t)len + 1);
    int32_t ok = p != NULL;
    ST_TRY(st_allreduce(c, &ok, 1, ST_M_I32, ST_OP_MIN));
    if (!ok) {
        free(p);
        ST_FAIL(ST_ERR_MEM, "out of memory broadcasting a string of %lld bytes", (long long)len);
    }
    if (me == root) memcpy(p, in, (size_t)len);
    p[len] = '\0';
    st_err e = st_bcast(c, p, len + 1, ST_M_U8, root);
    if (e) {
        free(p);
        ST_TRY(e);
    }
    *out = p;
    return ST_OK;
}

st_err st_barrier(MPI_Comm c)
{
    ST_MPI(MPI_Barrier(c));
    return ST_OK;
}

st_err st_exscan_sum_i64(MPI_Comm c, const int64_t *mine, int64_t *before, int n)
{
    ST_MPI(MPI_Exscan(mine, before, n, MPI_INT64_T, MPI_SUM, c));
    if (st_comm_rank(c) == 0) /* MPI leaves rank 0's result undefined */
        for (int i = 0; i < n; i++) before[i] = 0;
    return ST_OK;
}

st_err st_allgather(MPI_Comm c, const void *mine, void *all, int64_t n, st_mtype t)
{
    const int size = st_comm_size(c), me = st_comm_rank(c);
    const size_t es = st_mtype_size(t);
    if (n * size <= max_count) {
        ST_MPI(MPI_Allgather(mine, (int)n, st_mpi_type(t), all, (int)n, st_mpi_type(t), c));
        return ST_OK;
    }
    /* too large for one call: each rank broadcasts its part, in chunks */
    memmove((char *)all + (size_t)me * n * es, mine, (size_t)n * es);
    for (int r = 0; r < size; r++) ST_TRY(st_bcast(c, (char *)all + (size_t)r * n * es, n, t, r));
    return ST_OK;
}

/* Root receives count elements from rank src at dst in int-sized chunks. */
static st_err recv_chunks(MPI_Comm c, void *dst, int64_t count, st_mtype t, int src)
{
    for (int64_t off = 0; off < count; off += max_count)
        ST_MPI(MPI_Recv((char *)dst + off * (int64_t)st_mtype_size(t), (int)min64(max_count, count - off),
                        st_mpi_type(t), src, 0x5354, c, MPI_STATUS_IGNORE));
    return ST_OK;
}

static st_err send_chunks(MPI_Comm c, const void *src, int64_t count, st_mtype t, int root)
{
    for (int64_t off = 0; off < count; off += max_count)
        ST_MPI(MPI_Send((const char *)src + off * (int64_t)st_mtype_size(t), (int)min64(max_count, count - off),
                        st_mpi_type(t), root, 0x5354, c));
    return ST_OK;
}

st_err st_gather(MPI_Comm c, const void *mine, void *all, int64_t n, st_mtype t, int root)
{
    const int size = st_comm_size(c), me = st_comm_rank(c);
    const size_t es = st_mtype_size(t);
    if (n * size <= max_count) {
        ST_MPI(MPI_Gather(mine, (int)n, st_mpi_type(t), all, (int)n, st_mpi_type(t), root, c));
        return ST_OK;
    }
    if (me != root) return send_chunks(c, mine, n, t, root);
    memmove((char *)all + (size_t)me * n * es, mine, (size_t)n * es);
    for (int r = 0; r < size; r++)
        if (r != root) ST_TRY(recv_chunks(c, (char *)all + (size_t)r * n * es, n, t, r));
    return ST_OK;
}

/* counts/displs as int for one MPI call, or 0 when some value does not fit. */
static int int_arrays(const int64_t *counts, const int64_t *displs, int size, int **ic, int **id)
{
    *ic = *id = NULL;
    for (int r = 0; r < size; r++)
        if (counts[r] < 0 || counts[r] > max_count || displs[r] < 0 || displs[r] + counts[r] > max_count) return 0;
    *ic = malloc(sizeof(int) * (size_t)size * 2);
    if (!*ic) return 0;
    *id = *ic + size;
    for (int r = 0; r < size; r++) (*ic)[r] = (int)counts[r], (*id)[r] = (int)displs[r];
    return 1;
}

st_err st_allgatherv(MPI_Comm c, void *buf, const int64_t *counts, const int64_t *displs, st_mtype t)
{
    const int size = st_comm_size(c);
    int *ic, *id;
    if (int_arrays(counts, displs, size, &ic, &id)) {
        int rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, ic, id, st_mpi_type(t), c);
        free(ic);
        ST_MPI(rc);
        return ST_OK;
    }
    const size_t es = st_mtype_size(t);
    for (int r = 0; r < size; r++) ST_TRY(st_bcast(c, (char *)buf + (size_t)displs[r] * es, counts[r], t, r));
    return ST_OK;
}

st_err st_gatherv(MPI_Comm c, const void *mine, int64_t n, void *all, const int64_t *counts,
                  const int64_t *displs, st_mtype t, int root)
{
    const int size = st_comm_size(c), me = st_comm_rank(c);
    int *ic = NULL, *id = NULL;
    /* every rank must take the same path: root's arrays decide, so share the verdict */
    int fits = me == root ? int_arrays(counts, displs, size, &ic, &id) : 0;
    ST_TRY(st_bcast(c, &fits, 1, ST_M_I32, root));
    if (fits && n <= max_count) {
        int rc = MPI_Gatherv(mine, (int)n, st_mpi_type(t), all, ic, id, st_mpi_type(t), root, c);
        free(ic);
        ST_MPI(rc);
        return ST_OK;
    }
    free(ic);
    if (me != root) return send_chunks(c, mine, n, t, root);
    const size_t es = st_mtype_size(t);
    memmove((char *)all + (size_t)displs[me] * es, mine, (size_t)n * es);
    for (int r = 0; r < size; r++)
        if (r != root) ST_TRY(recv_chunks(c, (char *)all + (size_t)displs[r] * es, counts[r], t, r));
    return ST_OK;
}

st_err st_same_everywhere(MPI_Comm c, int64_t value, const char *what)
{
    int64_t v[2] = {value, -value};
    ST_TRY(st_allreduce(c, v, 2, ST_M_I64, ST_OP_MAX));
    if (v[0] != -v[1])
        ST_FAIL(ST_ERR_ARG, "%s differs across ranks (from %lld to %lld; this rank has %lld): every rank must "
                "be started with the same options and files", what, (long long)-v[1], (long long)v[0],
                (long long)value);
    return ST_OK;
}

/* ---- nonblocking ------------------------------------------------------------ */

/* A free slot at the end of rq. */
static st_err push_request(st_requests *rq, MPI_Request **out)
{
    if (rq->n == rq->cap) {
        int cap = rq->cap ? 2 * rq->cap : 16;
        MPI_Request *r = realloc(rq->req, sizeof *r * (size_t)cap);
        if (!r) ST_FAIL(ST_ERR_MEM, "out of memory for %d MPI requests", cap);
        rq->req = r;
        rq->cap = cap;
    }
    rq->req[rq->n] = MPI_REQUEST_NULL; /* what a failed call leaves: Waitall skips it */
    *out = &rq->req[rq->n++];
    return ST_OK;
}

st_err st_iallreduce_sum_f32(MPI_Comm c, float *buf, int64_t n, st_requests *rq)
{
    for (int64_t off = 0; off < n; off += max_count) {
        MPI_Request *r = NULL;
        ST_TRY(push_request(rq, &r));
        ST_MPI(MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)min64(max_count, n - off), MPI_FLOAT, MPI_SUM, c, r));
    }
    return ST_OK;
}

static int64_t overlap(int64_t a0, int64_t a1, int64_t b0, int64_t b1)
{
    int64_t lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    return hi > lo ? hi - lo : 0;
}

/* The receive counts of one chunk must outlive the nonblocking call (MPI
 * reads them until it completes): the set keeps them until it is waited on. */
typedef struct st_counts_block {
    struct st_counts_block *next;
    int counts[];
} counts_block;

st_err st_ireduce_scatter_sum_f32(MPI_Comm c, const float *buf, int64_t lo, int64_t n, const int64_t *own,
                                  float *recv, st_requests *rq)
{
    const int size = st_comm_size(c), me = st_comm_rank(c);
    for (int64_t p0 = lo; p0 < lo + n; p0 += max_count) {
        const int64_t p1 = min64(p0 + max_count, lo + n);
        counts_block *b = malloc(sizeof *b + sizeof(int) * (size_t)size);
        if (!b) ST_FAIL(ST_ERR_MEM, "out of memory for reduce-scatter counts");
        b->next = rq->counts;
        rq->counts = b;
        for (int r = 0; r < size; r++) b->counts[r] = (int)overlap(p0, p1, own[r], own[r + 1]);
        const int64_t at = p0 > own[me] ? p0 - own[me] : 0;
        MPI_Request *r = NULL;
        ST_TRY(push_request(rq, &r));
        ST_MPI(MPI_Ireduce_scatter(buf + (p0 - lo), recv + at, b->counts, MPI_FLOAT, MPI_SUM, c, r));
    }
    return ST_OK;
}

st_err st_requests_test(st_requests *rq)
{
    int flag = 0;
    if (rq->n) ST_MPI(MPI_Testall(rq->n, rq->req, &flag, MPI_STATUSES_IGNORE));
    return ST_OK;
}

st_err st_requests_wait(st_requests *rq)
{
    int rc = rq->n ? MPI_Waitall(rq->n, rq->req, MPI_STATUSES_IGNORE) : MPI_SUCCESS;
    rq->n = 0;
    while (rq->counts) {
        counts_block *next = rq->counts->next;
        free(rq->counts);
        rq->counts = next;
    }
    ST_MPI(rc);
    return ST_OK;
}

void st_requests_free(st_requests *rq)
{
    while (rq->counts) {
        counts_block *next = rq->counts->next;
        free(rq->counts);
        rq->counts = next;
    }
    free(rq->req);
    memset(rq, 0, sizeof *rq);
}
