/* model.c: forward and backward of the decoder, layer by layer.
 *
 *   x = embed(tokens) (+ positions, gpt2)
 *   for each layer:  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
 *   logits = norm_f(x) @ lm_head^T;  loss = masked cross-entropy
 *
 * Shapes: N = B*T tokens, C model width, Hl/KVl this rank's query/kv heads,
 * hd head width, Fl this rank's MLP width, Vl this rank's vocabulary rows.
 */
#include "model/model.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "model/attention.h"
#include "mpi/comm.h"
#include "mpi/grid.h"
#include "mpi/tp.h"

#define GPT2(m) ((m)->lay.cfg.family == ST_FAMILY_GPT2)

/* The bf16 copy of weight w (a pointer into m->params) for a bf16 product, or
 * NULL in fp32. */
static const st_bf16 *w16_of(const st_model *m, const float *w)
{
    return m->params16 ? m->params16 + (w - m->params) : NULL;
}

/* ---- allocation --------------------------------------------------------- */

typedef struct { float **ptr; size_t n; } slot;
_Static_assert(sizeof(st_acts) / sizeof(float *) <= 64, "act_slots' callers hold 64 slots");

/* The activation buffers of a model of layout y for micro-batches of B x T
 * in mode training: each st_acts member and its floats (0: not used). The
 * one table alloc_acts and st_model_act_floats (the planner's) read. */
static size_t act_slots(st_acts *a, slot *s, const st_layout *y, size_t B, size_t T, int training)
{
    /* per-layer activations: every layer's when training without recomputation,
     * one layer's worth otherwise; the residual stream is kept for every layer
     * when training (recomputation starts from it) */
    const size_t L = training == ST_MODEL_TRAIN ? (size_t)y->cfg.n_layer : 1, N = B * T,
                 C = y->cfg.d_model, LX = training ? (size_t)y->cfg.n_layer + 1 : 2;
    const size_t hd = y->head_dim, Hl = y->n_head_l, KVl = y->n_kv_head_l, Fl = y->d_ff_l,
                 Vl = y->vocab_l;
    const size_t qd = Hl * hd, kvd = KVl * hd;
    const int gpt2 = y->cfg.family == ST_FAMILY_GPT2;
    const slot t[] = {
        {&a->x, LX * N * C},      {&a->ln1, L * N * C},     {&a->ln1_s1, L * N},
        {&a->ln1_s2, L * N},           {&a->qh, L * N * qd},     {&a->kh, L * N * kvd},
        {&a->vh, L * N * kvd},         {&a->att, L * B * Hl * T * T}, {&a->o, L * N * qd},
        {&a->x2, L * N * C},           {&a->ln2, L * N * C},     {&a->ln2_s1, L * N},
        {&a->ln2_s2, L * N},           {&a->up, L * N * Fl},     {&a->gate, gpt2 ? 0 : L * N * Fl},
        {&a->act, gpt2 ? 0 : L * N * Fl}, {&a->mh, L * N * Fl},  {&a->lnf, N * C},
        {&a->lnf_s1, N},               {&a->lnf_s2, N},          {&a->logits, N * Vl},
        {&a->rowbuf, 3 * N},           {&a->qt, N * qd},         {&a->kt, N * kvd},
        {&a->vt, N * kvd},             {&a->oh, N * qd},         {&a->dres, N * C},
        {&a->dnorm, N * C},            {&a->dln, N * C},         {&a->dmh, N * Fl},
        {&a->dup, N * Fl},             {&a->dgate, gpt2 ? 0 : N * Fl}, {&a->dqh, N * qd},
        {&a->dkh, N * kvd},            {&a->dvh, N * kvd},       {&a->datt, B * Hl * T * T},
    };
    const size_t n = sizeof t / sizeof t[0];
    for (size_t i = 0; s && i < n; i++) s[i] = t[i];
    return n;
}

size_t st_model_act_floats(const st_layout *y, int B, int T, int training)
{
    st_acts a;
    slot s[64];
    size_t n = act_slots(&a, s, y, (size_t)B, (size_t)T, training), sum = 0;
    for (size_t i = 0; i < n; i++) sum += s[i].n;
    return sum;
}

static st_err alloc_acts(st_model *m)
{
    st_acts *a = &m->a;
    slot s[64];
    const size_t n = act_slots(a, s, &m->lay, (size_t)m->B, (size_t)m->T, m->training);
    for (size_t i = 0; i < n; i++) {
        *s[i].ptr = NULL;
        if (!s[i].n) continue;
        *s[i].ptr = calloc(s[i].n, sizeof(float));
        if (!*s[i].ptr)
            ST_FAIL(ST_ERR_MEM, "out of memory: activations for a micro-batch of %d x %d tokens "
                    "need more memory (reduce batch_size or seq_len, or add tp ranks)", m->B, m->T);
    }
    return ST_OK;
}

static void free_acts(st_acts *a)
{
    float **p = (float **)a;
    for (size_t i = 0; i < sizeof *a / sizeof(float *); i++) { free(p[i]); p[i] = NULL; }
}

