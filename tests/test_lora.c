/* test_lora.c: LoRA adapters (src/model/lora.c) on one rank, both families.
 *
 * The adapted model is checked against the double reference (tests/ref.c)
 * run on merged weights W + s B A computed here in double: loss, adapter
 * gradients by the chain rule, frozen base, merge, generation, dropout
 * (finite differences), learning, and the errors of the target list. */
#include <check.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/lora.h"
#include "model/model.h"
#include "model/optim.h"
#include "mpi_check.h"
#include "ref.h"
#include "testcfg.h"


#define ALL7 ((1u << ST_T_COUNT) - 1)

/* The family's every projection. */
static unsigned all_targets(const st_config *c)
{
    return c->family == ST_FAMILY_GPT2 ? ALL7 & ~(1u << ST_T_GATE) : ALL7;
}

/* ---- a model with adapters ------------------------------------------------ */

typedef struct {
    st_config cfg;
    st_lora_config lc;
    st_model m;
    st_lora *l;
    int B, T;
    int32_t *tok, *tgt;
    int itok[64], itgt[64];
    float *mask;
    double norm;
} rig;

/* Base model (perturbed seeded init), frozen; adapters on every projection
 * with B set to random values (it starts at zero, which would test nothing). */
static void rig_init(rig *g, st_config cfg, float dropout)
{
    memset(g, 0, sizeof *g);
    g->cfg = cfg;
    g->B = 3;
    g->T = 7;
    ck_assert_int_eq(st_model_create(&g->m, &cfg, MPI_COMM_SELF, g->B, g->T, 1), 0);
    st_model_init(&g->m, 42);
    st_rng r;
    st_rng_seed(&r, 7);
    for (size_t i = 0; i < g->m.lay.numel; i++) g->m.params[i] += 0.05f * (float)(st_rng_uniform(&r) - 0.5);
    g->lc = (st_lora_config){.rank = 4, .alpha = 5.0f, .dropout = dropout, .targets = all_targets(&cfg)};
    ck_assert_int_eq(st_lora_create(&g->l, &g->m.lay, &g->lc, (int64_t)g->B * g->T, 11), 0);
    const st_layout *ly = st_lora_layout(g->l);
    float *p = st_lora_params(g->l);
    for (int t = 0; t < ly->n_tensors; t++)
        if (strstr(ly->tensors[t].name, "lora_B"))
            for (size_t i = 0; i < ly->tensors[t].numel; i++)
                p[ly->tensors[t].offset + i] = 0.1f * (float)(st_rng_uniform(&r) - 0.5);
    g->m.adapter = st_lora_adapter(g->l);
    uint8_t *zeros = calloc((size_t)g->m.lay.n_tensors, 1);
    st_model_set_trainable(&g->m, zeros, 1);
    free(zeros);
    const int N = g->B * g->T;
    g->tok = malloc(sizeof(int32_t) * N);
    g->tgt = malloc(sizeof(int32_t) * N);
    g->mask = malloc(sizeof(float) * N);
    g->norm = 0;
    for (int i = 0; i < N; i++) {
        g->itok[i] = g->tok[i] = (int32_t)st_rng_below(&r, (uint64_t)cfg.vocab_size);
        g->itgt[i] = g->tgt[i] = (int32_t)st_rng_below(&r, (uint64_t)cfg.vocab_size);
        g->mask[i] = i % 5 == 3 ? 0.0f : 1.0f;
        g->norm += g->mask[i];
    }
}

static void rig_free(rig *g)
{
    st_lora_free(g->l);
    st_model_free(&g->m);
    free(g->tok);
    free(g->tgt);
    free(g->mask);
}

