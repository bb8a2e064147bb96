/* bench_parallel.c: the training step of src/cmd/train.c on a tp x dp grid, with
 * random tokens instead of a dataset, timed. Reports tokens/s, MFU against
 * the oneDNN matmul rate measured on every rank, where the step's time went,
 * and the bytes the tp and dp collectives moved per step next to the bytes the
 * communication model (benchmarks/COMM_MODEL.md) predicts.
 *
 *   mpirun -np 2 build/benchmarks/bench_parallel tp=2 L=8 C=512 H=8 KV=4 F=1376 \
 *          V=32000 B=4 T=256 micro=1 steps=3 zero=0 bf16=0 family=llama
 *
 * bf16=1: bf16 mixed precision (src/model/model.h), MFU against the bf16 rate.
 * B is the micro-batch of one dp rank; a step is micro micro-batches on each
 * dp rank, so the global batch is B * micro * dp rows of T tokens. Every
 * position counts, so the mean over the global batch is a fixed scale given
 * to the forward pass (src/cmd/train.c counts masked tokens and rescales the
 * gradients instead: one more memory pass over them).
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/timer.h"
#include "kernels/peak.h"
#include "model/model.h"
#include "model/optim.h"
#include "mpi/commstats.h"
#include "mpi/dp.h"
#include "mpi/grid.h"

typedef struct {
    st_config cfg;
    int B, T, micro, steps, tp, zero, bf16;
} bench_opts;

static st_err parse_args(bench_opts *o, int argc, char **argv)
{
    *o = (bench_opts){.cfg = {.family = ST_FAMILY_LLAMA, .n_layer = 8, .d_model = 512, .n_head = 8,
                              .n_kv_head = 4, .d_ff = 1376, .vocab_size = 32000, .max_seq = 256,
                              .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied_embeddings = 1},
                      .B = 4, .T = 256, .micro = 1, .steps = 3, .tp = 1, .zero = 0};
    struct { const char *key; int *dst; } ints[] = {
        {"L", &o->cfg.n_layer}, {"C", &o->cfg.d_model}, {"H", &o->cfg.n_head}, {"KV", &o->cfg.n_kv_head},
        {"F", &o->cfg.d_ff}, {"V", &o->cfg.vocab_size}, {"B", &o->B}, {"T", &o->T},
        {"micro", &o->micro}, {"steps", &o->steps}, {"tp", &o->tp}, {"zero", &o->zero},
        {"bf16", &o->bf16},
    };
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) ST_FAIL(ST_ERR_ARG, "argument '%s': expected key=value", argv[i]);
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        int done = 0;
        if (!strcmp(k, "family")) {
            ST_TRY(st_family_parse(v, &o->cfg.family));
            done = 1;
        }
        for (size_t j = 0; j < sizeof ints / sizeof ints[0] && !done; j++)
            if (!strcmp(k, ints[j].key)) {
                char *end;
                long x = strtol(v, &end, 10);
                if (*end || x < 0 || x > 1 << 30) ST_FAIL(ST_ERR_ARG, "%s=%s: expected a non-negative integer", k, v);
                *ints[j].dst = (int)x;
                done = 1;
            }
        if (!done) ST_FAIL(ST_ERR_ARG, "unknown key '%s' (L C H KV F V B T micro steps tp zero bf16 family)", k);
    }
    o->cfg.max_seq = o->T;
    if (o->cfg.family == ST_FAMILY_GPT2) o->cfg.tied_embeddings = 1, o->cfg.n_kv_head = o->cfg.n_head;
    if (o->B < 1 || o->T < 1 || o->micro < 1 || o->steps < 1) ST_FAIL(ST_ERR_ARG, "B, T, micro, steps must be >= 1");
    return ST_OK;
}

/* The communication model (COMM_MODEL.md): payload floats one rank hands to
 * tp collectives for one micro-batch of N = B*T tokens. Per layer 2 forward
 * all-reduces (o_proj, down_proj outputs) and 2 backward (MLP and attention
 * input gradients), each N*C; the embedding (forward) and lm-head input
 * gradient (backward), N*C each; the cross-entropy's row maxima (N) and
 * (sum, target logit) pairs (2N). */
static double tp_floats_per_micro(const st_config *c, int N)
{
    return ((4.0 * c->n_layer + 2.0) * c->d_model + 3.0) * N;
}

typedef struct { double fwd, bwd, dp_finish, optim; } phase_times;

static st_err on_ready(void *ctx, size_t lo, size_t hi)
{
    st_model *m = ((void **)ctx)[0];
    st_dp *dp = ((void **)ctx)[1];
    return st_dp_bucket_ready(dp, m->grads, lo, hi);
}

