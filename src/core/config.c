/* config.c: validation and counting for st_config. */
#include "core/config.h"

#include <string.h>

const char *st_family_name(st_family f)
{
    return f == ST_FAMILY_GPT2 ? "gpt2" : f == ST_FAMILY_LLAMA ? "llama" : "?";
}

st_err st_family_parse(const char *s, st_family *out)
{
    if (!strcmp(s, "gpt2")) { *out = ST_FAMILY_GPT2; return ST_OK; }
    if (!strcmp(s, "llama")) { *out = ST_FAMILY_LLAMA; return ST_OK; }
    ST_FAIL(ST_ERR_ARG, "unknown model family '%s' (expected gpt2 or llama)", s);
}

st_err st_config_validate(const st_config *c, int tp)
{
    if (c->family != ST_FAMILY_GPT2 && c->family != ST_FAMILY_LLAMA)
        ST_FAIL(ST_ERR_ARG, "config: family must be gpt2 or llama");
    if (c->n_layer < 1 || c->d_model < 1 || c->n_head < 1 || c->n_kv_head < 1 ||
        c->d_ff < 1 || c->vocab_size < 1 || c->max_seq < 1)
        ST_FAIL(ST_ERR_ARG, "config: n_layer=%d d_model=%d n_head=%d n_kv_head=%d d_ff=%d "
                "vocab_size=%d max_seq=%d must all be positive",
                c->n_layer, c->d_model, c->n_head, c->n_kv_head, c->d_ff, c->vocab_size, c->max_seq);
    if (c->d_model % c->n_head)
        ST_FAIL(ST_ERR_ARG, "config: d_model=%d is not a multiple of n_head=%d", c->d_model, c->n_head);
    if (c->n_head % c->n_kv_head)
        ST_FAIL(ST_ERR_ARG, "config: n_head=%d is not a multiple of n_kv_head=%d", c->n_head, c->n_kv_head);
    if (c->family == ST_FAMILY_GPT2 && c->n_kv_head != c->n_head)
        ST_FAIL(ST_ERR_ARG, "config: gpt2 has no grouped-query attention (n_kv_head=%d, n_head=%d)",
                c->n_kv_head, c->n_head);
    if (c->family == ST_FAMILY_LLAMA && (st_config_head_dim(c) % 2))
        ST_FAIL(ST_ERR_ARG, "config: RoPE needs an even head dimension (d_model/n_head = %d)",
                st_config_head_dim(c));
    if (!(c->norm_eps > 0.0f))
        ST_FAIL(ST_ERR_ARG, "config: norm_eps must be > 0");
    if (c->family == ST_FAMILY_LLAMA && !(c->rope_theta > 0.0f))
        ST_FAIL(ST_ERR_ARG, "config: rope_theta must be > 0");
    if (tp < 1) ST_FAIL(ST_ERR_ARG, "tensor-parallel size %d must be >= 1", tp);
    if (c->n_head % tp)
        ST_FAIL(ST_ERR_ARG, "model does not divide over the grid: n_head=%d is not a multiple of tp=%d "
                "(choose --tp among the divisors of %d)", c->n_head, tp, c->n_head);
    if (c->n_kv_head % tp)
        ST_FAIL(ST_ERR_ARG, "model does not divide over the grid: n_kv_head=%d is not a multiple of tp=%d "
                "(choose --tp among the divisors of %d)", c->n_kv_head, tp, c->n_kv_head);
    if (c->d_ff % tp)
        ST_FAIL(ST_ERR_ARG, "model does not divide over the grid: d_ff=%d is not a multiple of tp=%d",
                c->d_ff, tp);
    return ST_OK;
}

long long st_config_num_params(const st_config *c)
{
    long long C = c->d_model, F = c->d_ff, V = c->vocab_size, hd = st_config_head_dim(c);
    long long qdim = (long long)c->n_head * hd, kvdim = (long long)c->n_kv_head * hd;
    long long per = 0, top = 0;
    int gpt2 = c->family == ST_FAMILY_GPT2;
    per += C * (gpt2 ? 2 : 1);                         /* input norm */
    per += C * qdim + 2 * C * kvdim + qdim * C;        /* q k v o */
    if (gpt2 || c->qkv_bias) per += qdim + 2 * kvdim;  /* q k v bias */
    if (gpt2) per += C;                                /* o bias */
    per += C * (gpt2 ? 2 : 1);                         /* post-attention norm */
    per += (gpt2 ? 2 : 3) * C * F;                     /* (gate) up down */
    if (gpt2) per += F + C;                            /* up, down bias */
    top += V * C;                                      /* embeddings */
    if (gpt2) top += (long long)c->max_seq * C;        /* positions */
    top += C * (gpt2 ? 2 : 1);                         /* final norm */
    if (!c->tied_embeddings) top += V * C;             /* lm head */
    return top + per * c->n_layer;
}

double st_config_flops_per_token(const st_config *c, int seq_len)
{
    double C = c->d_model, F = c->d_ff, V = c->vocab_size, hd = st_config_head_dim(c);
    double qdim = c->n_head * hd, kvdim = c->n_kv_head * hd;
    double mm = C * qdim + 2 * C * kvdim + qdim * C + (c->family == ST_FAMILY_GPT2 ? 2 : 3) * C * F;
    double matmul_params = mm * c->n_layer + V * C;    /* the LM head is a matmul too */
    /* attention scores and weighted sum: 2 matmuls of T x hd per head and token,
     * counted over the full T x T square as PaLM's MFU definition does */
    double attn = 2.0 * 2.0 * c->n_layer * seq_len * qdim;
    return 6.0 * matmul_params + 3.0 * attn;
}
