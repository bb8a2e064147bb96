/* plan.c: `shardtune plan MODEL --ranks N [--tp T] [--zero] [--seq S --batch B]
 * [--precision bf16|fp32]`: per-rank memory, the grid to use and the
 * predicted step time of a training run, before it is started (planner.h). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "cmd/options.h"
#include "cmd/planner.h"
#include "io/checkpoint.h"
#include "io/formats/hf.h"
#include "kernels/peak.h"
#include "mpi/comm.h"
#include "mpi/grid.h"

typedef struct {
    int ranks, tp, zero, recompute, seq, batch, micro, ranks_per_node;
    char *precision;
    float node_memory, usable, node_gflops, mfu, shm_gbs, net_gbs, latency_us;
} plan_opts;

#define F(field) offsetof(plan_opts, field)
static const st_option plan_options[] = {
    {"ranks", ST_OPT_INT, F(ranks), "0", "MPI ranks of the run (0: the fewest nodes of --ranks_per_node ranks that fit)", "[0,)"},
    {"tp", ST_OPT_INT, F(tp), "0", "tensor-parallel ranks per model copy (0: recommend one)", "[0,)"},
    {"zero", ST_OPT_BOOL, F(zero), "false", "ZeRO-1: AdamW state split over dp (with --tp; else considered)", NULL},
    {"recompute", ST_OPT_BOOL, F(recompute), "false", "activation recomputation (with --tp; else considered)", NULL},
    {"seq", ST_OPT_INT, F(seq), "1024", "tokens per row (seq_len)", "[1,)"},
    {"batch", ST_OPT_INT, F(batch), "1", "rows per micro-batch on each rank (batch_size)", "[1,)"},
    {"micro", ST_OPT_INT, F(micro), "1", "micro-batches per step on each dp rank (global_batch / (batch * dp))", "[1,)"},
    {"precision", ST_OPT_STRING, F(precision), "fp32", "fp32, bf16 or auto, as train's precision (bf16: a bf16 weight copy and rounding scratch; the bf16 matmul rate)", NULL},
    {"ranks_per_node", ST_OPT_INT, F(ranks_per_node), "0", "ranks on each node (0: min(ranks, this machine's cores)); tp stays inside a node", "[0,)"},
    {"node_memory", ST_OPT_FLOAT, F(node_memory), "0", "GB of memory per node (0: this machine's)", "[0,)"},
    {"usable", ST_OPT_FLOAT, F(usable), "0.9", "fraction of a node's memory a run may take (the rest: the system, MPI, files)", "(0,1]"},
    {"node_gflops", ST_OPT_FLOAT, F(node_gflops), "0", "matmul GFLOP/s of a whole node in the run's precision (0: measured here)", "[0,)"},
    {"mfu", ST_OPT_FLOAT, F(mfu), "0", "fraction of the matmul rate a step reaches (0: measured here, benchmarks/RESULTS.md: 0.55 gpt2, 0.64 llama)", "[0,1]"},
    {"shm_gbs", ST_OPT_FLOAT, F(shm_gbs), "5", "all-reduce GB/s per rank inside a node (measured here: 4-6)", "(0,)"},
    {"net_gbs", ST_OPT_FLOAT, F(net_gbs), "10", "all-reduce GB/s per node across nodes (100 Gb/s links at 80%)", "(0,)"},
    {"latency_us", ST_OPT_FLOAT, F(latency_us), "5", "microseconds per message hop", "[0,)"},
};
#undef F
#define N_PLAN ((int)(sizeof plan_options / sizeof plan_options[0]))

/* MODEL: a checkpoint (.h5), an HF config.json or its directory, or a named shape. */
static st_err resolve_model(const char *model, st_config *cfg)
{
    size_t n = strlen(model);
    if (n > 3 && !strcmp(model + n - 3, ".h5")) return st_ckpt_read_config(model, MPI_COMM_SELF, cfg);
    if (access(model, F_OK) == 0) return st_hf_read_config(model, cfg);
    return st_plan_named_shape(model, cfg);
}

static void print_memory(const st_plan *p, const st_plan_memory *m, const char *bf16_note)
{
    const double G = 1e9, dp = p->ranks / p->tp;
    printf("per rank (tp rank 0)          GB\n");
    printf("  weights (fp32)        %10.3f\n", m->weights / G);
    if (p->bf16) printf("  bf16                  %10.3f   %s\n", m->bf16 / G, bf16_note);
    printf("  gradients             %10.3f%s\n", m->grads / G, p->zero ? "   (with the ZeRO-1 gradient slice)" : "");
    if (p->zero)
        printf("  AdamW moments         %10.3f   (ZeRO-1: 1/%.0f of %.3f)\n", m->moments / G, dp, 2 * m->weights / G);
    else printf("  AdamW moments         %10.3f\n", m->moments / G);
    printf("  activations           %10.3f   (with recomputation %.3f)\n", m->acts / G, m->acts_recompute / G);
    printf("  other buffers         %10.3f   (RoPE tables, the batch)\n", m->other / G);
    if (m->mpi > 0) printf("  MPI temporaries       %10.3f   (the largest gradient bucket in flight)\n", m->mpi / G);
    printf("  runtime               %10.3f   (libraries, MPI, oneDNN, HDF5: measured)\n", m->runtime / G);
    printf("  total                 %10.3f   (with recomputation %.3f)\n", m->total / G, m->total_recompute / G);
}

