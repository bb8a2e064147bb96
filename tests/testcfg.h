/* testcfg.h: the small model configs the unit tests share: odd sizes,
 * grouped-query attention (6 heads over 2), q/k/v bias, untied (llama) and
 * tied (gpt2) embeddings. */
#ifndef ST_TESTCFG_H
#define ST_TESTCFG_H

#include "core/config.h"

static inline st_config cfg_llama(void)
{
    st_config c = {.family = ST_FAMILY_LLAMA, .n_layer = 2, .d_model = 24, .n_head = 6, .n_kv_head = 2,
                   .d_ff = 40, .vocab_size = 37, .max_seq = 16, .norm_eps = 1e-5f, .rope_theta = 10000.0f,
                   .tied_embeddings = 0, .qkv_bias = 1};
    return c;
}

static inline st_config cfg_gpt2(void)
{
    st_config c = {.family = ST_FAMILY_GPT2, .n_layer = 2, .d_model = 20, .n_head = 4, .n_kv_head = 4,
                   .d_ff = 36, .vocab_size = 41, .max_seq = 16, .norm_eps = 1e-5f, .tied_embeddings = 1};
    return c;
}

#endif