st_err st_model_create(st_model *m, const st_config *cfg, MPI_Comm tp, int B, int T, int training)
{
    memset(m, 0, sizeof *m);
    const int tp_size = st_comm_size(tp), tp_rank = st_comm_rank(tp);
    if (B < 1 || T < 1) ST_FAIL(ST_ERR_ARG, "micro-batch %d x %d must be positive", B, T);
    if (T > cfg->max_seq)
        ST_FAIL(ST_ERR_ARG, "sequence length %d exceeds the model's max_seq %d", T, cfg->max_seq);
    ST_TRY(st_kernels_init());
    ST_TRY(st_layout_init(&m->lay, cfg, tp_size, tp_rank));
    m->tp = tp;
    m->B = B;
    m->T = T;
    m->training = training;
    ST_ALLOC(m->params, m->lay.numel, "parameters");
    ST_ALLOC(m->grads, m->lay.numel, "gradients");
    ST_TRY(st_ptrs_init(&m->w, &m->lay, m->params));
    ST_TRY(st_ptrs_init(&m->g, &m->lay, m->grads));
    ST_TRY(st_ptrs_init(&m->gt, &m->lay, m->grads));
    m->embed_trainable = 1;
    ST_TRY(alloc_acts(m));
    if (!GPT2(m)) {
        size_t n = (size_t)cfg->max_seq * (m->lay.head_dim / 2);
        ST_ALLOC(m->rope_cos, n, "rope table");
        ST_ALLOC(m->rope_sin, n, "rope table");
        st_rope_table(m->rope_cos, m->rope_sin, cfg->max_seq, m->lay.head_dim, cfg->rope_theta);
    }
    return ST_OK;
}

void st_model_init(st_model *m, uint64_t seed) { st_params_init(&m->lay, m->params, seed); }

st_err st_model_set_precision(st_model *m, int bf16)
{
    if (!bf16) {
        free(m->params16);
        m->params16 = NULL;
        return ST_OK;
    }
    if (!m->params16) ST_ALLOC(m->params16, m->lay.numel, "the bf16 copy of the weights");
    st_model_sync_bf16(m);
    return ST_OK;
}

void st_model_sync_bf16(st_model *m)
{
    if (m->params16) st_to_bf16(m->params16, m->params, (int64_t)m->lay.numel);
}

void st_model_free(st_model *m)
{
    free_acts(&m->a);
    free(m->params16);
    st_ptrs_free(&m->w);
    st_ptrs_free(&m->g);
    st_ptrs_free(&m->gt);
    free(m->params);
    free(m->grads);
    free(m->rope_cos);
    free(m->rope_sin);
    st_layout_free(&m->lay);
    memset(m, 0, sizeof *m);
}

void st_model_zero_grad(st_model *m) { memset(m->grads, 0, m->lay.numel * sizeof(float)); }

void st_model_set_trainable(st_model *m, const uint8_t *trainable, int adapters_everywhere)
{
    const st_layout *y = &m->lay;
    /* point gt at the trainable gradients only: rebuild from g, then clear */
    float **g = (float **)&m->g, **gt = (float **)&m->gt;
    size_t top = offsetof(st_ptrs, layer) / sizeof(float *);
    for (size_t i = 0; i < top; i++) gt[i] = g[i];
    for (int l = 0; l < y->cfg.n_layer; l++) m->gt.layer[l] = m->g.layer[l];
    m->backward_floor = 0;
    m->embed_trainable = 1;
    if (!trainable) return;
    int lowest = y->cfg.n_layer;
    for (int t = y->n_tensors - 1; t >= 0; t--) {
        const st_tensor *ts = &y->tensors[t];
        float *gp = m->grads + ts->offset;
        if (trainable[t]) {
            if (ts->layer >= 0 && ts->layer < lowest) lowest = ts->layer;
            if (ts->layer < 0 && ts->offset < y->layer_begin[0]) lowest = 0;
            continue;
        }
        /* clear every role pointer equal to this tensor's gradient */
        for (size_t i = 0; i < top; i++) if (gt[i] == gp) gt[i] = NULL;
        if (ts->layer >= 0) {
            float **lp = (float **)&m->gt.layer[ts->layer];
            for (size_t i = 0; i < sizeof(st_layer_ptrs) / sizeof(float *); i++) if (lp[i] == gp) lp[i] = NULL;
        }
        if (!strcmp(ts->name, "model.embed_tokens.weight")) m->embed_trainable = 0;
    }
    /* a tied head is the embedding: trainable if the embedding is */
    if (y->cfg.tied_embeddings) m->gt.lm_head = m->gt.wte;
    m->backward_floor = adapters_everywhere ? 0 : lowest;
}

/* ---- pieces ------------------------------------------------------------- */

/* out (N,C) = LayerNorm or RMSNorm of inp; s1, s2 (N) saved statistics */
static st_err norm_forward(const st_model *m, float *out, float *s1, float *s2, const float *inp,
                           const float *w, const float *b, int64_t N)
{
    const int64_t C = m->lay.cfg.d_model;
    const float eps = m->lay.cfg.norm_eps;
    if (GPT2(m)) return st_layernorm_forward(out, s1, s2, inp, w, b, N, C, eps);
    st_rmsnorm_forward(out, s1, inp, w, N, C, eps);
    return ST_OK;
}

