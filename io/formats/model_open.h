/* model_open.h: a path as a model source of whichever format it is. */
#ifndef ST_MODEL_OPEN_H
#define ST_MODEL_OPEN_H

#include "core/config.h"
#include "core/err.h"
#include "io/formats/model_source.h"

/* Open path as format: "llama2c", "llmc", "hf", or "auto" (a directory is
 * hf; llm.c files start with the magic 20240326; anything else is taken for
 * llama2.c, whose header is checked against the file size, so a wrong guess
 * fails clearly). */
st_err st_model_source_open(st_model_source *s, const char *path, const char *format);

/* The whole model at once: cfg and *params (malloc'd, the 1x1 flat layout;
 * the caller frees it). Source tensors are read one at a time, so the peak is
 * the parameters plus one unit. */
st_err st_model_source_read_file(const char *path, const char *format, st_config *cfg, float **params);

#endif