static void print_grid(const char *what, const st_plan *p, const st_plan_machine *mc)
{
    st_plan_memory m;
    st_plan_time t;
    if (st_plan_memory_of(p, &m)) return;
    st_plan_time_of(p, mc, &t);
    const double need = p->recompute ? m.total_recompute : m.total,
                 budget = mc->node_memory * mc->usable / p->ranks_per_node;
    printf("%s: tp %d x dp %d%s%s: %.3f GB per rank, %.1f GB per node of %.1f usable: %s\n", what, p->tp,
           p->ranks / p->tp, p->zero ? ", ZeRO-1" : "", p->recompute ? ", recomputation" : "", need / 1e9,
           need * p->ranks_per_node / 1e9, mc->node_memory * mc->usable / 1e9,
           need <= budget ? "fits" : "DOES NOT FIT");
    printf("  step (predicted, benchmarks/COMM_MODEL.md): compute %.3f s + tp %.3f s + dp %.3f s = %.3f s: "
           "%.0f tokens/s (%d tokens per step)\n", t.compute, t.tp, t.dp, t.step, t.tokens_per_s,
           p->micro * p->batch * p->seq * (p->ranks / p->tp));
}

/* The machine: options, else this one (memory, cores, the matmul rate
 * measured here in the run's precision, which "auto" decides as train does). */
