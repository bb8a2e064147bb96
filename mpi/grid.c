/* grid.c: world -> tp x dp communicators. */
#include "grid.h"

#include <omp.h>
#include <stdlib.h>
#include <unistd.h>

st_err st_grid_init(st_grid *g, MPI_Comm world, int tp)
{
    g->world = g->tp = g->dp = MPI_COMM_NULL;
    ST_MPI(MPI_Comm_dup(world, &g->world));
    ST_MPI(MPI_Comm_size(g->world, &g->world_size));
    ST_MPI(MPI_Comm_rank(g->world, &g->world_rank));
    if (tp < 1 || g->world_size % tp)
        ST_FAIL(ST_ERR_ARG, "cannot build a process grid: %d ranks is not a multiple of --tp %d "
                "(start a multiple of %d ranks, or choose a tp that divides %d)",
                g->world_size, tp, tp > 0 ? tp : 1, g->world_size);
    g->tp_size = tp;
    g->dp_size = g->world_size / tp;
    g->tp_rank = g->world_rank % tp;
    g->dp_rank = g->world_rank / tp;
    ST_MPI(MPI_Comm_split(g->world, g->dp_rank, g->tp_rank, &g->tp));
    ST_MPI(MPI_Comm_split(g->world, g->tp_rank, g->dp_rank, &g->dp));
    return ST_OK;
}

void st_grid_free(st_grid *g)
{
    if (g->tp != MPI_COMM_NULL) MPI_Comm_free(&g->tp);
    if (g->dp != MPI_COMM_NULL) MPI_Comm_free(&g->dp);
    if (g->world != MPI_COMM_NULL) MPI_Comm_free(&g->world);
}

st_err st_agree(MPI_Comm comm, st_err local)
{
    int worst = 0, me = 0;
    int pair[2] = {local, 0}, out[2];
    MPI_Comm_rank(comm, &me);
    pair[1] = local ? me : -1;
    /* worst code and the lowest-numbered... any rank that failed */
    int rc = MPI_Allreduce(pair, out, 2, MPI_INT, MPI_MAX, comm);
    if (rc != MPI_SUCCESS) ST_FAIL(ST_ERR_MPI, "MPI_Allreduce failed while agreeing on an error");
    worst = out[0];
    if (worst && !local)
        ST_FAIL(worst, "stopping because rank %d of this communicator failed (its message is above)",
                out[1]);
    return local;
}

int st_threads_setup(MPI_Comm world)
{
    int n = 0;
    const char *env = getenv("OMP_NUM_THREADS");
    if (env && atoi(env) > 0) {
        n = atoi(env);
    } else {
        MPI_Comm node;
        int local = 1;
        if (MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
            MPI_Comm_size(node, &local);
            MPI_Comm_free(&node);
        }
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n = (int)(cores / (local > 0 ? local : 1));
    }
    if (n < 1) n = 1;
    omp_set_num_threads(n);
    return n;
}
