/* lora.c: low-rank adapters, their tensor table, forward, backward and merge.
 *
 * Per adapted projection ("site": one layer and target), with x its local
 * input (N, IN_l), y its local output (N, OUT_l), s = alpha / rank and
 * xd = x * mask / (1 - p) (xd = x without dropout):
 *   forward   u = xd A^T (N, r), summed over tp for row targets;  y += s u B^T
 *   backward  g = s dy B (N, r), summed over tp for column targets;
 *             dB += s dy^T u;  dA += g^T xd;  dx += (g A) * mask / (1 - p)
 * For column targets dx is the rank's partial input gradient that the model
 * sums over tp afterwards, so only tp rank 0 adds the adapter's share.
 */
#include "model/lora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/rng.h"
#include "kernels/kernels.h"
#include "mpi/tp.h"

/* The targets: short name, module path in the Hugging Face names, split. */
static const struct { const char *name, *module; int row; } TARGET[ST_T_COUNT] = {
    [ST_T_Q] = {"q", "self_attn.q_proj", 0},   [ST_T_K] = {"k", "self_attn.k_proj", 0},
    [ST_T_V] = {"v", "self_attn.v_proj", 0},   [ST_T_O] = {"o", "self_attn.o_proj", 1},
    [ST_T_GATE] = {"gate", "mlp.gate_proj", 0}, [ST_T_UP] = {"up", "mlp.up_proj", 0},
    [ST_T_DOWN] = {"down", "mlp.down_proj", 1},
};

#define ALL_TARGETS ((1u << ST_T_COUNT) - 1)
#define ATTN_TARGETS ((1u << ST_T_Q) | (1u << ST_T_K) | (1u << ST_T_V) | (1u << ST_T_O))

typedef struct {
    int a, b;            /* indices of lora_A and lora_B in the tensor table; a < 0: not adapted */
    int row;             /* row-parallel target */
    int64_t in_l, out_l; /* local widths of the projection's input and output */
    int64_t in_g, in0;   /* global input width, first global input column held here (dropout index) */
    float *u;            /* (max_tokens, rank) saved by the training forward */
} lora_site;

struct st_lora {
    st_lora_config cfg;
    unsigned targets;    /* resolved */
    float scale;
    st_layout lay;
    float *params, *grads;        /* lay.numel each */
    lora_site *site;              /* (n_layer, ST_T_COUNT) */
    float *u_saved;               /* (sites, max_tokens, rank) */
    float *u_tmp, *g;             /* (max_tokens, rank) */
    float *xd, *tmp;              /* (max_tokens, max_in) dropout scratch */
    int64_t max_tokens;
    uint64_t seed;
    int64_t step, row0;
    int dropout_on;
    st_adapter hook;
};

/* ---- target names ---------------------------------------------------------- */

static unsigned target_bit(const char *s, size_t n)
{
    for (int t = 0; t < ST_T_COUNT; t++) {
        size_t k = strlen(TARGET[t].name);
        if (n == k && !strncasecmp(s, TARGET[t].name, n)) return 1u << t;
        /* PEFT's module names: q_proj ... down_proj */
        if (n == k + 5 && !strncasecmp(s, TARGET[t].name, k) && !strncasecmp(s + k, "_proj", 5))
            return 1u << t;
    }
    if (n == 3 && !strncasecmp(s, "all", 3))
        return (ALL_TARGETS & ~(1u << ST_T_GATE)) | ST_LORA_IF_PRESENT(ST_T_GATE);
    if (n == 4 && !strncasecmp(s, "attn", 4)) return ATTN_TARGETS;
    if (n == 3 && !strncasecmp(s, "mlp", 3))
        return (1u << ST_T_UP) | (1u << ST_T_DOWN) | ST_LORA_IF_PRESENT(ST_T_GATE);
    return 0;
}

