/* lora_ckpt.h: LoRA adapters stored in a checkpoint (its "lora" parameter
 * set, io/checkpoint.h), read back as adapters or merged into the base. */
#ifndef ST_LORA_CKPT_H
#define ST_LORA_CKPT_H

#include "core/err.h"
#include "core/params.h"
#include "model/lora.h"
#include "mpi/grid.h"

/* The checkpoint's adapters as an st_lora (NULL *out when it has none);
 * params is the loaded base (untouched). */
st_err st_lora_load_checkpoint(const char *path, const st_grid *g, const st_layout *lay, float *params,
                               st_lora **out, st_lora_config *cfg);
/* A checkpoint's "lora" set (if any) merged into params, this rank's slice of
 * lay, on grid g: *merged = 1 when there were adapters. */
st_err st_lora_merge_checkpoint(const char *path, const st_grid *g, const st_layout *lay, float *params,
                                int *merged);

#endif