/* Loss (mean over counted positions); gradients zeroed first and filled when backward. */
static double rig_loss(rig *g, int backward)
{
    double loss = 0;
    st_model_zero_grad(&g->m);
    st_lora_zero_grad(g->l);
    ck_assert_int_eq(st_model_forward(&g->m, g->tok, g->tgt, g->mask, g->B, g->T, (float)(1.0 / g->norm), &loss), 0);
    if (backward) ck_assert_int_eq(st_model_backward(&g->m, g->tok), 0);
    return loss;
}

/* The base weight an adapter tensor belongs to: "...q_proj.lora_A.weight" -> "...q_proj.weight". */
static void base_name(char *out, size_t cap, const char *lora_name)
{
    snprintf(out, cap, "%s", lora_name);
    char *p = strstr(out, ".lora_");
    ck_assert_ptr_nonnull(p);
    memmove(p, p + 7, strlen(p + 7) + 1);
}

/* Reference params = the rig's base with W += s B A (double) for each pair. */
static void set_merged_reference(ref_model *r, rig *g)
{
    ref_model_set_params(r, g->m.params);
    const st_layout *ly = st_lora_layout(g->l);
    const float *p = st_lora_params(g->l);
    const double s = (double)g->lc.alpha / g->lc.rank;
    char name[128];
    for (int t = 0; t < ly->n_tensors; t += 2) {
        const st_tensor *A = &ly->tensors[t], *Bt = &ly->tensors[t + 1];
        ck_assert_ptr_nonnull(strstr(A->name, "lora_A"));
        ck_assert_ptr_nonnull(strstr(Bt->name, "lora_B"));
        base_name(name, sizeof name, A->name);
        double *W = ref_model_tensor(r, r->params, name);
        ck_assert_ptr_nonnull(W);
        const int64_t R = A->shape[0], IN = A->shape[1], OUT = Bt->shape[0];
        for (int64_t o = 0; o < OUT; o++)
            for (int64_t i = 0; i < IN; i++) {
                double d = 0;
                for (int64_t k = 0; k < R; k++) d += (double)p[Bt->offset + o * R + k] * p[A->offset + k * IN + i];
                W[o * IN + i] += s * d;
            }
    }
}

/* ---- the tensor table --------------------------------------------------- */