st_err st_lora_parse_targets(const char *list, unsigned *mask)
{
    static const char *valid = "q, k, v, o, gate, up, down (or q_proj ... down_proj), "
                               "and the groups all, attn (q,k,v,o), mlp (gate,up,down)";
    *mask = 0;
    if (!list) ST_FAIL(ST_ERR_ARG, "no LoRA targets given: expected a comma-separated list of %s", valid);
    const char *p = list;
    for (;;) {
        while (*p == ' ' || *p == '\t') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        size_t n = (size_t)(e - p);
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
        if (!n) ST_FAIL(ST_ERR_ARG, "LoRA targets '%.200s': empty name; expected a comma-separated list of %s",
                        list, valid);
        unsigned bit = target_bit(p, n);
        if (!bit) ST_FAIL(ST_ERR_ARG, "LoRA target '%.*s' is unknown; valid targets are %s",
                          (int)(n > 64 ? 64 : n), p, valid);
        *mask |= bit;
        if (!*e) break;
        p = e + 1;
    }
    return ST_OK;
}

/* Which targets cfg's family has, and the config's mask with IF_PRESENT bits resolved. */
static st_err resolve_targets(const st_config *cfg, unsigned mask, unsigned *out)
{
    const unsigned has = cfg->family == ST_FAMILY_GPT2 ? ALL_TARGETS & ~(1u << ST_T_GATE) : ALL_TARGETS;
    const unsigned named = mask & ALL_TARGETS, soft = (mask >> 8) & ALL_TARGETS;
    if (mask & ~(ALL_TARGETS | (ALL_TARGETS << 8)))
        ST_FAIL(ST_ERR_ARG, "LoRA target mask 0x%x has bits that name no target", mask);
    for (int t = 0; t < ST_T_COUNT; t++)
        if ((named >> t) & 1 && !((has >> t) & 1))
            ST_FAIL(ST_ERR_ARG, "LoRA target '%s': %s models have no %s projection "
                    "(targets for this family: q, k, v, o, up, down)",
                    TARGET[t].name, st_family_name(cfg->family), TARGET[t].module);
    *out = named | (soft & has);
    if (!*out) ST_FAIL(ST_ERR_ARG, "no LoRA targets: give at least one of q, k, v, o, gate, up, down");
    return ST_OK;
}

/* ---- the tensor table ----------------------------------------------------- */

static st_err check_config(const st_lora_config *c, int64_t max_tokens)
{
    if (c->rank < 1 || c->rank > 65536)
        ST_FAIL(ST_ERR_ARG, "LoRA rank %d: expected 1..65536 (typical: 4 to 64)", c->rank);
    if (!(c->alpha > 0.0f) || !isfinite(c->alpha))
        ST_FAIL(ST_ERR_ARG, "LoRA alpha %g: expected a finite number > 0 (the scale is alpha / rank)",
                (double)c->alpha);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        ST_FAIL(ST_ERR_ARG, "LoRA dropout %g: expected a probability in [0, 1)", (double)c->dropout);
    if (max_tokens < 1 || max_tokens > ((int64_t)1 << 40))
        ST_FAIL(ST_ERR_ARG, "LoRA buffers for %lld tokens: expected 1 .. 2^40", (long long)max_tokens);
    return ST_OK;
}

/* Append lora_A (rank, IN) and lora_B (OUT, rank) of base weight w to the table. */
static void add_pair(st_layout *y, size_t *cursor, const st_tensor *w, const char *module, int layer,
                     int rank, int row)
{
    for (int k = 0; k < 2; k++) {
        st_tensor *t = &y->tensors[y->n_tensors++];
        memset(t, 0, sizeof *t);
        snprintf(t->name, sizeof t->name, "model.layers.%d.%s.lora_%c.weight", layer, module, k ? 'B' : 'A');
        t->ndim = 2;
        t->layer = layer;
        t->decay = 0;
        if (k == 0) { /* A (rank, IN): follows W's input split */
            t->shape[0] = t->lshape[0] = rank;
            t->shape[1] = w->shape[1];
            t->lshape[1] = w->lshape[1];
            t->start[1] = w->start[1];
            t->split = row ? ST_SPLIT_ROW : ST_SPLIT_NONE;
        } else {      /* B (OUT, rank): follows W's output split */
            t->shape[0] = w->shape[0];
            t->lshape[0] = w->lshape[0];
            t->start[0] = w->start[0];
            t->shape[1] = t->lshape[1] = rank;
            t->split = row ? ST_SPLIT_NONE : ST_SPLIT_COL;
        }
        t->offset = *cursor;
        t->numel = (size_t)t->lshape[0] * (size_t)t->lshape[1];
        *cursor += t->numel;
    }
}