/* dinp (N,C) = d/dinp; dw, db += */
static st_err norm_backward(const st_model *m, float *dinp, float *dw, float *db, const float *dout,
                            const float *inp, const float *s1, const float *s2, const float *w,
                            int64_t N)
{
    const int64_t C = m->lay.cfg.d_model;
    if (GPT2(m))
        return st_layernorm_backward(dinp, dw, db, dout, inp, s1, s2, w, N, C, m->lay.cfg.norm_eps);
    st_rmsnorm_backward(dinp, dw, dout, inp, s1, w, N, C);
    return ST_OK;
}

/* token-major (B,T,NH,hd) <-> head-major (B,NH,ld,hd) rows r0..r0+T-1 */
static st_err to_heads(float *dst, const float *src, int B, int T, int NH, int ld, int r0, int hd)
{
    const int64_t dims[4] = {B, NH, T, hd};
    const int64_t ss[4] = {(int64_t)T * NH * hd, hd, (int64_t)NH * hd, 1};
    const int64_t ds[4] = {(int64_t)NH * ld * hd, (int64_t)ld * hd, hd, 1};
    return st_copy4d(dst + (size_t)r0 * hd, ds, src, ss, dims);
}

static st_err from_heads(float *dst, const float *src, int B, int T, int NH, int hd)
{
    const int64_t dims[4] = {B, NH, T, hd};
    const int64_t ss[4] = {(int64_t)NH * T * hd, (int64_t)T * hd, hd, 1};
    const int64_t ds[4] = {(int64_t)T * NH * hd, hd, (int64_t)NH * hd, 1};
    return st_copy4d(dst, ds, src, ss, dims);
}

/* Where a layer's keys and values go: the saved activations when training,
 * the cache when generating. */
typedef struct { float *k, *v, *att; int ld, pos0; size_t row; } kv_dest; /* row: cache row stride */

static kv_dest kv_for(const st_model *m, const st_kvcache *c, int l, int B, int T)
{
    const st_layout *y = &m->lay;
    kv_dest d;
    if (c) {
        size_t per = (size_t)y->n_kv_head_l * c->max_seq * y->head_dim;
        d.k = c->k + l * per;
        d.v = c->v + l * per;
        d.att = c->att;
        d.ld = c->max_seq;
        d.pos0 = 0; /* per row: c->lens */
        d.row = per * y->cfg.n_layer;
    } else {
        size_t N = (size_t)m->B * m->T, s = m->training == ST_MODEL_TRAIN ? (size_t)l : 0;
        d.k = m->a.kh + s * N * y->n_kv_head_l * y->head_dim;
        d.v = m->a.vh + s * N * y->n_kv_head_l * y->head_dim;
        d.att = m->a.att + s * (size_t)m->B * y->n_head_l * m->T * m->T;
        d.ld = T;
        d.pos0 = 0;
        d.row = 0;
    }
    (void)B;
    return d;
}

/* Per-layer activation slices: layer l's own when training; otherwise one
 * slot reused by every layer (recomputation refills it before each layer's
 * backward). The residual stream: every layer's when training, else two
 * slots, ping-pong. */
#define LAYER(p, l, per) ((p) + (size_t)(m->training == ST_MODEL_TRAIN ? (l) : 0) * (per))
#define XSLOT(l) ((size_t)(m->training ? (l) : (l) % 2))

/* The adapters' share of a projection (see src/model/adapter.h). */
static st_err adapt_forward(st_model *m, int l, st_target t, float *out, const float *inp, int64_t N)
{
    if (!m->adapter) return ST_OK;
    return m->adapter->forward(m->adapter->ctx, m->tp, l, t, out, inp, N, m->training);
}

static st_err adapt_backward(st_model *m, int l, st_target t, float *dinp, const float *dout,
                             const float *inp, int64_t N)
{
    if (!m->adapter) return ST_OK;
    return m->adapter->backward(m->adapter->ctx, m->tp, l, t, dinp, dout, inp, N);
}

/* Projection t of layer l as the tp layer it is (mpi/tp.h): q, k, v, gate and
 * up split by output rows (column-parallel), o and down by input columns
 * (row-parallel). The gradients go where backward computes them (NULL:
 * frozen). The tensor-parallel split of every block is decided here. */
static st_tp_linear proj(const st_model *m, int l, st_target t)
{
    const st_layout *y = &m->lay;
    const st_layer_ptrs *w = &m->w.layer[l], *g = &m->gt.layer[l];
    const int64_t C = y->cfg.d_model, qd = (int64_t)y->n_head_l * y->head_dim,
                  kvd = (int64_t)y->n_kv_head_l * y->head_dim, Fl = y->d_ff_l;
    st_tp_linear L = {0};
    switch (t) {
    case ST_T_Q: L = (st_tp_linear){ST_TP_COLUMN, w->wq, NULL, w->bq, g->wq, g->bq, C, qd}; break;
    case ST_T_K: L = (st_tp_linear){ST_TP_COLUMN, w->wk, NULL, w->bk, g->wk, g->bk, C, kvd}; break;
    case ST_T_V: L = (st_tp_linear){ST_TP_COLUMN, w->wv, NULL, w->bv, g->wv, g->bv, C, kvd}; break;
    case ST_T_O: L = (st_tp_linear){ST_TP_ROW, w->wo, NULL, w->bo, g->wo, g->bo, qd, C}; break;
    case ST_T_GATE: L = (st_tp_linear){ST_TP_COLUMN, w->wgate, NULL, NULL, g->wgate, NULL, C, Fl}; break;
    case ST_T_UP: L = (st_tp_linear){ST_TP_COLUMN, w->wup, NULL, w->bup, g->wup, g->bup, C, Fl}; break;
    case ST_T_DOWN: L = (st_tp_linear){ST_TP_ROW, w->wdown, NULL, w->bdown, g->wdown, g->bdown, Fl, C}; break;
    case ST_T_COUNT: break;
    }
    L.w16 = w16_of(m, L.w);
    return L;
}

