/* inference.h: a checkpoint opened for inference, the one sequence eval,
 * generate, score and export share:
 *   config -> the body on this rank's tp slice (buffers for B rows of T
 *   tokens, activations of one layer) -> the head, when the checkpoint has
 *   one and it is wanted -> every tensor read and verified -> LoRA adapters
 *   merged into the weights -> the bf16 copy of the weights (precision bf16)
 *   -> the tokenizer the checkpoint carries.
 */
#ifndef ST_INFERENCE_H
#define ST_INFERENCE_H

#include "core/config.h"
#include "core/err.h"
#include "io/tok/tokenizer.h"
#include "model/classify.h"
#include "model/model.h"
#include "mpi/grid.h"

typedef enum {
    ST_INFER_NO_HEAD = 0,      /* the language model, whatever the checkpoint holds */
    ST_INFER_HEAD,             /* the head too, when the checkpoint has one */
    ST_INFER_HEAD_REQUIRED     /* a classifier or reward model, or an error */
} st_infer_head;

typedef struct {
    int B, T;                  /* rows and tokens per row the buffers hold; T is at most the model's
                                * max_seq (0 or more: max_seq) */
    st_infer_head head;
    int merge_lora;            /* merge the checkpoint's adapters (0: ignore them; the caller decided) */
    int need_tokenizer;        /* fail when the checkpoint carries no tokenizer */
    const char *precision;     /* the body's matrix products: NULL or "fp32", "bf16" or "auto"
                                * (kernels/peak.h; chosen by rank 0 for all) */
} st_infer_opts;

typedef struct {
    st_config cfg;
    st_model m;                /* ST_MODEL_INFER on the grid's tp communicator */
    int has_head;              /* head, n_labels, labels, pool_mean are set */
    st_cls_head head;
    int n_labels;              /* 1: a reward model */
    char **labels;             /* (n_labels) names, from the head's metadata */
    int pool_mean;
    int lora_merged;
    st_precision prec;         /* what precision chose, and why (bf16 = 0 for fp32) */
    st_tokenizer *tok;         /* NULL when the checkpoint carries none */
    int64_t bytes;             /* tensor bytes read, all ranks together */
    double seconds;            /* how long the opening took */
} st_infer;

/* Open ckpt on grid g (collective over g->world); what fails names ckpt and
 * leaves nothing to close. */
st_err st_infer_open(st_infer *x, const char *ckpt, const st_grid *g, const st_infer_opts *o);
void st_infer_close(st_infer *x);

/* The start-up line on stderr (world rank 0; stdout carries the command's
 * results): "shardtune CMD: loaded N GB in S s (R GB/s), T s after start". */
void st_infer_print_loaded(const st_infer *x, const char *cmd, const st_grid *g);

#endif