static st_err machine_of(const plan_opts *o, const st_config *cfg, int *bf16, st_plan_machine *m, char *how,
                         size_t cap)
{
    m->node_memory = o->node_memory > 0 ? o->node_memory * 1e9
                                        : (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (o->usable <= 0 || o->usable > 1) ST_FAIL(ST_ERR_ARG, "--usable %g: expected a fraction in (0, 1]", o->usable);
    m->usable = o->usable;
    m->mfu = o->mfu > 0 ? o->mfu : cfg->family == ST_FAMILY_GPT2 ? 0.55 : 0.64;
    m->shm_gbs = o->shm_gbs, m->net_gbs = o->net_gbs, m->latency_us = o->latency_us;
    if (o->node_gflops > 0) {
        if (strcmp(o->precision, "fp32") && strcmp(o->precision, "bf16"))
            ST_FAIL(ST_ERR_ARG, "--precision '%s' with --node_gflops: expected fp32 or bf16 (auto decides from "
                    "this machine's rates)", o->precision);
        *bf16 = !strcmp(o->precision, "bf16");
        m->node_gflops = o->node_gflops;
        snprintf(how, cap, "given");
        return ST_OK;
    }
    st_precision prec;
    ST_TRY(st_precision_choose(o->precision, 1024, &prec));
    *bf16 = prec.bf16;
    m->node_gflops = prec.bf16 ? prec.bf16_gflops : prec.fp32_gflops;
    snprintf(how, cap, "measured here, %s: %s", prec.bf16 ? "bf16" : "fp32", prec.why);
    return ST_OK;
}

#define MAX_NODES 4096

/* The recommended grid on nodes nodes of p's ranks per node. */
static st_err recommend_on(const st_plan *p, const st_plan_machine *m, int nodes, st_plan *best, int *fits)
{
    *best = *p;
    best->ranks = nodes * p->ranks_per_node;
    return st_plan_recommend(best, m, fits);
}

static st_err plan(const char *model, MPI_Comm world, void *opts)
{
    const plan_opts *o = opts;
    st_plan p = {.tp = o->tp, .zero = o->zero, .recompute = o->recompute, .seq = o->seq, .batch = o->batch,
                 .micro = o->micro};
    ST_TRY(resolve_model(model, &p.cfg));
    const int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (o->ranks < 0 || o->ranks_per_node < 0) ST_FAIL(ST_ERR_ARG, "--ranks and --ranks_per_node must be positive");
    if (!o->ranks && !o->ranks_per_node)
        ST_FAIL(ST_ERR_ARG, "give --ranks N, or --ranks_per_node R to find how many nodes of R ranks are needed");
    p.ranks_per_node = o->ranks_per_node ? o->ranks_per_node : (o->ranks < cores ? o->ranks : cores);
    if (o->ranks && o->ranks % p.ranks_per_node)
        ST_FAIL(ST_ERR_ARG, "--ranks %d is not a multiple of --ranks_per_node %d", o->ranks, p.ranks_per_node);
    if (o->tp && p.ranks_per_node % o->tp)
        ST_FAIL(ST_ERR_ARG, "--tp %d does not divide --ranks_per_node %d (tp ranks share a node)", o->tp,
                p.ranks_per_node);
    st_threads_setup(world);
    st_plan_machine mc;
    char how[320];
    ST_TRY(machine_of(o, &p.cfg, &p.bf16, &mc, how, sizeof how));
    int fits = 0;
    st_plan best;
    if (o->ranks) {
        p.ranks = o->ranks;
        ST_TRY(recommend_on(&p, &mc, p.ranks / p.ranks_per_node, &best, &fits));
    } else { /* the fewest nodes that fit: double, then halve the gap */
        int lo = 0, hi = 1;
        for (;;) {
            ST_TRY(recommend_on(&p, &mc, hi, &best, &fits));
            if (fits || hi == MAX_NODES) break;
            lo = hi, hi *= 2;
        }
        while (fits && hi - lo > 1) {
            int mid = lo + (hi - lo) / 2, f;
            st_plan b;
            ST_TRY(recommend_on(&p, &mc, mid, &b, &f));
            if (f) hi = mid, best = b;
            else lo = mid;
        }
        p.ranks = best.ranks;
    }
    if (st_comm_rank(world)) return ST_OK;
    const st_config *c = &p.cfg;
    printf("model: %s: %s, %d layers, d_model %d, %d heads (%d kv), d_ff %d, vocab %d%s: %.1fM parameters\n", model,
           st_family_name(c->family), c->n_layer, c->d_model, c->n_head, c->n_kv_head, c->d_ff, c->vocab_size,
           c->tied_embeddings ? ", tied" : "", st_config_num_params(c) / 1e6);
    printf("run: %d ranks (%d per node, %d node%s), micro-batch %d x %d, %d per step, %s\n", p.ranks,
           p.ranks_per_node, p.ranks / p.ranks_per_node, p.ranks > p.ranks_per_node ? "s" : "", p.batch, p.seq,
           p.micro, p.bf16 ? "bf16" : "fp32");
    printf("machine: nodes of %.1f GB (%.0f%% usable) and %.0f GFLOP/s (%s), MFU %.2f; all-reduce %.1f GB/s per rank "
           "in a node, %.1f GB/s per node across; %.1f us per hop\n\n", mc.node_memory / 1e9, 100 * mc.usable,
           mc.node_gflops, how, mc.mfu, mc.shm_gbs, mc.net_gbs, mc.latency_us);
    st_plan shown = o->tp ? p : best;
    st_plan_memory m;
    ST_TRY(st_plan_memory_of(&shown, &m));
    print_memory(&shown, &m, "(the weights' copy and the kernels' rounding scratch)");
    printf("\n");
    if (o->tp) print_grid("asked", &p, &mc);
    if (fits) {
        print_grid("recommended", &best, &mc);
    } else {
        st_plan_memory bm;
        ST_TRY(st_plan_memory_of(&best, &bm));
        const double need = best.recompute ? bm.total_recompute : bm.total;
        if (o->ranks)
            printf("nothing fits %d ranks with %.1f GB each: the smallest grid, tp %d%s%s, needs %.2f GB per rank "
                   "(%.1f GB per node): more nodes (ZeRO-1 divides the moments), more ranks per node (a larger tp), "
                   "or more memory\n", best.ranks, mc.node_memory * mc.usable / p.ranks_per_node / 1e9, best.tp,
                   best.zero ? ", ZeRO-1" : "", best.recompute ? ", recomputation" : "", need / 1e9,
                   need * p.ranks_per_node / 1e9);
        else
            printf("no number of nodes up to %d fits: with %d ranks per node the smallest grid, tp %d, ZeRO-1 and "
                   "recomputation, still needs %.2f GB per rank (%.1f GB per node): weights and gradients are split "
                   "by tp alone\n", MAX_NODES, p.ranks_per_node, best.tp, need / 1e9, need * p.ranks_per_node / 1e9);
    }
    return ST_OK;
}

st_err st_cmd_plan(int argc, char **argv, MPI_Comm world)
{
    plan_opts o;
    memset(&o, 0, sizeof o);
    return st_options_run(argc, argv, world, plan_options, N_PLAN, &o,
                          "usage: shardtune plan MODEL --ranks N [--tp T] [--zero] [--seq S --batch B] "
                          "[--precision fp32|bf16]\n\n"
                          "What a training run needs on each rank (weights, bf16 copy, gradients, AdamW moments,\n"
                          "activations with and without recomputation), the grid to use, and the predicted step\n"
                          "time (benchmarks/COMM_MODEL.md), before starting it. MODEL: a checkpoint (.h5), a\n"
                          "Hugging Face config.json (or its directory), or a named shape: gpt2-124m, llama-162m,\n"
                          "llama-1b, llama-7b, llama-13b. The machine defaults to this one.\n\n",
                          "a model (checkpoint, config.json or named shape)", plan);
}
