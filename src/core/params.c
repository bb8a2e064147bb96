/* params.c: the tensor table of a model and its flat buffer. */
#include "core/params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

typedef struct {
    st_layout *lay;
    size_t cursor;
    int cap;
} builder;

static st_err add(builder *b, int layer, const char *suffix, int ndim, int64_t d0, int64_t d1,
                  st_split split, int decay)
{
    st_layout *lay = b->lay;
    if (lay->n_tensors == b->cap) {
        int cap = b->cap ? 2 * b->cap : 64;
        st_tensor *t = realloc(lay->tensors, (size_t)cap * sizeof *t);
        if (!t) ST_FAIL(ST_ERR_MEM, "out of memory growing the tensor table");
        lay->tensors = t;
        b->cap = cap;
    }
    st_tensor *t = &lay->tensors[lay->n_tensors++];
    memset(t, 0, sizeof *t);
    if (layer >= 0) snprintf(t->name, sizeof t->name, "model.layers.%d.%s", layer, suffix);
    else snprintf(t->name, sizeof t->name, "%s", suffix);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 1;
    t->lshape[0] = t->shape[0];
    t->lshape[1] = t->shape[1];
    t->split = split;
    t->decay = decay;
    t->layer = layer;
    int tp = lay->tp_size, r = lay->tp_rank;
    int64_t alloc_rows = t->shape[0];
    switch (split) {
    case ST_SPLIT_NONE: break;
    case ST_SPLIT_COL:
        t->lshape[0] = t->shape[0] / tp;
        t->start[0] = r * t->lshape[0];
        alloc_rows = t->lshape[0];
        break;
    case ST_SPLIT_ROW:
        t->lshape[1] = t->shape[1] / tp;
        t->start[1] = r * t->lshape[1];
        break;
    case ST_SPLIT_VOCAB: {
        int64_t rows = lay->vocab_l, first = (int64_t)r * rows;
        int64_t real = t->shape[0] - first;
        if (real > rows) real = rows;
        if (real < 0) real = 0;
        t->lshape[0] = real;
        t->start[0] = first;
        alloc_rows = rows;
        break;
    }
    }
    t->offset = b->cursor;
    t->numel = (size_t)alloc_rows * (size_t)t->lshape[1];
    if (split == ST_SPLIT_ROW) t->numel = (size_t)t->lshape[0] * (size_t)t->lshape[1];
    b->cursor += t->numel;
    return ST_OK;
}