/* One optimizer step as src/cmd/train.c's train_step does it: micro-batches of
 * forward + backward (dp buckets start during the last backward), wait for
 * the dp reduction, global-norm clip, AdamW on the owned range, all-gather. */
static st_err step(st_model *m, st_dp *dp, st_adamw *o, const st_grid *g, const bench_opts *op,
                   const int32_t *tok, const int32_t *tgt, const float *mask, phase_times *pt)
{
    const int B = op->B, T = op->T;
    const float scale = 1.0f / ((float)B * T * op->micro * g->dp_size); /* mean over the global batch */
    void *ctx[2] = {m, dp};
    st_model_zero_grad(m);
    for (int k = 0; k < op->micro; k++) {
        double loss, t0 = st_now();
        ST_TRY(st_model_forward(m, tok + (size_t)k * B * T, tgt + (size_t)k * B * T, mask, B, T, scale, &loss));
        double t1 = st_now();
        if (k == op->micro - 1) {
            st_dp_begin(dp);
            m->grad_ready = on_ready;
            m->grad_ready_ctx = ctx;
        }
        st_err e = st_model_backward(m, tok + (size_t)k * B * T);
        m->grad_ready = NULL;
        ST_TRY(e);
        pt->fwd += t1 - t0;
        pt->bwd += st_now() - t1;
    }
    double t2 = st_now();
    ST_TRY(st_dp_finish(dp, m->grads));
    double t3 = st_now();
    size_t b, e;
    st_dp_owned(dp, &b, &e);
    double sq = st_grad_sumsq(&m->lay, m->grads, b, e, g->tp_rank == 0);
    ST_MPI(MPI_Allreduce(MPI_IN_PLACE, &sq, 1, MPI_DOUBLE, MPI_SUM, dp->zero ? g->world : g->tp));
    if (sqrt(sq) > 1.0) st_scale(m->grads, b, e, (float)(1.0 / sqrt(sq)));
    st_adamw_update(o, m->params, m->grads, 1e-4f);
    ST_TRY(st_dp_allgather_params(dp, m->params));
    st_model_sync_bf16(m);
    pt->dp_finish += t3 - t2;
    pt->optim += st_now() - t3;
    return ST_OK;
}

