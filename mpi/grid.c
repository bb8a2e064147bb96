/* grid.c: world -> tp x dp communicators. */
#include "mpi/grid.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

st_err st_grid_init(st_grid *g, MPI_Comm world, int tp)
{
    g->world = g->tp = g->dp = MPI_COMM_NULL;
    g->made = 1;
    ST_MPI(MPI_Comm_dup(world, &g->world));
    ST_MPI(MPI_Comm_set_errhandler(g->world, MPI_ERRORS_RETURN));
    g->world_size = st_comm_size(g->world);
    g->world_rank = st_comm_rank(g->world);
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
    ST_MPI(MPI_Comm_set_errhandler(g->tp, MPI_ERRORS_RETURN));
    ST_MPI(MPI_Comm_set_errhandler(g->dp, MPI_ERRORS_RETURN));
    return ST_OK;
}

void st_grid_free(st_grid *g)
{
    /* a zeroed grid was never initialised: Open MPI's MPI_COMM_NULL is not 0 */
    if (!g->made) return;
    if (g->tp != MPI_COMM_NULL) MPI_Comm_free(&g->tp);
    if (g->dp != MPI_COMM_NULL) MPI_Comm_free(&g->dp);
    if (g->world != MPI_COMM_NULL) MPI_Comm_free(&g->world);
    g->made = 0;
}

st_err st_agree(MPI_Comm comm, st_err local)
{
    /* the worst code, and the highest-numbered rank that failed */
    int32_t v[2] = {local, local ? st_comm_rank(comm) : -1};
    int rc = MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_INT32_T, MPI_MAX, comm);
    if (rc != MPI_SUCCESS) {
        if (local) return local; /* keep this rank's own message */
        ST_FAIL(ST_ERR_MPI, "MPI_Allreduce failed while agreeing on an error");
    }
    if (v[0] && !local)
        ST_FAIL(v[0], "stopping because rank %d of this communicator failed (its message is above)", v[1]);
    return local;
}

st_err st_precision_agree(MPI_Comm world, const char *want, int n, st_precision *p)
{
    ST_TRY(st_agree(world, st_precision_choose(want, n, p)));
    int bf16 = p->bf16;
    ST_TRY(st_bcast(world, &bf16, 1, ST_M_I32, 0));
    if (bf16 != p->bf16) /* this rank measured otherwise: say whose choice it runs */
        snprintf(p->why, sizeof p->why, "rank 0 measured and chose %s", bf16 ? "bf16" : "fp32");
    p->bf16 = bf16;
    return ST_OK;
}

#define NODE_NAME_CAP 256

st_err st_grid_tp_nodes(const st_grid *g, int32_t *nodes)
{
    char mine[NODE_NAME_CAP] = "";
    const char *slurm = getenv("SLURMD_NODENAME");
    if (slurm && *slurm) {
        snprintf(mine, sizeof mine, "%s", slurm);
    } else {
        char name[MPI_MAX_PROCESSOR_NAME];
        int len = 0;
        ST_MPI(MPI_Get_processor_name(name, &len));
        snprintf(mine, sizeof mine, "%.*s", len, name);
    }
    char *all = malloc((size_t)g->tp_size * NODE_NAME_CAP);
    if (!all) ST_FAIL(ST_ERR_MEM, "out of memory for %d node names", g->tp_size);
    st_err e = st_allgather(g->tp, mine, all, NODE_NAME_CAP, ST_M_U8);
    *nodes = 0;
    for (int r = 0; !e && r < g->tp_size; r++) {
        int seen = 0;
        for (int q = 0; q < r && !seen; q++) seen = !strcmp(all + (size_t)r * NODE_NAME_CAP, all + (size_t)q * NODE_NAME_CAP);
        *nodes += !seen;
    }
    free(all);
    return e;
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