/* The LM head: the embedding's vocabulary split, column-parallel. */
static st_tp_linear lm_head(const st_model *m)
{
    const st_layout *y = &m->lay;
    return (st_tp_linear){ST_TP_COLUMN, m->w.lm_head, w16_of(m, m->w.lm_head), NULL, m->gt.lm_head, NULL,
                          y->cfg.d_model, y->vocab_l};
}

/* out (N, out) = the projection of inp plus its adapters' share */
static st_err project(st_model *m, int l, st_target t, float *out, const float *inp, int64_t N)
{
    const st_tp_linear L = proj(m, l, t);
    ST_TRY(st_tp_linear_forward(m->tp, &L, out, inp, N));
    return adapt_forward(m, l, t, out, inp, N);
}

/* Backward of project: gradients of the projection and its adapters; dinp
 * (N, in) set, or added to when accumulate. */
static st_err project_backward(st_model *m, int l, st_target t, float *dinp, const float *dout,
                               const float *inp, int64_t N, int accumulate)
{
    const st_tp_linear L = proj(m, l, t);
    ST_TRY(st_tp_linear_backward(&L, dinp, dout, inp, N, accumulate));
    return adapt_backward(m, l, t, dinp, dout, inp, N);
}

/* Attention block: x2 (N,C) = x + o_proj(attention(q,k,v of norm1(x))). */
static st_err attn_forward(st_model *m, int l, int B, int T, const st_kvcache *c)
{
    const st_layout *y = &m->lay;
    const st_layer_ptrs *w = &m->w.layer[l];
    st_acts *a = &m->a;
    const int64_t Nmax = (int64_t)m->B * m->T, N = (int64_t)B * T, C = y->cfg.d_model;
    const int hd = y->head_dim, Hl = y->n_head_l, KVl = y->n_kv_head_l;
    const int64_t qd = (int64_t)Hl * hd, kvd = (int64_t)KVl * hd;
    float *x = a->x + XSLOT(l) * Nmax * C, *ln1 = LAYER(a->ln1, l, Nmax * C);
    float *qh = LAYER(a->qh, l, Nmax * qd), *o = LAYER(a->o, l, Nmax * qd);
    float *x2 = LAYER(a->x2, l, Nmax * C);
    kv_dest kv = kv_for(m, c, l, B, T);

    ST_TRY(norm_forward(m, ln1, LAYER(a->ln1_s1, l, Nmax), LAYER(a->ln1_s2, l, Nmax), x, w->ln1_w,
                        w->ln1_b, N));
    /* q, k, v: column-parallel, this rank's heads only */
    ST_TRY(project(m, l, ST_T_Q, a->qt, ln1, N));
    ST_TRY(project(m, l, ST_T_K, a->kt, ln1, N));
    ST_TRY(project(m, l, ST_T_V, a->vt, ln1, N));
    ST_TRY(to_heads(qh, a->qt, B, T, Hl, T, 0, hd));
    if (!c) {
        ST_TRY(to_heads(kv.k, a->kt, B, T, KVl, kv.ld, 0, hd));
        ST_TRY(to_heads(kv.v, a->vt, B, T, KVl, kv.ld, 0, hd));
        if (!GPT2(m)) {
            st_rope_apply(qh, m->rope_cos, m->rope_sin, B, Hl, T, T, 0, 0, hd, 0);
            st_rope_apply(kv.k, m->rope_cos, m->rope_sin, B, KVl, T, T, 0, 0, hd, 0);
        }
        ST_TRY(st_attention_forward(a->oh, kv.att, qh, kv.k, kv.v, B, Hl, KVl, T, T, T, hd, 0));
    } else {
        /* each row at its own position in its own stretch of the cache */
        for (int b = 0; b < B; b++) {
            const int p = c->lens[b];
            float *k = kv.k + b * kv.row, *v = kv.v + b * kv.row, *q = qh + (size_t)b * qd * T;
            ST_TRY(to_heads(k, a->kt + (size_t)b * T * kvd, 1, T, KVl, kv.ld, p, hd));
            ST_TRY(to_heads(v, a->vt + (size_t)b * T * kvd, 1, T, KVl, kv.ld, p, hd));
            if (!GPT2(m)) {
                st_rope_apply(q, m->rope_cos, m->rope_sin, 1, Hl, T, T, 0, p, hd, 0);
                st_rope_apply(k, m->rope_cos, m->rope_sin, 1, KVl, T, kv.ld, p, p, hd, 0);
            }
            ST_TRY(st_attention_forward(a->oh + (size_t)b * qd * T, kv.att, q, k, v, 1, Hl, KVl, T, p + T,
                                        kv.ld, hd, 1));
        }
    }
    ST_TRY(from_heads(o, a->oh, B, T, Hl, hd));
    /* o_proj: row-parallel, summed over tp */
    ST_TRY(project(m, l, ST_T_O, a->dnorm, o, N));
    return st_add(x2, x, a->dnorm, N * C);
}

