/* planner.c: memory and step time of a planned run (planner.h). */
#include "cmd/planner.h"

#include <math.h>
#include <string.h>

#include "core/params.h"
#include "model/model.h"

st_err st_plan_memory_of(const st_plan *p, st_plan_memory *out)
{
    memset(out, 0, sizeof *out);
    if (p->ranks < 1 || p->tp < 1 || p->ranks % p->tp)
        ST_FAIL(ST_ERR_ARG, "%d ranks do not split into tp groups of %d", p->ranks, p->tp);
    if (p->seq < 1 || p->batch < 1 || p->micro < 1)
        ST_FAIL(ST_ERR_ARG, "micro-batch %d x %d, %d per step: expected positive numbers", p->batch, p->seq, p->micro);
    if (p->seq > p->cfg.max_seq)
        ST_FAIL(ST_ERR_ARG, "--seq %d exceeds the model's max_seq %d", p->seq, p->cfg.max_seq);
    st_layout lay;
    ST_TRY(st_layout_init(&lay, &p->cfg, p->tp, 0)); /* tp rank 0 holds the largest slice */
    const double f = sizeof(float), n = (double)lay.numel, dp = p->ranks / p->tp;
    /* AdamW's owned range: all of the buffer, or the largest 1/dp slice; ZeRO-1
     * also keeps its gradient slice (mpi/dp.c) */
    const double owned = p->zero ? ceil(n / dp) : n;
    out->weights = n * f;
    /* bf16: the weights' copy, and the two grow-only buffers the kernels round
     * f32 operands into (src/kernels/kernels.c): the largest first operand of
     * a linear product (an output gradient, up to the LM head's N x Vl) and the
     * largest second (a layer input, N x max(C, Fl, Q)) */
    const double N = (double)p->batch * p->seq, C = p->cfg.d_model, Fl = lay.d_ff_l, Vl = lay.vocab_l,
                 Q = (double)lay.n_head_l * lay.head_dim, wide = fmax(fmax(C, Fl), Q);
    out->bf16 = p->bf16 ? n * 2 + 2 * N * (fmax(Vl, wide) + wide) : 0;
    out->grads = n * f + (p->zero ? (owned + 1) * f : 0);
    out->moments = 2 * owned * f;
    out->acts = (double)st_model_act_floats(&lay, p->batch, p->seq, ST_MODEL_TRAIN) * f;
    out->acts_recompute = (double)st_model_act_floats(&lay, p->batch, p->seq, ST_MODEL_TRAIN_RECOMPUTE) * f;
    /* RoPE tables (llama) and the batch: tokens, targets, mask, per row */
    out->other = (p->cfg.family == ST_FAMILY_LLAMA ? (double)p->cfg.max_seq * lay.head_dim * f : 0) +
                 3.0 * p->batch * p->seq * f;
    out->runtime = ST_PLAN_RUNTIME_BYTES;
    /* dp > 1: Open MPI copies a nonblocking reduction's data into a temporary
     * while it runs; the largest bucket (a layer, the embeddings, or the
     * final norm and LM head: mpi/dp.c) is the peak */
    if (dp > 1) {
        size_t big = lay.layer_begin[0] > lay.numel - lay.layer_begin[p->cfg.n_layer]
                         ? lay.layer_begin[0] : lay.numel - lay.layer_begin[p->cfg.n_layer];
        for (int l = 0; l < p->cfg.n_layer; l++)
            if (lay.layer_begin[l + 1] - lay.layer_begin[l] > big) big = lay.layer_begin[l + 1] - lay.layer_begin[l];
        out->mpi = (double)big * f;
    }
    const double base = out->weights + out->bf16 + out->grads + out->moments + out->other + out->runtime + out->mpi;
    out->total = base + out->acts;
    out->total_recompute = base + out->acts_recompute;
    st_layout_free(&lay);
    return ST_OK;
}

void st_plan_time_of(const st_plan *p, const st_plan_machine *m, st_plan_time *out)
{
    memset(out, 0, sizeof *out);
    const st_config *c = &p->cfg;
    const double t = p->tp, d = p->ranks / p->tp, rpn = p->ranks_per_node, L = c->n_layer, C = c->d_model;
    const double lat = m->latency_us * 1e-6;
    const double tokens = (double)p->micro * p->batch * p->seq; /* per model copy and step */
    const double rate = m->node_gflops * 1e9 / rpn;             /* per rank */
    out->compute = tokens * st_config_flops_per_token(c, p->seq) / (t * rate * m->mfu);
    if (p->recompute) out->compute *= 4.0 / 3.0; /* one more forward of every layer */
    if (p->tp > 1)
        out->tp = tokens * 2 * (t - 1) / t * 4 * ((4 * L + 2) * C + 3) / (m->shm_gbs * 1e9) +
                  p->micro * (4 * L + 4) * 2 * lat;
    if (d > 1) {
        st_plan_memory mem;
        double pr = st_plan_memory_of(p, &mem) ? 0 : mem.weights; /* 4 P_r bytes */
        const int one_node = p->ranks <= p->ranks_per_node;
        const double bytes = 2 * (d - 1) / d * pr;
        out->dp = (one_node ? bytes / (m->shm_gbs * 1e9) : rpn * bytes / (m->net_gbs * 1e9)) +
                  2 * (d - 1) * (L + 2) * lat;
    }
    out->step = out->compute + out->tp + out->dp;
    out->tokens_per_s = out->step > 0 ? d * tokens / out->step : 0;
}