static st_err build_layout(st_lora *l, const st_layout *base)
{
    st_layout *y = &l->lay;
    const int L = base->cfg.n_layer;
    int per_layer = 0;
    for (int t = 0; t < ST_T_COUNT; t++) per_layer += (l->targets >> t) & 1;
    y->cfg = base->cfg;
    y->tp_size = base->tp_size;
    y->tp_rank = base->tp_rank;
    y->head_dim = base->head_dim;
    y->n_head_l = base->n_head_l;
    y->n_kv_head_l = base->n_kv_head_l;
    y->d_ff_l = base->d_ff_l;
    y->vocab_l = base->vocab_l;
    y->vocab_start = base->vocab_start;
    ST_ALLOC(y->tensors, (size_t)L * per_layer * 2, "LoRA tensor table");
    ST_ALLOC(y->layer_begin, L + 1, "LoRA layer offsets");
    ST_ALLOC(l->site, (size_t)L * ST_T_COUNT, "LoRA sites");
    size_t cursor = 0;
    char name[128];
    for (int layer = 0; layer < L; layer++) {
        y->layer_begin[layer] = cursor;
        for (int t = 0; t < ST_T_COUNT; t++) {
            lora_site *s = &l->site[layer * ST_T_COUNT + t];
            s->a = s->b = -1;
            if (!((l->targets >> t) & 1)) continue;
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, TARGET[t].module);
            const st_tensor *w = st_layout_find(base, name);
            if (!w) ST_FAIL(ST_ERR_ARG, "LoRA target %s: the base model has no tensor %s", TARGET[t].name, name);
            s->a = y->n_tensors;
            s->b = y->n_tensors + 1;
            s->row = TARGET[t].row;
            s->in_l = w->lshape[1];
            s->out_l = w->lshape[0];
            s->in_g = w->shape[1];
            s->in0 = w->start[1];
            add_pair(y, &cursor, w, TARGET[t].module, layer, l->cfg.rank, s->row);
        }
    }
    y->layer_begin[L] = cursor;
    y->numel = cursor;
    return ST_OK;
}

/* A ~ U(-1/sqrt(IN), 1/sqrt(IN)) (PEFT: kaiming_uniform_ with a = sqrt(5)),
 * each element from (seed, name, global index); B = 0. */
static void init_params(st_lora *l)
{
    const st_layout *y = &l->lay;
    memset(l->params, 0, y->numel * sizeof(float));
    for (int i = 0; i < y->n_tensors; i++) {
        const st_tensor *t = &y->tensors[i];
        if (strstr(t->name, "lora_B")) continue;
        const double bound = 1.0 / sqrt((double)t->shape[1]);
        const uint64_t key = l->seed ^ st_hash_str(t->name);
        float *w = l->params + t->offset;
        for (int64_t r = 0; r < t->lshape[0]; r++)
            for (int64_t c = 0; c < t->lshape[1]; c++) {
                uint64_t g = (uint64_t)((t->start[0] + r) * t->shape[1] + t->start[1] + c);
                double u = (double)(st_splitmix64(key ^ st_splitmix64(g)) >> 11) * 0x1.0p-53;
                w[r * t->lshape[1] + c] = (float)(bound * (2.0 * u - 1.0));
            }
    }
}

/* ---- products and dropout ----------------------------------------------- */