st_err st_layout_init(st_layout *lay, const st_config *cfg, int tp_size, int tp_rank)
{
    memset(lay, 0, sizeof *lay);
    ST_TRY(st_config_validate(cfg, tp_size));
    if (tp_rank < 0 || tp_rank >= tp_size)
        ST_FAIL(ST_ERR_ARG, "tp rank %d outside [0, %d)", tp_rank, tp_size);
    lay->cfg = *cfg;
    lay->tp_size = tp_size;
    lay->tp_rank = tp_rank;
    lay->head_dim = st_config_head_dim(cfg);
    lay->n_head_l = cfg->n_head / tp_size;
    lay->n_kv_head_l = cfg->n_kv_head / tp_size;
    lay->d_ff_l = cfg->d_ff / tp_size;
    lay->vocab_l = (cfg->vocab_size + tp_size - 1) / tp_size;
    lay->vocab_start = tp_rank * lay->vocab_l;
    ST_ALLOC(lay->layer_begin, cfg->n_layer + 1, "layer offsets");

    builder b = {lay, 0, 0};
    const int64_t C = cfg->d_model, hd = lay->head_dim, F = cfg->d_ff;
    const int64_t Q = cfg->n_head * hd, KV = cfg->n_kv_head * hd;
    const int gpt2 = cfg->family == ST_FAMILY_GPT2;
    const int qkvb = gpt2 || cfg->qkv_bias;
    st_err e = ST_OK;
#define ADD(...) do { if ((e = add(&b, __VA_ARGS__))) goto fail; } while (0)
    ADD(-1, "model.embed_tokens.weight", 2, cfg->vocab_size, C, ST_SPLIT_VOCAB, 1);
    if (gpt2) ADD(-1, "model.embed_positions.weight", 2, cfg->max_seq, C, ST_SPLIT_NONE, 1);
    for (int l = 0; l < cfg->n_layer; l++) {
        lay->layer_begin[l] = b.cursor;
        ADD(l, "input_layernorm.weight", 1, C, 0, ST_SPLIT_NONE, 0);
        if (gpt2) ADD(l, "input_layernorm.bias", 1, C, 0, ST_SPLIT_NONE, 0);
        ADD(l, "self_attn.q_proj.weight", 2, Q, C, ST_SPLIT_COL, 1);
        if (qkvb) ADD(l, "self_attn.q_proj.bias", 1, Q, 0, ST_SPLIT_COL, 0);
        ADD(l, "self_attn.k_proj.weight", 2, KV, C, ST_SPLIT_COL, 1);
        if (qkvb) ADD(l, "self_attn.k_proj.bias", 1, KV, 0, ST_SPLIT_COL, 0);
        ADD(l, "self_attn.v_proj.weight", 2, KV, C, ST_SPLIT_COL, 1);
        if (qkvb) ADD(l, "self_attn.v_proj.bias", 1, KV, 0, ST_SPLIT_COL, 0);
        ADD(l, "self_attn.o_proj.weight", 2, C, Q, ST_SPLIT_ROW, 1);
        if (gpt2) ADD(l, "self_attn.o_proj.bias", 1, C, 0, ST_SPLIT_NONE, 0);
        ADD(l, "post_attention_layernorm.weight", 1, C, 0, ST_SPLIT_NONE, 0);
        if (gpt2) ADD(l, "post_attention_layernorm.bias", 1, C, 0, ST_SPLIT_NONE, 0);
        if (!gpt2) ADD(l, "mlp.gate_proj.weight", 2, F, C, ST_SPLIT_COL, 1);
        ADD(l, "mlp.up_proj.weight", 2, F, C, ST_SPLIT_COL, 1);
        if (gpt2) ADD(l, "mlp.up_proj.bias", 1, F, 0, ST_SPLIT_COL, 0);
        ADD(l, "mlp.down_proj.weight", 2, C, F, ST_SPLIT_ROW, 1);
        if (gpt2) ADD(l, "mlp.down_proj.bias", 1, C, 0, ST_SPLIT_NONE, 0);
    }
    lay->layer_begin[cfg->n_layer] = b.cursor;
    ADD(-1, "model.norm.weight", 1, C, 0, ST_SPLIT_NONE, 0);
    if (gpt2) ADD(-1, "model.norm.bias", 1, C, 0, ST_SPLIT_NONE, 0);
    if (!cfg->tied_embeddings) ADD(-1, "lm_head.weight", 2, cfg->vocab_size, C, ST_SPLIT_VOCAB, 1);
#undef ADD
    lay->numel = b.cursor;
    return ST_OK;
fail:
    st_error_trace(__FILE__, __LINE__, __func__);
    st_layout_free(lay);
    return e;
}

void st_layout_free(st_layout *lay)
{
    free(lay->tensors);
    free(lay->layer_begin);
    lay->tensors = NULL;
    lay->layer_begin = NULL;
    lay->n_tensors = 0;
}

const st_tensor *st_layout_first_nonfinite(const st_layout *lay, const float *base)
{
    for (int i = 0; i < lay->n_tensors; i++) {
        const st_tensor *t = &lay->tensors[i];
        /* x - x is 0 for finite x and NaN otherwise: one pass, no branch per element */
        float acc = 0;
        for (size_t k = 0; k < t->numel; k++) acc += base[t->offset + k] - base[t->offset + k];
        if (acc != 0 || acc != acc) return t;
    }
    return NULL;
}