/* MLP block: x_next (N,C) = x2 + down(act(up(norm2(x2)))). The hidden width
 * is split over tp: gate/up column-parallel, down row-parallel. */
static st_err mlp_forward(st_model *m, int l, int B, int T)
{
    const st_layout *y = &m->lay;
    const st_layer_ptrs *w = &m->w.layer[l];
    st_acts *a = &m->a;
    const int64_t Nmax = (int64_t)m->B * m->T, N = (int64_t)B * T, C = y->cfg.d_model, Fl = y->d_ff_l;
    float *x2 = LAYER(a->x2, l, Nmax * C), *ln2 = LAYER(a->ln2, l, Nmax * C);
    float *up = LAYER(a->up, l, Nmax * Fl), *mh = LAYER(a->mh, l, Nmax * Fl);
    float *xn = a->x + XSLOT(l + 1) * Nmax * C;

    ST_TRY(norm_forward(m, ln2, LAYER(a->ln2_s1, l, Nmax), LAYER(a->ln2_s2, l, Nmax), x2, w->ln2_w,
                        w->ln2_b, N));
    ST_TRY(project(m, l, ST_T_UP, up, ln2, N));
    if (GPT2(m)) {
        ST_TRY(st_gelu_forward(mh, up, N * Fl));
    } else {
        float *gate = LAYER(a->gate, l, Nmax * Fl), *act = LAYER(a->act, l, Nmax * Fl);
        ST_TRY(project(m, l, ST_T_GATE, gate, ln2, N));
        ST_TRY(st_swiglu_forward(mh, act, gate, up, N * Fl));
    }
    ST_TRY(project(m, l, ST_T_DOWN, a->dnorm, mh, N));
    return st_add(xn, x2, a->dnorm, N * C);
}

/* x[0] (N,C) = token embeddings (+ positions pos0.. for gpt2) */
/* x[0] (N,C) = token embeddings (+ positions for gpt2: row b starts at
 * pos0[b], or 0 when pos0 is NULL) */
static st_err embed_forward(st_model *m, const int32_t *tokens, int B, int T, const int *pos0)
{
    const st_layout *y = &m->lay;
    const int64_t N = (int64_t)B * T, C = y->cfg.d_model;
    float *x = m->a.x;
    for (int64_t i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= y->cfg.vocab_size)
            ST_FAIL(ST_ERR_ARG, "token id %d at position %lld is outside the vocabulary [0, %d)",
                    tokens[i], (long long)i, y->cfg.vocab_size);
    ST_TRY(st_tp_embed_forward(m->tp, x, tokens, m->w.wte, N, C, y->vocab_start, y->vocab_l));
    if (GPT2(m))
        for (int64_t i = 0; i < N; i++) {
            const float *p = m->w.wpe + (size_t)((pos0 ? pos0[i / T] : 0) + i % T) * C;
            for (int64_t c = 0; c < C; c++) x[i * C + c] += p[c];
        }
    return ST_OK;
}

/* ---- forward (with the loss) and backward -------------------------------- */

st_err st_model_forward_body(st_model *m, const int32_t *tokens, int B, int T)
{
    const st_layout *y = &m->lay;
    st_acts *a = &m->a;
    if (B > m->B || T > m->T || B < 1 || T < 1)
        ST_FAIL(ST_ERR_ARG, "micro-batch %d x %d does not fit the model's buffers (%d x %d)", B, T,
                m->B, m->T);
    const int L = y->cfg.n_layer;
    const int64_t Nmax = (int64_t)m->B * m->T, N = (int64_t)B * T, C = y->cfg.d_model;
    ST_TRY(embed_forward(m, tokens, B, T, NULL));
    for (int l = 0; l < L; l++) {
        ST_TRY(attn_forward(m, l, B, T, NULL));
        ST_TRY(mlp_forward(m, l, B, T));
    }
    ST_TRY(norm_forward(m, a->lnf, a->lnf_s1, a->lnf_s2, a->x + XSLOT(L) * Nmax * C, m->w.lnf_w,
                        m->w.lnf_b, N));
    m->last_B = B;
    m->last_T = T;
    m->head_is_lm = 0;
    return ST_OK;
}

st_err st_model_forward(st_model *m, const int32_t *tokens, const int32_t *targets, const float *mask,
                        int B, int T, float scale, double *loss_sum)
{
    const st_layout *y = &m->lay;
    const int64_t N = (int64_t)B * T;
    for (int64_t i = 0; i < N && B <= m->B && T <= m->T; i++)
        if (targets[i] < 0 || targets[i] >= y->cfg.vocab_size)
            ST_FAIL(ST_ERR_ARG, "target id %d at position %lld is outside the vocabulary [0, %d)",
                    targets[i], (long long)i, y->cfg.vocab_size);
    ST_TRY(st_model_forward_body(m, tokens, B, T));
    return st_model_reweight(m, targets, mask, scale, loss_sum);
}