/* c (M,Nc) [+]= alpha * op(a) (M,K) @ op(b) (K,Nc); op(a) = a^T when ta (a is
 * stored (K,M)), op(b) = b^T when tb (b is stored (Nc,K)); all row-major. */
static st_err mm(float *c, const float *a, const float *b, int64_t M, int64_t K, int64_t Nc, int ta,
                 int tb, float alpha, int accumulate)
{
    st_matmul_desc d = {.B0 = 1, .B1 = 1, .M = M, .K = K, .N = Nc, .alpha = alpha,
                        .accumulate = accumulate};
    d.sa[2] = ta ? 1 : K, d.sa[3] = ta ? M : 1;
    d.sb[2] = tb ? 1 : Nc, d.sb[3] = tb ? K : 1;
    d.sc[2] = Nc, d.sc[3] = 1;
    return st_matmul(&d, c, a, b, NULL);
}

static int dropping(const st_lora *l) { return l->dropout_on && l->cfg.dropout > 0.0f; }

/* dst (N, in_l) = (or += when accumulate) src * mask / (1 - p). The mask bit
 * of row i, local column j is a hash of (seed, step, layer, target) and of the
 * element's global index (row0 + i) * in_g + in0 + j: the same on every tp rank
 * and every grid, and the same in forward and backward. */
static void dropout_apply(const st_lora *l, const lora_site *s, int layer, st_target t, float *dst,
                          const float *src, int64_t N, int accumulate)
{
    const double p = l->cfg.dropout;
    const float keep = (float)(1.0 / (1.0 - p));
    uint64_t key = st_splitmix64(l->seed ^ 0x4c6f5241dULL);
    key = st_splitmix64(key ^ (uint64_t)l->step);
    key = st_splitmix64(key ^ (uint64_t)(layer * ST_T_COUNT + (int)t));
    const int64_t n = s->in_l;
#pragma omp parallel for
    for (int64_t i = 0; i < N; i++) {
        const uint64_t base = (uint64_t)(l->row0 + i) * (uint64_t)s->in_g + (uint64_t)s->in0;
        for (int64_t j = 0; j < n; j++) {
            double u = (double)(st_splitmix64(key ^ st_splitmix64(base + (uint64_t)j)) >> 11) * 0x1.0p-53;
            float v = u >= p ? src[i * n + j] * keep : 0.0f;
            dst[i * n + j] = accumulate ? dst[i * n + j] + v : v;
        }
    }
}

static const lora_site *site_of(const st_lora *l, int layer, st_target t)
{
    if (layer < 0 || layer >= l->lay.cfg.n_layer || (int)t < 0 || t >= ST_T_COUNT) return NULL;
    const lora_site *s = &l->site[layer * ST_T_COUNT + t];
    return s->a < 0 ? NULL : s;
}

static st_err check_rows(const st_lora *l, int64_t N)
{
    if (N < 0 || N > l->max_tokens)
        ST_FAIL(ST_ERR_ARG, "LoRA: a micro-batch of %lld tokens exceeds the adapters' buffers (%lld); "
                "create them with max_tokens >= batch_size * seq_len", (long long)N, (long long)l->max_tokens);
    return ST_OK;
}

/* ---- the hook --------------------------------------------------------------- */

/* out (N, OUT_l) += s * dropout(inp) A^T B^T; inp (N, IN_l). */
static st_err lora_forward(void *ctx, MPI_Comm tp, int layer, st_target t, float *out, const float *inp,
                           int64_t N, int training)
{
    st_lora *l = ctx;
    const lora_site *s = site_of(l, layer, t);
    if (!s) return ST_OK;
    ST_TRY(check_rows(l, N));
    const int64_t r = l->cfg.rank;
    const float *A = l->params + l->lay.tensors[s->a].offset, *B = l->params + l->lay.tensors[s->b].offset;
    const float *x = inp;
    if (training && dropping(l)) {
        dropout_apply(l, s, layer, t, l->xd, inp, N, 0);
        x = l->xd;
    }
    float *u = training ? s->u : l->u_tmp;
    ST_TRY(mm(u, x, A, N, s->in_l, r, 0, 1, 1.0f, 0));           /* u (N,r) = x A^T */
    if (s->row) ST_TRY(st_tp_allreduce(tp, u, N * r));            /* partial over input columns */
    return mm(out, u, B, N, r, s->out_l, 0, 1, l->scale, 1);      /* out += s u B^T */
}

