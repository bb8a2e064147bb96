/* grid.h: the process grid, world = tp x dp.
 *
 * tp ranks are adjacent in the world (same node under a block mapping): world
 * rank w sits at tp rank w % tp and dp rank w / tp. The tp communicator joins
 * the ranks that hold one copy of the model between them; the dp communicator
 * joins the ranks that hold the same slice in different copies.
 * Every communicator is passed explicitly; only st_grid_init sees the world.
 */
#ifndef ST_GRID_H
#define ST_GRID_H

#include <mpi.h>
#include <stdint.h>

#include "core/err.h"
#include "kernels/peak.h"
#include "mpi/comm.h"

typedef struct {
    MPI_Comm world;     /* the job (duplicated; ours to free) */
    MPI_Comm tp;        /* the ranks sharing one model copy */
    MPI_Comm dp;        /* the ranks holding the same slice of different copies */
    int world_size, world_rank;
    int tp_size, tp_rank;
    int dp_size, dp_rank;
    int made;           /* st_grid_init ran: the communicators are ours to free */
} st_grid;

/* Split world into tp x dp (every communicator returns MPI errors instead of
 * aborting). Fails (on every rank alike) when the world size is not a
 * multiple of tp, naming the sizes and what would fix it. */
st_err st_grid_init(st_grid *g, MPI_Comm world, int tp);
/* Frees what st_grid_init made; safe on a grid it never reached (zeroed). */
void st_grid_free(st_grid *g);

/* Collective agreement on failure: every rank passes its local status and all
 * get back the worst one. A rank that did not fail itself records
 * "rank R failed" so its exit says why it stopped. Use after any step where
 * one rank alone can fail (reading a file, parsing input). */
st_err st_agree(MPI_Comm comm, st_err local);

/* The precision of a run's matrix products (kernels/peak.h) for every rank
 * of world: each rank checks want, rank 0's measurement (n x n x n products)
 * decides, so no two ranks multiply differently. */
st_err st_precision_agree(MPI_Comm world, const char *want, int n, st_precision *p);

/* How many nodes this rank's tp group spans (1 when tp ranks share a node).
 * A node is named by SLURMD_NODENAME when set (Slurm's name, which tells
 * apart nodes that share a host in tests), else by MPI_Get_processor_name.
 * Collective over g->tp. */
st_err st_grid_tp_nodes(const st_grid *g, int32_t *nodes);

/* Threads per rank: OMP_NUM_THREADS when set, else cores on this node divided
 * by ranks on this node (at least 1). Applies it to OpenMP (and so oneDNN). */
int st_threads_setup(MPI_Comm world);

#endif