st_err st_model_reweight(st_model *m, const int32_t *targets, const float *mask, float scale, double *loss_sum)
{
    const st_layout *y = &m->lay;
    st_acts *a = &m->a;
    const int64_t N = (int64_t)m->last_B * m->last_T;
    if (!N) ST_FAIL(ST_ERR_INTERNAL, "st_model_reweight called before a forward");
    /* lm head: column-parallel over the vocabulary */
    const st_tp_linear head = lm_head(m);
    ST_TRY(st_tp_linear_forward(m->tp, &head, a->logits, a->lnf, N));
    /* the loss and its gradient w.r.t. the logits, in place */
    ST_TRY(st_tp_cross_entropy(m->tp, loss_sum, a->logits, a->logits, targets, mask, scale, N,
                               y->vocab_start, y->vocab_l, y->cfg.vocab_size, a->rowbuf,
                               m->entropy));
    m->head_is_lm = 1;
    return ST_OK;
}

void st_model_position_losses(const st_model *m, float *out)
{
    /* st_tp_cross_entropy leaves per row: max, sum of exp(l - max), target logit */
    const int64_t N = (int64_t)m->last_B * m->last_T;
    const float *rmax = m->a.rowbuf, *rsum = rmax + N, *rtgt = rmax + 2 * N;
    for (int64_t i = 0; i < N; i++) out[i] = (float)(log((double)rsum[i]) + rmax[i] - rtgt[i]);
}

static st_err mlp_backward(st_model *m, int l)
{
    const st_layout *y = &m->lay;
    const st_layer_ptrs *w = &m->w.layer[l];
    st_layer_ptrs *g = &m->gt.layer[l];
    st_acts *a = &m->a;
    const int B = m->last_B, T = m->last_T;
    const int64_t Nmax = (int64_t)m->B * m->T, N = (int64_t)B * T, C = y->cfg.d_model, Fl = y->d_ff_l;
    float *x2 = LAYER(a->x2, l, Nmax * C), *ln2 = LAYER(a->ln2, l, Nmax * C);
    float *up = LAYER(a->up, l, Nmax * Fl), *mh = LAYER(a->mh, l, Nmax * Fl);

    /* down: row-parallel; dres is replicated so no communication */
    ST_TRY(project_backward(m, l, ST_T_DOWN, a->dmh, a->dres, mh, N, 0));
    if (GPT2(m)) {
        ST_TRY(st_gelu_backward(a->dup, a->dmh, up, N * Fl));
        ST_TRY(project_backward(m, l, ST_T_UP, a->dln, a->dup, ln2, N, 0));
    } else {
        float *gate = LAYER(a->gate, l, Nmax * Fl), *act = LAYER(a->act, l, Nmax * Fl);
        ST_TRY(st_swiglu_backward(a->dgate, a->dup, a->dmh, act, gate, up, N * Fl));
        ST_TRY(project_backward(m, l, ST_T_GATE, a->dln, a->dgate, ln2, N, 0));
        ST_TRY(project_backward(m, l, ST_T_UP, a->dln, a->dup, ln2, N, 1));
    }
    /* partial input gradients of the column-parallel layers, summed over tp */
    ST_TRY(st_tp_allreduce(m->tp, a->dln, N * C));
    ST_TRY(norm_backward(m, a->dnorm, g->ln2_w, g->ln2_b, a->dln, x2, LAYER(a->ln2_s1, l, Nmax),
                         LAYER(a->ln2_s2, l, Nmax), w->ln2_w, N));
    return st_add(a->dres, a->dres, a->dnorm, N * C);
}

static st_err attn_backward(st_model *m, int l)
{
    const st_layout *y = &m->lay;
    const st_layer_ptrs *w = &m->w.layer[l];
    st_layer_ptrs *g = &m->gt.layer[l];
    st_acts *a = &m->a;
    const int B = m->last_B, T = m->last_T;
    const int64_t Nmax = (int64_t)m->B * m->T, N = (int64_t)B * T, C = y->cfg.d_model;
    const int hd = y->head_dim, Hl = y->n_head_l, KVl = y->n_kv_head_l;
    const int64_t qd = (int64_t)Hl * hd;
    float *x = a->x + XSLOT(l) * Nmax * C, *ln1 = LAYER(a->ln1, l, Nmax * C);
    float *qh = LAYER(a->qh, l, Nmax * qd), *o = LAYER(a->o, l, Nmax * qd);
    kv_dest kv = kv_for(m, NULL, l, B, T);

    /* o_proj: row-parallel; d(o) lands token-major in qt, then head-major in oh */
    ST_TRY(project_backward(m, l, ST_T_O, a->qt, a->dres, o, N, 0));
    ST_TRY(to_heads(a->oh, a->qt, B, T, Hl, T, 0, hd));
    ST_TRY(st_attention_backward(a->dqh, a->dkh, a->dvh, a->datt, a->oh, kv.att, qh, kv.k, kv.v, B,
                                 Hl, KVl, T, hd));
    if (!GPT2(m)) {
        st_rope_apply(a->dqh, m->rope_cos, m->rope_sin, B, Hl, T, T, 0, 0, hd, 1);
        st_rope_apply(a->dkh, m->rope_cos, m->rope_sin, B, KVl, T, T, 0, 0, hd, 1);
    }
    ST_TRY(from_heads(a->qt, a->dqh, B, T, Hl, hd));
    ST_TRY(from_heads(a->kt, a->dkh, B, T, KVl, hd));
    ST_TRY(from_heads(a->vt, a->dvh, B, T, KVl, hd));
    ST_TRY(project_backward(m, l, ST_T_Q, a->dln, a->qt, ln1, N, 0));
    ST_TRY(project_backward(m, l, ST_T_K, a->dln, a->kt, ln1, N, 1));
    ST_TRY(project_backward(m, l, ST_T_V, a->dln, a->vt, ln1, N, 1));
    ST_TRY(st_tp_allreduce(m->tp, a->dln, N * C));
    ST_TRY(norm_backward(m, a->dnorm, g->ln1_w, g->ln1_b, a->dln, x, LAYER(a->ln1_s1, l, Nmax),
                         LAYER(a->ln1_s2, l, Nmax), w->ln1_w, N));
    return st_add(a->dres, a->dres, a->dnorm, N * C);
}

