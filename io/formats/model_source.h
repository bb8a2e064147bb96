/* model_source.h: a model file from another tool, read one unit at a time.
 *
 * Opening reads and checks only the headers (sizes against the file, names
 * and shapes against the config), so every rank can open the same source
 * cheaply and then read disjoint units. A unit is what one read of the
 * source yields: one tensor of shardtune's 1x1 layout, or several when the
 * source fuses them (GPT-2's c_attn holds q, k and v). Reading a unit needs
 * memory for that unit only, which is what lets `shardtune convert` stream
 * a model that does not fit in memory twice (io/checkpoint.c's
 * st_ckpt_save_source) and split the work over MPI ranks.
 *
 * Formats: "llama2c" (llama2c.c), "llmc" (llmc.c), "hf" (hf.c, a directory),
 * each filling a st_model_source with the helpers below; model_open.h opens
 * a path as whichever format it is.
 */
#ifndef ST_MODEL_SOURCE_H
#define ST_MODEL_SOURCE_H

#include <stdint.h>

#include "core/config.h"
#include "core/err.h"
#include "core/params.h"

#define ST_SRC_MAX_DST 3

typedef struct {
    int n_dst;
    const st_tensor *dst[ST_SRC_MAX_DST];  /* tensors of the source's 1x1 layout it fills */
} st_src_unit;

typedef struct st_model_source st_model_source;
struct st_model_source {
    const char *format;      /* "llama2c", "llmc", "hf" */
    st_config cfg;
    st_layout lay;           /* the 1x1 layout of cfg: every tensor whole */
    int n_units;
    st_src_unit *units;      /* (n_units), together covering every tensor of lay once */
    /* Fill unit u's tensors: out[p] has room for units[u].dst[p]->numel floats. */
    st_err (*read)(st_model_source *s, int u, float *const out[ST_SRC_MAX_DST]);
    void (*close_impl)(st_model_source *s);
    void *impl;
};

void st_model_source_close(st_model_source *s);

/* Append a unit filling the named tensors of s->lay (1 to 3 names). */
st_err st_model_source_add_unit(st_model_source *s, const char *const *names, int n);

/* Every unit into params (s->lay.numel floats, the 1x1 flat layout). */
st_err st_model_source_read_all(st_model_source *s, float *params);

/* Bytes of float32 a unit fills. */
int64_t st_model_source_unit_bytes(const st_model_source *s, int u);

#endif