/* dA, dB += ; dinp (N, IN_l) += the adapter's share of the input gradient;
 * dout (N, OUT_l), inp (N, IN_l) as in the forward. */
static st_err lora_backward(void *ctx, MPI_Comm tp, int layer, st_target t, float *dinp, const float *dout,
                            const float *inp, int64_t N)
{
    st_lora *l = ctx;
    const lora_site *s = site_of(l, layer, t);
    if (!s) return ST_OK;
    ST_TRY(check_rows(l, N));
    const int64_t r = l->cfg.rank;
    const st_tensor *ta = &l->lay.tensors[s->a], *tb = &l->lay.tensors[s->b];
    const float *A = l->params + ta->offset, *B = l->params + tb->offset;
    float *dA = l->grads + ta->offset, *dB = l->grads + tb->offset;
    const float *x = inp;
    if (dropping(l)) { /* the forward's mask, drawn again */
        dropout_apply(l, s, layer, t, l->xd, inp, N, 0);
        x = l->xd;
    }
    ST_TRY(mm(l->g, dout, B, N, s->out_l, r, 0, 0, l->scale, 0)); /* g (N,r) = s dy B */
    if (!s->row) ST_TRY(st_tp_allreduce(tp, l->g, N * r));       /* partial over output rows */
    ST_TRY(mm(dB, dout, s->u, s->out_l, N, r, 1, 0, l->scale, 1)); /* dB += s dy^T u */
    ST_TRY(mm(dA, l->g, x, r, N, s->in_l, 1, 0, 1.0f, 1));        /* dA += g^T xd */
    if (!s->row && l->lay.tp_rank != 0) return ST_OK; /* the model sums partial dinp over tp */
    if (!dropping(l)) return mm(dinp, l->g, A, N, r, s->in_l, 0, 0, 1.0f, 1); /* dinp += g A */
    ST_TRY(mm(l->tmp, l->g, A, N, r, s->in_l, 0, 0, 1.0f, 0));
    dropout_apply(l, s, layer, t, dinp, l->tmp, N, 1);
    return ST_OK;
}

/* ---- life cycle ------------------------------------------------------------ */

static st_err alloc_buffers(st_lora *l)
{
    const size_t r = (size_t)l->cfg.rank, T = (size_t)l->max_tokens;
    size_t sites = 0, max_in = 0;
    for (int i = 0; i < l->lay.cfg.n_layer * ST_T_COUNT; i++) {
        if (l->site[i].a < 0) continue;
        sites++;
        if ((size_t)l->site[i].in_l > max_in) max_in = (size_t)l->site[i].in_l;
    }
    size_t n_u, n_x;
    if (__builtin_mul_overflow(sites * r, T, &n_u) || __builtin_mul_overflow(max_in, T, &n_x))
        ST_FAIL(ST_ERR_ARG, "LoRA buffers for %zu tokens overflow; reduce the micro-batch", T);
    ST_ALLOC(l->params, l->lay.numel, "LoRA parameters");
    ST_ALLOC(l->grads, l->lay.numel, "LoRA gradients");
    ST_ALLOC(l->u_saved, n_u, "LoRA saved activations");
    ST_ALLOC(l->u_tmp, T * r, "LoRA scratch");
    ST_ALLOC(l->g, T * r, "LoRA scratch");
    if (l->cfg.dropout > 0.0f) {
        ST_ALLOC(l->xd, n_x, "LoRA dropout scratch");
        ST_ALLOC(l->tmp, n_x, "LoRA dropout scratch");
    }
    size_t k = 0;
    for (int i = 0; i < l->lay.cfg.n_layer * ST_T_COUNT; i++)
        if (l->site[i].a >= 0) l->site[i].u = l->u_saved + (k++) * T * r;
    return ST_OK;
}