START_TEST(layout_names_shapes_and_init)
{
    st_config cfg = cfg_llama();
    st_model m;
    ck_assert_int_eq(st_model_create(&m, &cfg, MPI_COMM_SELF, 2, 4, 1), 0);
    st_model_init(&m, 1);
    st_lora_config lc = {.rank = 4, .alpha = 8.0f, .targets = (1u << ST_T_Q) | (1u << ST_T_DOWN)};
    st_lora *l;
    ck_assert_int_eq(st_lora_create(&l, &m.lay, &lc, 8, 5), 0);
    const st_layout *y = st_lora_layout(l);
    ck_assert_int_eq(y->n_tensors, 2 * 2 * cfg.n_layer);
    ck_assert_int_eq(y->cfg.d_model, cfg.d_model);
    ck_assert_int_eq(y->tp_size, 1);
    const st_tensor *qa = st_layout_find(y, "model.layers.1.self_attn.q_proj.lora_A.weight");
    const st_tensor *qb = st_layout_find(y, "model.layers.1.self_attn.q_proj.lora_B.weight");
    const st_tensor *da = st_layout_find(y, "model.layers.0.mlp.down_proj.lora_A.weight");
    const st_tensor *db = st_layout_find(y, "model.layers.0.mlp.down_proj.lora_B.weight");
    ck_assert(qa && qb && da && db);
    ck_assert(qa->shape[0] == 4 && qa->shape[1] == 24 && qa->split == ST_SPLIT_NONE);
    ck_assert(qb->shape[0] == 24 && qb->shape[1] == 4 && qb->split == ST_SPLIT_COL);
    ck_assert(da->shape[0] == 4 && da->shape[1] == 40 && da->split == ST_SPLIT_ROW);
    ck_assert(db->shape[0] == 24 && db->shape[1] == 4 && db->split == ST_SPLIT_NONE);
    ck_assert(st_layout_find(y, "model.layers.0.self_attn.k_proj.lora_A.weight") == NULL);
    ck_assert_float_eq(st_lora_scale(l), 2.0f);
    /* contiguous, no decay, layer ranges cover the buffer */
    size_t off = 0;
    for (int t = 0; t < y->n_tensors; t++) {
        ck_assert_uint_eq(y->tensors[t].offset, off);
        ck_assert_uint_eq(y->tensors[t].numel, (size_t)(y->tensors[t].shape[0] * y->tensors[t].shape[1]));
        ck_assert_int_eq(y->tensors[t].decay, 0);
        ck_assert_uint_ge(y->tensors[t].offset, y->layer_begin[y->tensors[t].layer]);
        ck_assert_uint_le(y->tensors[t].offset + y->tensors[t].numel, y->layer_begin[y->tensors[t].layer + 1]);
        off += y->tensors[t].numel;
    }
    ck_assert_uint_eq(off, st_lora_numel(l));
    ck_assert_uint_eq(y->layer_begin[cfg.n_layer], off);
    /* A ~ U(-1/sqrt(IN), 1/sqrt(IN)) with roughly its variance bound^2/3; B = 0 */
    const float *p = st_lora_params(l);
    double bound = 1.0 / sqrt(40.0), ss = 0;
    for (size_t i = 0; i < da->numel; i++) {
        ck_assert(fabs(p[da->offset + i]) <= bound);
        ss += (double)p[da->offset + i] * p[da->offset + i];
    }
    ck_assert_msg(fabs(ss / da->numel / (bound * bound / 3) - 1) < 0.3, "A variance %.3g", ss / da->numel);
    for (size_t i = 0; i < qb->numel; i++) ck_assert(p[qb->offset + i] == 0.0f);
    /* same seed, same values; another seed, others */
    st_lora *l2, *l3;
    ck_assert_int_eq(st_lora_create(&l2, &m.lay, &lc, 8, 5), 0);
    ck_assert_int_eq(st_lora_create(&l3, &m.lay, &lc, 8, 6), 0);
    ck_assert(memcmp(p, st_lora_params(l2), st_lora_numel(l) * sizeof(float)) == 0);
    ck_assert(memcmp(p, st_lora_params(l3), st_lora_numel(l) * sizeof(float)) != 0);
    st_lora_free(l2);
    st_lora_free(l3);
    st_lora_free(l);
    st_model_free(&m);
}
END_TEST

/* Fresh adapters (B = 0) leave the model exactly as it was. */
START_TEST(fresh_adapters_change_nothing)
{
    rig g;
    rig_init(&g, cfg_llama(), 0.0f);
    st_lora *fresh;
    ck_assert_int_eq(st_lora_create(&fresh, &g.m.lay, &g.lc, (int64_t)g.B * g.T, 3), 0);
    g.m.adapter = NULL;
    double base = rig_loss(&g, 0);
    g.m.adapter = st_lora_adapter(fresh);
    double with = rig_loss(&g, 0);
    ck_assert(memcmp(&base, &with, sizeof base) == 0);
    st_lora_free(fresh);
    rig_free(&g);
}
END_TEST

/* ---- against the reference ------------------------------------------------- */