static st_err head_backward_tail(st_model *m, int64_t N, int partial);
static st_err body_backward(st_model *m, const int32_t *tokens);

st_err st_model_backward(st_model *m, const int32_t *tokens)
{
    st_acts *a = &m->a;
    const int B = m->last_B, T = m->last_T;
    if (!B) ST_FAIL(ST_ERR_INTERNAL, "st_model_backward called before st_model_forward");
    if (!m->training) ST_FAIL(ST_ERR_INTERNAL, "backward on a model created for inference (forward only)");
    const int64_t N = (int64_t)B * T;

    /* lm head (vocab-split): partial d(lnf) summed over tp */
    const st_tp_linear head = lm_head(m);
    ST_TRY(st_tp_linear_backward(&head, a->dln, a->logits, a->lnf, N, 0));
    if (!m->head_is_lm) ST_FAIL(ST_ERR_INTERNAL, "st_model_backward after a forward without the LM head");
    ST_TRY(head_backward_tail(m, N, 1));
    return body_backward(m, tokens);
}

st_err st_model_backward_hidden(st_model *m, const int32_t *tokens, const float *dhidden)
{
    const int64_t N = (int64_t)m->last_B * m->last_T;
    if (!N) ST_FAIL(ST_ERR_INTERNAL, "st_model_backward_hidden called before st_model_forward_body");
    if (!m->training) ST_FAIL(ST_ERR_INTERNAL, "backward on a model created for inference (forward only)");
    memcpy(m->a.dln, dhidden, (size_t)N * m->lay.cfg.d_model * sizeof(float));
    ST_TRY(head_backward_tail(m, N, 0));
    return body_backward(m, tokens);
}

/* From d(final norm output) in a->dln (partial over tp when partial) to
 * d(x[L]) in a->dres. */
static st_err head_backward_tail(st_model *m, int64_t N, int partial)
{
    const st_layout *y = &m->lay;
    st_acts *a = &m->a;
    const int L = y->cfg.n_layer;
    const int64_t Nmax = (int64_t)m->B * m->T, C = y->cfg.d_model;
    if (partial) ST_TRY(st_tp_allreduce(m->tp, a->dln, N * C));
    return norm_backward(m, a->dres, m->gt.lnf_w, m->gt.lnf_b, a->dln, a->x + XSLOT(L) * Nmax * C,
                         a->lnf_s1, a->lnf_s2, m->w.lnf_w, N);
}

/* From d(x[L]) in a->dres down through the layers to the embeddings. */
static st_err body_backward(st_model *m, const int32_t *tokens)
{
    const st_layout *y = &m->lay;
    st_acts *a = &m->a;
    const int B = m->last_B, T = m->last_T, L = y->cfg.n_layer;
    const int64_t N = (int64_t)B * T, C = y->cfg.d_model;
    if (m->grad_ready) /* final norm and untied head are done (the tied one is not) */
        ST_TRY(m->grad_ready(m->grad_ready_ctx, y->layer_begin[L], y->numel));
    for (int l = L - 1; l >= 0; l--) {
        if (l >= m->backward_floor) {
            /* recomputation: layer l's activations again, from its saved input
             * (the last layer's are still there from the forward pass) */
            if (m->training == ST_MODEL_TRAIN_RECOMPUTE && l != L - 1) {
                ST_TRY(attn_forward(m, l, B, T, NULL));
                ST_TRY(mlp_forward(m, l, B, T));
            }
            ST_TRY(mlp_backward(m, l));
            ST_TRY(attn_backward(m, l));
        }
        if (m->grad_ready)
            ST_TRY(m->grad_ready(m->grad_ready_ctx, y->layer_begin[l], y->layer_begin[l + 1]));
    }
    if (m->backward_floor > 0) return ST_OK;
    if (m->gt.wte) st_tp_embed_backward(m->gt.wte, a->dres, tokens, N, C, y->vocab_start, y->vocab_l);
    if (GPT2(m) && m->gt.wpe)
        for (int64_t i = 0; i < N; i++) {
            float *p = m->gt.wpe + (size_t)(i % T) * C;
            const float *d = a->dres + i * C;
            for (int64_t c = 0; c < C; c++) p[c] += d[c];
        }
    return ST_OK;
}