const st_tensor *st_layout_find(const st_layout *lay, const char *name)
{
    for (int i = 0; i < lay->n_tensors; i++)
        if (!strcmp(lay->tensors[i].name, name)) return &lay->tensors[i];
    return NULL;
}

static float *at(const st_layout *lay, float *base, const char *name)
{
    const st_tensor *t = st_layout_find(lay, name);
    return t ? base + t->offset : NULL;
}

st_err st_ptrs_init(st_ptrs *p, const st_layout *lay, float *base)
{
    memset(p, 0, sizeof *p);
    ST_ALLOC(p->layer, lay->cfg.n_layer, "layer pointers");
    p->wte = at(lay, base, "model.embed_tokens.weight");
    p->wpe = at(lay, base, "model.embed_positions.weight");
    p->lnf_w = at(lay, base, "model.norm.weight");
    p->lnf_b = at(lay, base, "model.norm.bias");
    p->lm_head = lay->cfg.tied_embeddings ? p->wte : at(lay, base, "lm_head.weight");
    char name[128];
    for (int l = 0; l < lay->cfg.n_layer; l++) {
        st_layer_ptrs *L = &p->layer[l];
#define P(field, suffix) \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix); L->field = at(lay, base, name)
        P(ln1_w, "input_layernorm.weight");
        P(ln1_b, "input_layernorm.bias");
        P(wq, "self_attn.q_proj.weight");
        P(bq, "self_attn.q_proj.bias");
        P(wk, "self_attn.k_proj.weight");
        P(bk, "self_attn.k_proj.bias");
        P(wv, "self_attn.v_proj.weight");
        P(bv, "self_attn.v_proj.bias");
        P(wo, "self_attn.o_proj.weight");
        P(bo, "self_attn.o_proj.bias");
        P(ln2_w, "post_attention_layernorm.weight");
        P(ln2_b, "post_attention_layernorm.bias");
        P(wgate, "mlp.gate_proj.weight");
        P(wup, "mlp.up_proj.weight");
        P(bup, "mlp.up_proj.bias");
        P(wdown, "mlp.down_proj.weight");
        P(bdown, "mlp.down_proj.bias");
#undef P
    }
    return ST_OK;
}

void st_ptrs_free(st_ptrs *p)
{
    free(p->layer);
    p->layer = NULL;
}

static int is_norm(const char *name) { return strstr(name, "norm") != NULL; }
static int is_out_proj(const char *name)
{
    return strstr(name, "o_proj.weight") || strstr(name, "down_proj.weight");
}

void st_params_init_tensor(const st_layout *lay, float *base, uint64_t seed, int i)
{
    const st_tensor *t = &lay->tensors[i];
    float *w = base + t->offset;
    memset(w, 0, t->numel * sizeof *w); /* biases, and vocabulary padding rows */
    if (t->ndim == 1) {
        if (is_norm(t->name) && strstr(t->name, ".weight"))
            for (int64_t j = 0; j < t->lshape[0]; j++) w[j] = 1.0f;
        return;
    }
    const float sd = (float)(0.02 * (is_out_proj(t->name) ? 1.0 / sqrt(2.0 * lay->cfg.n_layer) : 1.0));
    const uint64_t key = st_splitmix64(seed ^ st_hash_str(t->name));
    const int64_t rows = t->lshape[0], cols = t->lshape[1];
    /* local row r is global row start[0] + r, columns from start[1]: one
     * contiguous run of global indices per row */
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
    for (int64_t r = 0; r < rows; r++)
        st_normal_fill(w + r * cols, (size_t)cols, key,
                       (uint64_t)((t->start[0] + r) * t->shape[1] + t->start[1]), sd);
}

void st_params_init(const st_layout *lay, float *base, uint64_t seed)
{
    for (int i = 0; i < lay->n_tensors; i++) st_params_init_tensor(lay, base, seed, i);
}