static void check_reference(st_config cfg)
{
    rig g;
    rig_init(&g, cfg, 0.0f);
    ref_model r;
    ck_assert_int_eq(ref_model_init(&r, &cfg), 0);
    set_merged_reference(&r, &g);
    float *base0 = malloc(sizeof(float) * g.m.lay.numel);
    memcpy(base0, g.m.params, sizeof(float) * g.m.lay.numel);

    /* (1) the loss */
    double loss = rig_loss(&g, 1);
    double rl = ref_model_forward_backward(&r, g.itok, g.itgt, g.mask, g.B, g.T, g.norm, NULL, 1);
    ck_assert_msg(fabs(loss - rl) / fabs(rl) < 1e-5, "loss %.9g vs merged reference %.9g", loss, rl);

    /* (2) adapter gradients: dB = s dW A^T, dA = s B^T dW with dW the reference's dL/dW_eff */
    const st_layout *ly = st_lora_layout(g.l);
    const float *p = st_lora_params(g.l), *gr = st_lora_grads(g.l);
    const double s = (double)g.lc.alpha / g.lc.rank;
    double *want = calloc(st_lora_numel(g.l), sizeof(double));
    char name[128];
    for (int t = 0; t < ly->n_tensors; t += 2) {
        const st_tensor *A = &ly->tensors[t], *Bt = &ly->tensors[t + 1];
        base_name(name, sizeof name, A->name);
        const double *dW = ref_model_tensor(&r, r.grads, name);
        const int64_t R = A->shape[0], IN = A->shape[1], OUT = Bt->shape[0];
        for (int64_t o = 0; o < OUT; o++)
            for (int64_t i = 0; i < IN; i++)
                for (int64_t k = 0; k < R; k++) {
                    want[Bt->offset + o * R + k] += s * dW[o * IN + i] * p[A->offset + k * IN + i];
                    want[A->offset + k * IN + i] += s * p[Bt->offset + o * R + k] * dW[o * IN + i];
                }
    }
    double gmax = 0;
    for (size_t i = 0; i < st_lora_numel(g.l); i++) gmax = fmax(gmax, fabs(want[i]));
    ck_assert(gmax > 0);
    for (int t = 0; t < ly->n_tensors; t++) {
        const st_tensor *ts = &ly->tensors[t];
        double tmax = 0, dmax = 0;
        for (size_t i = 0; i < ts->numel; i++) {
            tmax = fmax(tmax, fabs(want[ts->offset + i]));
            dmax = fmax(dmax, fabs(gr[ts->offset + i] - want[ts->offset + i]));
        }
        double denom = fmax(tmax, 1e-3 * gmax);
        ck_assert_msg(dmax / denom < 1e-4, "%s: gradient error %.3g relative to %.3g", ts->name, dmax, denom);
    }

    /* (3) the base gets no gradient, and an AdamW step on the adapters leaves it bitwise alone */
    for (size_t i = 0; i < g.m.lay.numel; i++)
        ck_assert_msg(g.m.grads[i] == 0.0f, "base gradient %zu is %g", i, (double)g.m.grads[i]);
    st_optim_config oc;
    st_optim_config_default(&oc);
    st_adamw o;
    ck_assert_int_eq(st_adamw_init(&o, ly, 0, st_lora_numel(g.l), &oc), 0);
    float *ad0 = malloc(sizeof(float) * st_lora_numel(g.l));
    memcpy(ad0, p, sizeof(float) * st_lora_numel(g.l));
    st_adamw_update(&o, st_lora_params(g.l), st_lora_grads(g.l), 1e-3f);
    ck_assert(memcmp(ad0, p, sizeof(float) * st_lora_numel(g.l)) != 0);
    ck_assert(memcmp(base0, g.m.params, sizeof(float) * g.m.lay.numel) == 0);
    memcpy(st_lora_params(g.l), ad0, sizeof(float) * st_lora_numel(g.l)); /* back to the checked values */
    st_adamw_free(&o);

    /* (4) merge: equals the double merge, and the merged model alone computes base + adapters */
    st_model mm;
    ck_assert_int_eq(st_model_create(&mm, &cfg, MPI_COMM_SELF, g.B, g.T, 1), 0);
    st_model_init(&mm, 42);
    memcpy(mm.params, g.m.params, sizeof(float) * g.m.lay.numel);
    ck_assert_int_eq(st_lora_merge(g.l, &mm.lay, mm.params), 0);
    for (size_t i = 0; i < mm.lay.numel; i++)
        ck_assert_msg(fabs(mm.params[i] - r.params[i]) <= 1e-6 * fmax(1.0, fabs(r.params[i])),
                      "merged weight %zu: %.9g vs %.9g", i, (double)mm.params[i], r.params[i]);
    double lm = 0;
    ck_assert_int_eq(st_model_forward(&mm, g.tok, g.tgt, g.mask, g.B, g.T, (float)(1.0 / g.norm), &lm), 0);
    ck_assert_msg(fabs(lm - loss) / fabs(loss) < 1e-6, "merged loss %.9g vs adapted %.9g", lm, loss);

    /* generation: adapted (inference model, adapters attached) and merged
     * models give the reference's logits at every position of row 0 */
    double *rlog = malloc(sizeof(double) * g.B * g.T * cfg.vocab_size);
    ref_model_forward_backward(&r, g.itok, g.itgt, NULL, g.B, g.T, 1.0, rlog, 0);
    st_model gen[2];
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(st_model_create(&gen[k], &cfg, MPI_COMM_SELF, 1, g.T, 0), 0);
        st_model_init(&gen[k], 0);
        memcpy(gen[k].params, k ? mm.params : g.m.params, sizeof(float) * mm.lay.numel);
    }
    gen[0].adapter = st_lora_adapter(g.l);
    st_lora_set_step(g.l, 0, 0);
    float *lg = malloc(sizeof(float) * cfg.vocab_size);
    for (int k = 0; k < 2; k++) {
        st_kvcache c;
        ck_assert_int_eq(st_kvcache_create(&c, &gen[k], 1), 0);
        ck_assert_int_eq(st_model_forward_cached(&gen[k], &c, g.tok, 3, lg), 0);
        for (int t = 2; t < g.T; t++) {
            if (t > 2) ck_assert_int_eq(st_model_forward_cached(&gen[k], &c, g.tok + t, 1, lg), 0);
            const double *w = rlog + (size_t)t * cfg.vocab_size;
            double e = 0, mx = 0;
            for (int v = 0; v < cfg.vocab_size; v++) { e = fmax(e, fabs(lg[v] - w[v])); mx = fmax(mx, fabs(w[v])); }
            ck_assert_msg(e / mx < 1e-5, "%s logits at position %d: error %.3g of %.3g",
                          k ? "merged" : "adapted", t, e, mx);
        }
        st_kvcache_free(&c);
        st_model_free(&gen[k]);
    }
    free(lg);
    free(rlog);
    st_model_free(&mm);
    free(ad0);
    free(want);
    free(base0);
    ref_model_free(&r);
    rig_free(&g);
}