/* Is the candidate's memory (its recompute choice) within the budget? */
static double need(const st_plan_memory *mem, int recompute)
{
    return recompute ? mem->total_recompute : mem->total;
}

st_err st_plan_recommend(st_plan *p, const st_plan_machine *m, int *fits)
{
    const double budget = m->node_memory * m->usable / p->ranks_per_node;
    st_plan best = *p, least = *p;
    double best_rate = 0, best_need = INFINITY, least_need = INFINITY;
    for (int tp = 1; tp <= p->ranks_per_node; tp++) {
        if (p->ranks_per_node % tp || p->ranks % tp || st_config_validate(&p->cfg, tp)) {
            st_error_clear();
            continue;
        }
        for (int zero = 0; zero <= (p->ranks / tp > 1); zero++)
            for (int rc = 0; rc <= 1; rc++) {
                st_plan q = *p;
                q.tp = tp, q.zero = zero, q.recompute = rc;
                st_plan_memory mem;
                ST_TRY(st_plan_memory_of(&q, &mem));
                st_plan_time tm;
                st_plan_time_of(&q, m, &tm);
                const double n = need(&mem, rc);
                if (n < least_need) least = q, least_need = n;
                /* the most tokens/s that fits; of two as fast, the smaller */
                const int faster = tm.tokens_per_s > best_rate * (1 + 1e-9),
                          as_fast = tm.tokens_per_s >= best_rate * (1 - 1e-9);
                if (n <= budget && (faster || (as_fast && n < best_need)))
                    best = q, best_rate = tm.tokens_per_s, best_need = n;
            }
    }
    if (least_need == INFINITY)
        ST_FAIL(ST_ERR_ARG, "no tp size from 1 to %d ranks per node divides the model and %d ranks",
                p->ranks_per_node, p->ranks);
    *fits = best_need < INFINITY;
    *p = *fits ? best : least;
    return ST_OK;
}

/* ---- named shapes ------------------------------------------------------------ */

typedef struct {
    const char *name;
    st_config cfg;
} shape;

#define LLAMA(L, C, H, KV, F, V, S, tied, theta)                                                     \
    {.family = ST_FAMILY_LLAMA, .n_layer = L, .d_model = C, .n_head = H, .n_kv_head = KV, .d_ff = F, \
     .vocab_size = V, .max_seq = S, .norm_eps = 1e-5f, .rope_theta = theta, .tied_embeddings = tied}

static const shape shapes[] = {
    /* GPT-2 small (OpenAI's 124M) */
    {"gpt2-124m", {.family = ST_FAMILY_GPT2, .n_layer = 12, .d_model = 768, .n_head = 12, .n_kv_head = 12,
                   .d_ff = 3072, .vocab_size = 50257, .max_seq = 1024, .norm_eps = 1e-5f, .tied_embeddings = 1}},
    /* the start-up benchmark's Llama (benchmarks/RESULTS.md section 7) */
    {"llama-162m", LLAMA(12, 768, 12, 12, 2048, 50257, 2048, 0, 10000.0f)},
    /* Llama 3.2 1B's shape (benchmarks/COMM_MODEL.md's 1B) */
    {"llama-1b", LLAMA(16, 2048, 32, 8, 8192, 128256, 8192, 1, 500000.0f)},
    /* Llama 2 7B and 13B */
    {"llama-7b", LLAMA(32, 4096, 32, 32, 11008, 32000, 4096, 0, 10000.0f)},
    {"llama-13b", LLAMA(40, 5120, 40, 40, 13824, 32000, 4096, 0, 10000.0f)},
};

st_err st_plan_named_shape(const char *name, st_config *cfg)
{
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(shapes[i].name, name)) {
            *cfg = shapes[i].cfg;
            return ST_OK;
        }
    ST_FAIL(ST_ERR_ARG, "'%s' is neither a file nor a named shape (%s)", name, st_plan_shape_names());
}

const char *st_plan_shape_names(void) { return "gpt2-124m, llama-162m, llama-1b, llama-7b, llama-13b"; }