/* ---- inference ------------------------------------------------------------ */

st_err st_kvcache_create(st_kvcache *c, const st_model *m, int B)
{
    const st_layout *y = &m->lay;
    memset(c, 0, sizeof *c);
    if ((int64_t)B > (int64_t)m->B * m->T)
        ST_FAIL(ST_ERR_ARG, "generation batch %d exceeds the model's %d x %d positions", B, m->B, m->T);
    c->B = B;
    c->max_seq = y->cfg.max_seq;
    c->owner = 1;
    size_t per = (size_t)y->n_kv_head_l * c->max_seq * y->head_dim * y->cfg.n_layer;
    ST_ALLOC(c->lens, B, "cache lengths");
    ST_ALLOC(c->k, per * B, "key cache");
    ST_ALLOC(c->v, per * B, "value cache");
    ST_ALLOC(c->att, (size_t)y->n_head_l * m->T * c->max_seq, "attention scratch");
    ST_ALLOC(c->last, (size_t)B * y->cfg.d_model, "last hidden states");
    return ST_OK;
}

st_kvcache st_kvcache_row(const st_kvcache *c, const st_model *m, int b)
{
    const st_layout *y = &m->lay;
    size_t per = (size_t)y->n_kv_head_l * c->max_seq * y->head_dim * y->cfg.n_layer;
    st_kvcache r = *c;
    r.B = 1;
    r.owner = 0;
    r.lens = c->lens + b;
    r.k = c->k + per * b;
    r.v = c->v + per * b;
    r.last = c->last + (size_t)b * y->cfg.d_model;
    return r;
}

void st_kvcache_copy_row(st_kvcache *c, const st_model *m, int dst, int src)
{
    const st_layout *y = &m->lay;
    const size_t hd = (size_t)y->head_dim, run = (size_t)c->lens[src] * hd, stride = (size_t)c->max_seq * hd;
    const size_t per = (size_t)y->n_kv_head_l * stride * y->cfg.n_layer;
    /* (L, KVl) runs of lens[src] positions */
    for (size_t h = 0; h < (size_t)y->cfg.n_layer * y->n_kv_head_l; h++) {
        memcpy(c->k + per * dst + h * stride, c->k + per * src + h * stride, run * sizeof(float));
        memcpy(c->v + per * dst + h * stride, c->v + per * src + h * stride, run * sizeof(float));
    }
    memcpy(c->last + (size_t)dst * y->cfg.d_model, c->last + (size_t)src * y->cfg.d_model,
           (size_t)y->cfg.d_model * sizeof(float));
    c->lens[dst] = c->lens[src];
}

void st_kvcache_free(st_kvcache *c)
{
    if (c->owner) {
        free(c->lens);
        free(c->k);
        free(c->v);
        free(c->att);
        free(c->last);
    }
    memset(c, 0, sizeof *c);
}

st_err st_model_forward_cached(st_model *m, st_kvcache *c, const int32_t *tokens, int Tq,
                               float *logits_local)
{
    const st_layout *y = &m->lay;
    st_acts *a = &m->a;
    const int B = c->B, L = y->cfg.n_layer;
    if (Tq < 1 || Tq > m->T) ST_FAIL(ST_ERR_ARG, "%d new tokens: expected 1..%d", Tq, m->T);
    if ((int64_t)B * Tq > (int64_t)m->B * m->T)
        ST_FAIL(ST_ERR_ARG, "%d rows x %d new tokens exceed the model's %d x %d positions", B, Tq, m->B, m->T);
    for (int b = 0; b < B; b++)
        if (c->lens[b] + Tq > c->max_seq)
            ST_FAIL(ST_ERR_ARG, "row %d: a sequence of %d tokens exceeds max_seq %d", b, c->lens[b] + Tq,
                    c->max_seq);
    const int64_t Nmax = (int64_t)m->B * m->T, N = (int64_t)B * Tq, C = y->cfg.d_model;
    ST_TRY(embed_forward(m, tokens, B, Tq, c->lens));
    for (int l = 0; l < L; l++) {
        ST_TRY(attn_forward(m, l, B, Tq, c));
        ST_TRY(mlp_forward(m, l, B, Tq));
    }
    /* only each row's last position feeds the head */
    const float *xl = a->x + XSLOT(L) * Nmax * C;
    for (int b = 0; b < B; b++)
        memcpy(c->last + (size_t)b * C, xl + ((size_t)b * Tq + Tq - 1) * C, (size_t)C * sizeof(float));
    ST_TRY(norm_forward(m, a->lnf, a->lnf_s1, a->lnf_s2, c->last, m->w.lnf_w, m->w.lnf_b, B));
    const st_tp_linear head = lm_head(m);
    ST_TRY(st_tp_linear_forward(m->tp, &head, logits_local, a->lnf, B));
    for (int b = 0; b < B; b++) c->lens[b] += Tq;
    (void)N;
    return ST_OK;
}