START_TEST(llama_matches_merged_reference) { check_reference(cfg_llama()); }
END_TEST
START_TEST(gpt2_matches_merged_reference) { check_reference(cfg_gpt2()); }
END_TEST

/* ---- dropout ------------------------------------------------------------- */

static void check_dropout(st_config cfg)
{
    rig g;
    rig_init(&g, cfg, 0.3f);
    /* the same adapters without dropout */
    st_lora_config lc0 = g.lc;
    lc0.dropout = 0.0f;
    st_lora *l0;
    ck_assert_int_eq(st_lora_create(&l0, &g.m.lay, &lc0, (int64_t)g.B * g.T, 11), 0);
    memcpy(st_lora_params(l0), st_lora_params(g.l), sizeof(float) * st_lora_numel(g.l));
    g.m.adapter = st_lora_adapter(l0);
    double plain = rig_loss(&g, 0);
    g.m.adapter = st_lora_adapter(g.l);

    st_lora_set_step(g.l, 3, 0);
    double eval = rig_loss(&g, 0);
    ck_assert_msg(memcmp(&eval, &plain, sizeof eval) == 0, "evaluation %.9g vs no dropout %.9g", eval, plain);
    st_lora_set_step(g.l, 3, 1);
    double d3 = rig_loss(&g, 0), d3again = rig_loss(&g, 0);
    ck_assert_msg(fabs(d3 - plain) > 1e-4 * fabs(plain), "dropout changed nothing: %.9g", d3);
    ck_assert(memcmp(&d3, &d3again, sizeof d3) == 0);
    st_lora_set_step(g.l, 4, 1);
    double d4 = rig_loss(&g, 0);
    ck_assert_msg(fabs(d4 - d3) > 1e-6 * fabs(d3), "step 4 drew step 3's mask");
    st_lora_set_rows(g.l, 21);
    double r21 = rig_loss(&g, 0);
    ck_assert_msg(fabs(r21 - d4) > 1e-6 * fabs(d4), "row offset drew the same mask");
    st_lora_set_rows(g.l, 0);

    /* finite differences at step 3 (same mask every forward): the largest
     * gradient entry of every layer-0 tensor (its gradient passes through
     * layer 1's adapter input gradients) and of layer 1's B tensors */
    st_lora_set_step(g.l, 3, 1);
    rig_loss(&g, 1);
    const st_layout *ly = st_lora_layout(g.l);
    size_t n = st_lora_numel(g.l);
    float *grad = malloc(sizeof(float) * n), *p = st_lora_params(g.l);
    memcpy(grad, st_lora_grads(g.l), sizeof(float) * n);
    int checked = 0;
    for (int t = 0; t < ly->n_tensors; t++) {
        const st_tensor *ts = &ly->tensors[t];
        if (ts->layer == 1 && !strstr(ts->name, "lora_B")) continue;
        size_t best = ts->offset;
        for (size_t i = ts->offset; i < ts->offset + ts->numel; i++)
            if (fabsf(grad[i]) > fabsf(grad[best])) best = i;
        const float h = 1e-2f, keep = p[best];
        p[best] = keep + h;
        double lp = rig_loss(&g, 0);
        p[best] = keep - h;
        double lmn = rig_loss(&g, 0);
        p[best] = keep;
        double fd = (lp - lmn) / (2.0 * h);
        ck_assert_msg(fabs(fd - grad[best]) <= 2e-2 * fabs(grad[best]) + 1e-5,
                      "%s[%zu]: gradient %.6g, finite difference %.6g", ts->name, best - ts->offset,
                      (double)grad[best], fd);
        checked++;
    }
    ck_assert_int_gt(checked, 10);
    free(grad);
    st_lora_free(l0);
    rig_free(&g);
}

