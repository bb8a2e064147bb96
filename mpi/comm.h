/* comm.h: the collectives the rest of shardtune uses, PETSc-style.
 *
 * Every call is checked: communicators carry MPI_ERRORS_RETURN (st_job_start,
 * st_grid_init), so a failure comes back as ST_ERR_MPI naming the call and
 * MPI's own message instead of killing the job from inside the library.
 *
 * Counts are int64_t. Open MPI 4.1 has no MPI-4 large-count calls (_c), so a
 * call over more than st_comm_max_count() elements is split into chunks that
 * each fit an int; the result is the same as one call (tested with a small
 * limit in tests/test_mpi2_comm.c). Buffers are typed by st_mtype so one
 * place maps them to MPI datatypes.
 *
 * Collective calls must be made by every rank of the communicator with the
 * same count; where a mismatch would hang rather than fail (sizes that come
 * from files or options), check it first with st_same_everywhere.
 */
#ifndef ST_COMM_H
#define ST_COMM_H

#include <mpi.h>
#include <stdint.h>

#include "core/err.h"

/* Check an MPI call; on failure record the MPI error string and return. */
#define ST_MPI(call)                                                          \
    do {                                                                      \
        int st_mpi_rc_ = (call);                                              \
        if (st_mpi_rc_ != MPI_SUCCESS) {                                      \
            char st_mpi_s_[MPI_MAX_ERROR_STRING];                             \
            int st_mpi_l_ = 0;                                                \
            MPI_Error_string(st_mpi_rc_, st_mpi_s_, &st_mpi_l_);              \
            ST_FAIL(ST_ERR_MPI, "%s failed: %s", #call, st_mpi_s_);           \
        }                                                                     \
    } while (0)

typedef enum { ST_M_U8, ST_M_I32, ST_M_I64, ST_M_U64, ST_M_F32, ST_M_F64 } st_mtype;
typedef enum { ST_OP_SUM, ST_OP_MAX, ST_OP_MIN } st_op;

MPI_Datatype st_mpi_type(st_mtype t);
size_t st_mtype_size(st_mtype t);

/* Rank and size; -1 / 0 for MPI_COMM_NULL. */
int st_comm_rank(MPI_Comm c);
int st_comm_size(MPI_Comm c);

/* In place over every rank of c. */
st_err st_allreduce(MPI_Comm c, void *buf, int64_t n, st_mtype t, st_op op);
st_err st_bcast(MPI_Comm c, void *buf, int64_t n, st_mtype t, int root);
/* A string (in may be NULL, on root) to every rank: *out is a malloc'd copy,
 * or NULL when root's in was NULL. */
st_err st_bcast_str(MPI_Comm c, int root, const char *in, char **out);
st_err st_barrier(MPI_Comm c);
/* before[i] = the sum of mine[i] over the ranks below this one (0 on rank 0). */
st_err st_exscan_sum_i64(MPI_Comm c, const int64_t *mine, int64_t *before, int n);
/* all[r*n + i] = rank r's mine[i] on every rank (gather: on root only). */
st_err st_allgather(MPI_Comm c, const void *mine, void *all, int64_t n, st_mtype t);
st_err st_gather(MPI_Comm c, const void *mine, void *all, int64_t n, st_mtype t, int root);
/* In place: rank r's counts[r] elements at displs[r] of buf reach every rank. */
st_err st_allgatherv(MPI_Comm c, void *buf, const int64_t *counts, const int64_t *displs, st_mtype t);
/* Rank r's n elements of mine land at all + displs[r] on root (counts[r] == n). */
st_err st_gatherv(MPI_Comm c, const void *mine, int64_t n, void *all, const int64_t *counts,
                  const int64_t *displs, st_mtype t, int root);

/* Fails on every rank, naming what and the values, unless value is the same
 * on all ranks of c. For sizes a later collective relies on. */
st_err st_same_everywhere(MPI_Comm c, int64_t value, const char *what);

/* Nonblocking reductions of one range, split into chunks that fit an int:
 * a set of requests that grows as calls are added and is waited on at once. */
typedef struct {
    MPI_Request *req;
    int n, cap;
    struct st_counts_block *counts;   /* count arrays MPI reads until completion */
} st_requests;
st_err st_iallreduce_sum_f32(MPI_Comm c, float *buf, int64_t n, st_requests *rq);
/* Reduce-scatter of buf[0, n) where rank r receives the sum of the part that
 * falls in [own[r], own[r+1]) (offsets relative to buf's first element lo),
 * written at recv. */
st_err st_ireduce_scatter_sum_f32(MPI_Comm c, const float *buf, int64_t lo, int64_t n, const int64_t *own,
                                  float *recv, st_requests *rq);
/* MPI_Testall (progress) and MPI_Waitall over the set; wait empties it. */
st_err st_requests_test(st_requests *rq);
st_err st_requests_wait(st_requests *rq);
void st_requests_free(st_requests *rq);

/* The largest element count one MPI call is given (INT_MAX); tests lower it
 * to exercise the chunked paths with small buffers. */
int64_t st_comm_max_count(void);
void st_comm_set_max_count(int64_t n);

#endif
