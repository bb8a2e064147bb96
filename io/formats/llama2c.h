/* llama2c.h: Andrej Karpathy's llama2.c checkpoints (run.c's .bin, export.py's
 * "legacy" version 0), read into and written from shardtune's flat parameter
 * buffer.
 *
 * The file is a header of 7 int32 (dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size, seq_len; a negative vocab_size means the classifier
 * is not shared with the embedding) followed by fp32 tensors, each stacked over
 * layers: embedding, attention norms, wq, wk, wv, wo, ffn norms, w1 (gate),
 * w2 (down), w3 (up), final norm, the RoPE tables cos/sin (seq_len, head/2),
 * and the classifier when not shared.
 *
 * llama2.c keeps Meta's RoPE convention (rotate adjacent pairs 2i, 2i+1);
 * shardtune, like Hugging Face, rotates the halves (i, i + head/2). The rows of
 * wq and wk are permuted on the way in and back on the way out, so a model
 * computes the same function in both programs.
 */
#ifndef ST_LLAMA2C_H
#define ST_LLAMA2C_H

#include <stdint.h>

#include "core/config.h"
#include "io/formats/model_source.h"

/* Open a llama2.c checkpoint as a model source (io/formats/model_source.h):
 * cfg is family llama, rope_theta 10000, norm_eps 1e-5, as run.c hard-codes
 * them. The header is checked against the file size before anything is
 * allocated. (st_model_source_read_file(path, "llama2c", ...) reads it whole.) */
st_err st_llama2c_open(st_model_source *s, const char *path);

/* Write params (laid out per st_layout_init(cfg, tp=1)) as a llama2.c
 * checkpoint. The format carries only Llama models without q/k/v bias, with
 * rope_theta 10000 and norm_eps 1e-5; anything else is refused rather than
 * written as a different model. Writes path.tmp and renames it into place. */
st_err st_llama2c_write(const char *path, const st_config *cfg, const float *params);

/* The rows of one q or k projection weight (n_head * head_dim, cols) between
 * Meta's interleaved RoPE order and Hugging Face's rotate-half order:
 *   hf row h*hd + j*(hd/2) + i  ==  meta row h*hd + 2*i + j   (i < hd/2, j < 2)
 * dst and src must not overlap. */
void st_rope_rows_meta_to_hf(float *dst, const float *src, int n_head, int head_dim, int64_t cols);
void st_rope_rows_hf_to_meta(float *dst, const float *src, int n_head, int head_dim, int64_t cols);

#endif