static st_err run(int argc, char **argv)
{
    bench_opts op;
    st_grid g;
    ST_TRY(st_agree(MPI_COMM_WORLD, parse_args(&op, argc, argv)));
    ST_TRY(st_grid_init(&g, MPI_COMM_WORLD, op.tp));
    int threads = st_threads_setup(g.world);
    const int B = op.B, T = op.T, N = B * T;
    double peak = 0, peak_sum = 0;
    ST_TRY(st_measure_peak_gflops(2048, op.bf16, &peak)); /* every rank at once: the grid's ceiling */
    ST_MPI(MPI_Allreduce(&peak, &peak_sum, 1, MPI_DOUBLE, MPI_SUM, g.world));
    st_model m;
    st_dp dp;
    st_adamw o;
    st_optim_config oc;
    st_optim_config_default(&oc);
    ST_TRY(st_model_create(&m, &op.cfg, g.tp, B, T, 1));
    st_model_init(&m, 1);
    ST_TRY(st_model_set_precision(&m, op.bf16));
    ST_TRY(st_dp_init(&dp, g.dp, m.lay.numel, op.zero));
    size_t own_b, own_e;
    st_dp_owned(&dp, &own_b, &own_e);
    ST_TRY(st_adamw_init(&o, &m.lay, own_b, own_e, &oc));
    /* random tokens: the same on the tp ranks of one model copy, different per dp rank */
    int32_t *tok, *tgt;
    float *mask;
    ST_ALLOC(tok, (size_t)N * op.micro, "tokens");
    ST_ALLOC(tgt, (size_t)N * op.micro, "targets");
    ST_ALLOC(mask, N, "mask");
    st_rng r;
    st_rng_seed(&r, 1 + (uint64_t)g.dp_rank);
    for (size_t i = 0; i < (size_t)N * op.micro; i++) {
        tok[i] = (int32_t)st_rng_below(&r, op.cfg.vocab_size);
        tgt[i] = (int32_t)st_rng_below(&r, op.cfg.vocab_size);
    }
    for (int i = 0; i < N; i++) mask[i] = 1.0f;

    phase_times pt = {0};
    ST_TRY(step(&m, &dp, &o, &g, &op, tok, tgt, mask, &pt)); /* warm-up: creates every primitive */
    memset(&pt, 0, sizeof pt);
    st_comm_reset();
    /* each step between barriers: the mean, and the best step (the least
     * disturbed by other work on the machine) */
    double dt = 0, best = 1e30;
    for (int s = 0; s < op.steps; s++) {
        ST_MPI(MPI_Barrier(g.world));
        double t0 = st_now();
        ST_TRY(step(&m, &dp, &o, &g, &op, tok, tgt, mask, &pt));
        ST_MPI(MPI_Barrier(g.world));
        double t = st_now() - t0;
        dt += t / op.steps;
        best = t < best ? t : best;
    }

    double tp_sec = st_comm.tp_seconds / op.steps, tp_max = 0, dpw = st_comm.dp_wait_seconds / op.steps, dpw_max = 0;
    ST_MPI(MPI_Reduce(&tp_sec, &tp_max, 1, MPI_DOUBLE, MPI_MAX, 0, g.world));
    ST_MPI(MPI_Reduce(&dpw, &dpw_max, 1, MPI_DOUBLE, MPI_MAX, 0, g.world));
    if (g.world_rank == 0) {
        const st_config *c = &op.cfg;
        double tokens = (double)N * op.micro * g.dp_size, tps = tokens / dt;
        double gflops = st_config_flops_per_token(c, T) * tps / 1e9;
        double tp_pred = g.tp_size > 1 ? 4.0 * tp_floats_per_micro(c, N) * op.micro : 0;
        double dp_pred = g.dp_size > 1 ? 4.0 * (double)m.lay.numel * (dp.zero ? 2 : 1) : 0;
        printf("grid %dx%d (tp x dp) %d thread%s/rank%s | %s L=%d C=%d H=%d KV=%d F=%d V=%d (%.1fM params, %zu floats/rank) | "
               "B=%d T=%d micro=%d global %d rows\n",
               g.tp_size, g.dp_size, threads, threads > 1 ? "s" : "", dp.zero ? " ZeRO-1" : "", st_family_name(c->family),
               c->n_layer, c->d_model, c->n_head, c->n_kv_head, c->d_ff, c->vocab_size,
               st_config_num_params(c) / 1e6, m.lay.numel, B, T, op.micro, B * op.micro * g.dp_size);
        printf("  step %.3f s, best %.3f s (rank 0: fwd %.3f, bwd %.3f, dp finish %.3f, clip+adamw+gather %.3f) | "
               "%.0f tok/s, best %.0f | %.1f GFLOP/s, MFU %.1f%% of %.1f GFLOP/s measured\n",
               dt, best, pt.fwd / op.steps, pt.bwd / op.steps, pt.dp_finish / op.steps, pt.optim / op.steps, tps,
               tokens / best, gflops, 100 * gflops / peak_sum, peak_sum);
        printf("  tp collectives: %.3f s/step on rank 0 (max over ranks %.3f, %.1f%% of the step), %.1f calls/step, "
               "%.2f MB/step (model %.2f MB)\n",
               tp_sec, tp_max, 100 * tp_max / dt, (double)st_comm.tp_calls / op.steps,
               st_comm.tp_bytes / 1e6 / op.steps, tp_pred / 1e6);
        printf("  dp gradients: %.2f MB/step (model %.2f MB), wait after backward %.3f s/step (max over ranks %.3f)\n",
               st_comm.dp_bytes / 1e6 / op.steps, dp_pred / 1e6, dpw, dpw_max);
        printf("RESULT tp=%d dp=%d zero=%d bf16=%d threads=%d step_s=%.4f best_step_s=%.4f tok_s=%.1f best_tok_s=%.1f "
               "peak_gflops=%.1f mfu=%.4f tp_s=%.4f tp_share=%.4f "
               "tp_MB=%.3f tp_MB_model=%.3f dp_MB=%.3f dp_MB_model=%.3f dp_wait_s=%.4f\n",
               g.tp_size, g.dp_size, dp.zero, op.bf16, threads, dt, best, tps, tokens / best, peak_sum, gflops / peak_sum,
               tp_max, tp_max / dt,
               st_comm.tp_bytes / 1e6 / op.steps, tp_pred / 1e6, st_comm.dp_bytes / 1e6 / op.steps, dp_pred / 1e6,
               dpw_max);
        fflush(stdout);
    }
    free(tok);
    free(tgt);
    free(mask);
    st_adamw_free(&o);
    st_dp_free(&dp);
    st_model_free(&m);
    st_grid_free(&g);
    return ST_OK;
}

int main(int argc, char **argv)
{
    int provided = 0, rank = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    st_err e = run(argc, argv);
    if (e) {
        st_error_print(stderr, rank);
        MPI_Abort(MPI_COMM_WORLD, 1); /* a failed rank may have left others inside a collective */
    }
    MPI_Finalize();
    return 0;
}