START_TEST(llama_dropout) { check_dropout(cfg_llama()); }
END_TEST
START_TEST(gpt2_dropout) { check_dropout(cfg_gpt2()); }
END_TEST

/* ---- learning ------------------------------------------------------------- */

/* Adapters alone fit a fixed batch on a frozen base whose embeddings and head
 * are large enough (std 0.5) to express confident predictions. */
static void check_learning(st_config cfg)
{
    const int B = 4, T = 12, N = B * T, steps = 150;
    st_model m;
    ck_assert_int_eq(st_model_create(&m, &cfg, MPI_COMM_SELF, B, T, 1), 0);
    st_model_init(&m, 3);
    for (int t = 0; t < m.lay.n_tensors; t++) {
        const st_tensor *ts = &m.lay.tensors[t];
        if (strstr(ts->name, "embed") || strstr(ts->name, "lm_head"))
            for (size_t i = 0; i < ts->numel; i++) m.params[ts->offset + i] *= 25.0f;
    }
    st_lora_config lc = {.rank = 4, .alpha = 8.0f, .dropout = 0.0f, .targets = all_targets(&cfg)};
    st_lora *l;
    ck_assert_int_eq(st_lora_create(&l, &m.lay, &lc, N, 9), 0);
    m.adapter = st_lora_adapter(l);
    uint8_t *zeros = calloc((size_t)m.lay.n_tensors, 1);
    st_model_set_trainable(&m, zeros, 1);
    free(zeros);
    float *base0 = malloc(sizeof(float) * m.lay.numel);
    memcpy(base0, m.params, sizeof(float) * m.lay.numel);
    st_optim_config oc;
    st_optim_config_default(&oc);
    oc.lr = 1e-2f;
    oc.warmup_steps = 5;
    st_adamw o;
    ck_assert_int_eq(st_adamw_init(&o, st_lora_layout(l), 0, st_lora_numel(l), &oc), 0);
    int32_t tok[N], tgt[N];
    float mask[N];
    st_rng r;
    st_rng_seed(&r, 5);
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)st_rng_below(&r, (uint64_t)cfg.vocab_size);
        tgt[i] = (int32_t)st_rng_below(&r, (uint64_t)cfg.vocab_size);
        mask[i] = 1.0f;
    }
    double first = 0, loss = 0;
    for (int s = 0; s < steps; s++) {
        st_lora_zero_grad(l);
        st_lora_set_step(l, s, 1);
        ck_assert_int_eq(st_model_forward(&m, tok, tgt, mask, B, T, 1.0f / N, &loss), 0);
        if (s == 0) first = loss;
        ck_assert_int_eq(st_model_backward(&m, tok), 0);
        st_adamw_update(&o, st_lora_params(l), st_lora_grads(l), st_lr_at(&oc, s));
    }
    ck_assert_msg(loss < 0.5 * first, "%s: LoRA loss %.4f -> %.4f", st_family_name(cfg.family), first, loss);
    ck_assert(memcmp(base0, m.params, sizeof(float) * m.lay.numel) == 0);
    st_adamw_free(&o);
    free(base0);
    st_lora_free(l);
    st_model_free(&m);
}

