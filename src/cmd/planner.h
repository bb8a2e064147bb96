/* planner.h: what a training run needs on each rank, and how long its step
 * takes, before anything is allocated (`shardtune plan`).
 *
 * Memory is counted from the sizes the code allocates: the rank's tensor
 * table (st_layout: its tp slice, vocabulary padding, replicated tensors),
 * the activation buffers of st_model_create (st_model_act_floats), AdamW's
 * owned range (all of it, or 1/dp with ZeRO-1), the bf16 weight copy of a
 * bf16 run, the temporary Open MPI makes of the largest gradient bucket in
 * flight (dp > 1), plus a measured constant for what every rank holds besides
 * (libraries, MPI, oneDNN, HDF5). Full fine-tuning of the language model
 * (methods pretrain, sft; a head or LoRA adds little). Checked against the
 * peak resident memory of real runs: benchmarks/run.sh, ONLY=plan.
 *
 * Time follows benchmarks/COMM_MODEL.md ("Predicting a cluster run"), no
 * overlap of communication with compute:
 *   compute = tokens per model copy and step * FLOPs per token
 *             / (t * rate per rank * MFU)          (x 4/3 with recomputation)
 *   tp      = tokens per copy * 2(t-1)/t * 4((4L+2)C + 3) / B_shm
 *             + micro-batches * (4L+4) * 2 * latency
 *   dp      = ranks per node * 2(d-1)/d * 4 P_r / B_net + 2(d-1)(L+2) * latency
 *             (B_shm per rank when all ranks share one node)
 * with tp ranks inside a node (the placement mpirun's default block mapping
 * gives when ranks per node is a multiple of t).
 */
#ifndef ST_PLANNER_H
#define ST_PLANNER_H

#include "core/config.h"
#include "core/err.h"

/* What is planned. */
typedef struct {
    st_config cfg;
    int ranks, tp, zero, recompute, bf16;
    int seq, batch, micro;    /* micro-batch rows x tokens on each dp rank; micro-batches per step */
    int ranks_per_node;
} st_plan;

/* The machine it is planned for. */
typedef struct {
    double node_memory;       /* bytes */
    double usable;            /* fraction of it a run may take (the rest: the system, MPI's daemons, files) */
    double node_gflops;       /* matmul rate of a whole node, in the run's precision */
    double mfu;               /* fraction of that rate a step reaches (measured: benchmarks/RESULTS.md) */
    double shm_gbs, net_gbs;  /* all-reduce bandwidth per rank inside a node, per node across nodes */
    double latency_us;        /* per message hop */
} st_plan_machine;

/* Bytes on one rank (tp rank 0, the largest slice). */
typedef struct {
    double weights, bf16, grads, moments, acts, acts_recompute, other, runtime, mpi;
    double total, total_recompute;
} st_plan_memory;

typedef struct {
    double compute, tp, dp, step, tokens_per_s;
} st_plan_time;

/* What every rank holds besides the model: libraries, MPI, oneDNN, HDF5
 * (peak resident memory of a 1-layer, 32-wide training run here, less its
 * tensors: about 45 MB). */
#define ST_PLAN_RUNTIME_BYTES (45.0 * 1024 * 1024)

/* p's memory per rank; fails when the grid does not divide the model or the ranks. */
st_err st_plan_memory_of(const st_plan *p, st_plan_memory *out);
/* p's step time on m (p->recompute: with recomputation). */
void st_plan_time_of(const st_plan *p, const st_plan_machine *m, st_plan_time *out);

/* The grid of p->ranks with the most tokens/s (the micro-batches per rank
 * fixed) that fits m's memory per rank (usable node memory / ranks per node): tp
 * over the divisors of ranks per node that the model allows, each without
 * and with ZeRO-1 and recomputation; of two as fast, the smaller. p's tp, zero and
 * recompute are overwritten with the choice; *fits 0 when nothing fits (p
 * then holds the grid that needs the least memory). */
st_err st_plan_recommend(st_plan *p, const st_plan_machine *m, int *fits);

/* A named model shape ("gpt2-124m", "llama-1b", "llama-7b", "llama-13b", ...)
 * into cfg; the list of names for messages. */
st_err st_plan_named_shape(const char *name, st_config *cfg);
const char *st_plan_shape_names(void);

#endif