st_err st_lora_create(st_lora **out, const st_layout *base, const st_lora_config *c, int64_t max_tokens,
                      uint64_t seed)
{
    *out = NULL;
    ST_TRY(check_config(c, max_tokens));
    unsigned targets;
    ST_TRY(resolve_targets(&base->cfg, c->targets, &targets));
    st_lora *l = calloc(1, sizeof *l);
    if (!l) ST_FAIL(ST_ERR_MEM, "out of memory allocating the LoRA adapters");
    l->cfg = *c;
    l->targets = targets;
    l->scale = c->alpha / (float)c->rank;
    l->max_tokens = max_tokens;
    l->seed = seed;
    l->dropout_on = 1;
    l->hook = (st_adapter){.ctx = l, .forward = lora_forward, .backward = lora_backward};
    st_err e;
    ST_TRY_GOTO(e, build_layout(l, base), fail);
    ST_TRY_GOTO(e, alloc_buffers(l), fail);
    init_params(l);
    ST_TRY_GOTO(e, st_kernels_init(), fail);
    *out = l;
    return ST_OK;
fail:
    st_lora_free(l);
    return e;
}

void st_lora_free(st_lora *l)
{
    if (!l) return;
    st_layout_free(&l->lay);
    free(l->site);
    free(l->params);
    free(l->grads);
    free(l->u_saved);
    free(l->u_tmp);
    free(l->g);
    free(l->xd);
    free(l->tmp);
    free(l);
}

const st_adapter *st_lora_adapter(st_lora *l) { return &l->hook; }
const st_layout *st_lora_layout(const st_lora *l) { return &l->lay; }
unsigned st_lora_targets(const st_lora *l) { return l->targets; }
float *st_lora_params(st_lora *l) { return l->params; }
float *st_lora_grads(st_lora *l) { return l->grads; }
size_t st_lora_numel(const st_lora *l) { return l->lay.numel; }
void st_lora_zero_grad(st_lora *l) { memset(l->grads, 0, l->lay.numel * sizeof(float)); }
float st_lora_scale(const st_lora *l) { return l->scale; }

void st_lora_set_step(st_lora *l, int64_t step, int training)
{
    l->step = step;
    l->dropout_on = training != 0;
}

void st_lora_set_rows(st_lora *l, int64_t row0) { l->row0 = row0; }

/* W (OUT_l, IN_l) += s B (OUT_l, r) A (r, IN_l) for every site. */
st_err st_lora_merge(const st_lora *l, const st_layout *base, float *base_params)
{
    const st_layout *y = &l->lay;
    if (base->tp_size != y->tp_size || base->tp_rank != y->tp_rank)
        ST_FAIL(ST_ERR_ARG, "LoRA merge: adapters made for tp rank %d of %d, base layout is rank %d of %d",
                y->tp_rank, y->tp_size, base->tp_rank, base->tp_size);
    char name[128];
    for (int layer = 0; layer < y->cfg.n_layer; layer++)
        for (int t = 0; t < ST_T_COUNT; t++) {
            const lora_site *s = site_of(l, layer, (st_target)t);
            if (!s) continue;
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, TARGET[t].module);
            const st_tensor *w = st_layout_find(base, name);
            if (!w || w->lshape[0] != s->out_l || w->lshape[1] != s->in_l)
                ST_FAIL(ST_ERR_ARG, "LoRA merge: base tensor %s is %s; the adapters expect a (%lld, %lld) slice",
                        name, w ? "of another shape" : "missing", (long long)s->out_l, (long long)s->in_l);
            const float *A = l->params + y->tensors[s->a].offset, *B = l->params + y->tensors[s->b].offset;
            ST_TRY(mm(base_params + w->offset, B, A, s->out_l, l->cfg.rank, s->in_l, 0, 0, l->scale, 1));
        }
    return ST_OK;
}