START_TEST(llama_learns_with_lora_alone) { check_learning(cfg_llama()); }
END_TEST
START_TEST(gpt2_learns_with_lora_alone) { check_learning(cfg_gpt2()); }
END_TEST

/* ---- errors ----------------------------------------------------------------- */

START_TEST(target_lists)
{
    unsigned m;
    ck_assert_int_eq(st_lora_parse_targets("q,k,v,o,gate,up,down", &m), 0);
    ck_assert_uint_eq(m, ALL7);
    ck_assert_int_eq(st_lora_parse_targets("attn", &m), 0);
    ck_assert_uint_eq(m, (1u << ST_T_Q) | (1u << ST_T_K) | (1u << ST_T_V) | (1u << ST_T_O));
    ck_assert_int_eq(st_lora_parse_targets(" q_proj , V,down ", &m), 0);
    ck_assert_uint_eq(m, (1u << ST_T_Q) | (1u << ST_T_V) | (1u << ST_T_DOWN));
    const char *bad[] = {"", "q,,k", "q,", "qq", "q,kv", "attention"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(st_lora_parse_targets(bad[i], &m), ST_ERR_ARG);
        ck_assert_ptr_nonnull(strstr(st_error_message(), "gate"));  /* lists the valid names */
    }
    ck_assert_int_eq(st_lora_parse_targets("q,kv", &m), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "'kv'"));
    ck_assert_int_eq(st_lora_parse_targets(NULL, &m), ST_ERR_ARG);

    /* families: gpt2 has no gate; "all" and "mlp" mean what the family has */
    st_config gc = cfg_gpt2(), lc = cfg_llama();
    st_layout gl, ll;
    ck_assert_int_eq(st_layout_init(&gl, &gc, 1, 0), 0);
    ck_assert_int_eq(st_layout_init(&ll, &lc, 1, 0), 0);
    st_lora_config c = {.rank = 2, .alpha = 2.0f};
    st_lora *l;
    ck_assert_int_eq(st_lora_parse_targets("q,gate", &c.targets), 0);
    ck_assert_int_eq(st_lora_create(&l, &gl, &c, 4, 1), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "gate"));
    ck_assert_ptr_null(l);
    ck_assert_int_eq(st_lora_create(&l, &ll, &c, 4, 1), 0);
    st_lora_free(l);
    ck_assert_int_eq(st_lora_parse_targets("all", &c.targets), 0);
    ck_assert_int_eq(st_lora_create(&l, &gl, &c, 4, 1), 0);
    ck_assert_uint_eq(st_lora_targets(l), ALL7 & ~(1u << ST_T_GATE));
    ck_assert_int_eq(st_lora_layout(l)->n_tensors, 2 * 6 * gc.n_layer);
    st_lora_free(l);
    ck_assert_int_eq(st_lora_create(&l, &ll, &c, 4, 1), 0);
    ck_assert_uint_eq(st_lora_targets(l), ALL7);
    st_lora_free(l);
    ck_assert_int_eq(st_lora_parse_targets("mlp", &c.targets), 0);
    ck_assert_int_eq(st_lora_create(&l, &gl, &c, 4, 1), 0);
    ck_assert_uint_eq(st_lora_targets(l), (1u << ST_T_UP) | (1u << ST_T_DOWN));
    st_lora_free(l);

    /* bad numbers */
    c.targets = 1u << ST_T_Q;
    st_lora_config b1 = c, b2 = c, b3 = c, b4 = c;
    b1.rank = 0;
    b2.alpha = 0.0f;
    b3.dropout = 1.0f;
    b4.targets = 0;
    ck_assert_int_eq(st_lora_create(&l, &ll, &b1, 4, 1), ST_ERR_ARG);
    ck_assert_int_eq(st_lora_create(&l, &ll, &b2, 4, 1), ST_ERR_ARG);
    ck_assert_int_eq(st_lora_create(&l, &ll, &b3, 4, 1), ST_ERR_ARG);
    ck_assert_int_eq(st_lora_create(&l, &ll, &b4, 4, 1), ST_ERR_ARG);
    ck_assert_int_eq(st_lora_create(&l, &ll, &c, 0, 1), ST_ERR_ARG);

    /* a micro-batch larger than the buffers is an error, not an overflow */
    ck_assert_int_eq(st_lora_create(&l, &ll, &c, 4, 1), 0);
    const st_adapter *a = st_lora_adapter(l);
    float in[5 * 24] = {0}, out[5 * 24] = {0};
    ck_assert_int_eq(a->forward(a->ctx, MPI_COMM_SELF, 0, ST_T_Q, out, in, 5, 1), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "max_tokens"));
    ck_assert_int_eq(a->forward(a->ctx, MPI_COMM_SELF, 0, ST_T_Q, out, in, 4, 1), 0);
    ck_assert_int_eq(a->forward(a->ctx, MPI_COMM_SELF, 0, ST_T_K, out, in, 5, 1), 0); /* not adapted */
    /* merge refuses a layout of another grid */
    st_layout l2;
    ck_assert_int_eq(st_layout_init(&l2, &lc, 2, 1), 0);
    float *params = calloc(l2.numel, sizeof(float));
    ck_assert_int_eq(st_lora_merge(l, &l2, params), ST_ERR_ARG);
    free(params);
    st_layout_free(&l2);
    st_lora_free(l);
    st_layout_free(&gl);
    st_layout_free(&ll);
}
END_TEST

int main(int argc, char **argv)
{
    Suite *s = suite_create("lora");
    TCase *tc = tcase_create("lora");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, layout_names_shapes_and_init);
    tcase_add_test(tc, fresh_adapters_change_nothing);
    tcase_add_test(tc, llama_matches_merged_reference);
    tcase_add_test(tc, gpt2_matches_merged_reference);
    tcase_add_test(tc, llama_dropout);
    tcase_add_test(tc, gpt2_dropout);
    tcase_add_test(tc, llama_learns_with_lora_alone);
    tcase_add_test(tc, gpt2_learns_with_lora_alone);
    tcase_add_test(tc, target_lists);
    suite_add_tcase(s, tc);
    return st_run_serial_mpi_suite(&argc, &argv, s);
}
