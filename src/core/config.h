/* config.h: the shape of a model. One struct describes both families.
 *
 *   gpt2:  LayerNorm with bias, learned positions, GELU(tanh) MLP, biases on
 *          every linear layer, tied embeddings.
 *   llama: RMSNorm, RoPE (rope_theta), SwiGLU MLP, grouped-query attention
 *          (n_kv_head divides n_head), optional q/k/v bias (Qwen2), tied or
 *          untied embeddings.
 */
#ifndef ST_CONFIG_H
#define ST_CONFIG_H

#include "core/err.h"

typedef enum { ST_FAMILY_GPT2 = 0, ST_FAMILY_LLAMA = 1 } st_family;

typedef struct {
    st_family family;
    int n_layer;
    int d_model;          /* C */
    int n_head;           /* H, query heads */
    int n_kv_head;        /* KV, key/value heads; n_head % n_kv_head == 0 */
    int d_ff;             /* F, MLP hidden width */
    int vocab_size;       /* V, real vocabulary (never padded on disk) */
    int max_seq;          /* longest sequence (gpt2: rows of the position table) */
    float norm_eps;
    float rope_theta;     /* llama only */
    int tied_embeddings;  /* lm_head shares model.embed_tokens.weight */
    int qkv_bias;         /* llama only: bias on q/k/v (gpt2 always has biases) */
} st_config;

const char *st_family_name(st_family f);
st_err st_family_parse(const char *s, st_family *out);

static inline int st_config_head_dim(const st_config *c) { return c->d_model / c->n_head; }

/* Sanity of the numbers themselves, and that the model divides over tp ranks.
 * Errors say which field is wrong and what would fix it. */
st_err st_config_validate(const st_config *c, int tp);

/* Number of parameters of the whole (unsplit) model. */
long long st_config_num_params(const st_config *c);

/* Training FLOPs per token: 6 * (matmul params) + 12 * L * T * C for attention
 * (forward 2 flops per multiply-add, backward twice the forward). */
double st_config_flops_per_token(const st_config *c, int seq_len);

#endif
