/* method.h: what one training method adds to the common loop.
 *
 * The loop (train.c) owns the grid, the body, the data, the optimizer, the
 * checkpoints and the schedule; a method says which rows it reads, what its
 * loss is and how its gradient flows back:
 *
 *   pretrain  every next token of windows cut from the concatenated text
 *   sft       the tokens the dataset's mask marks (responses)
 *   classify  a head over the dataset's labels (model/classify.c)
 *   reward    a scalar head over preference pairs, the Bradley-Terry loss
 *   dpo       the language model against a frozen reference (model/dpo.c)
 *   grpo, rloo, ppo  on-policy RL: the model's own answers, rewarded (cmd/rl.c)
 *
 * forward runs one micro-batch of `rows` rows already in t->batch and
 * returns sums: *loss over what counts (tokens, rows or pairs), *count how
 * many counted, *correct how many were right (evaluated as `metric`). The
 * loop divides by the count over the whole global batch, so every grid
 * computes the same mean.
 *
 * A method that makes its own rows (RL: generated answers) has a rollout:
 * it runs first in each step, fills the method's own buffer and plans the
 * step (how many optimizer updates over it, of how many micro-batches per
 * rank); then fill, instead of the loader, puts each micro-batch into
 * t->batch before forward. Its evaluate replaces the validation loss.
 */
#ifndef ST_METHOD_H
#define ST_METHOD_H

#include "cmd/trainer.h"
#include "core/err.h"

typedef enum { ST_HEAD_NONE = 0, ST_HEAD_LABELS, ST_HEAD_SCALAR } st_head_kind;

/* A step: `updates` optimizer updates of `micro` micro-batches per rank;
 * tokens: what they process over all ranks (0: every row's seq_len). */
typedef struct {
    int updates, micro;
    int64_t tokens;
} st_step_plan;

typedef struct st_method {
    const char *name;
    const char *summary;     /* one line for --help */
    int stream;              /* data.sampling auto: 1 windows over the text, 0 one document per row */
    int pairs;               /* rows 2i, 2i+1 are a preference pair (chosen, rejected) */
    st_head_kind head;       /* a head on the body instead of the LM head */
    int token_loss;          /* the loss is per token: report perplexity */
    const char *metric;      /* what correct / count is ("accuracy", "pair accuracy"), or NULL */
    st_err (*setup)(trainer *t);   /* optional: the method's own state, after the body and data */
    st_err (*forward)(trainer *t, int rows, double *loss, double *count, double *correct);
    st_err (*backward)(trainer *t);
    /* optional: after the run's weights are loaded or drawn, t->resumed set (DPO: its reference) */
    st_err (*load_start)(trainer *t);
    void (*free)(trainer *t);      /* optional */
    /* optional, for methods that make their own rows (see above) */
    st_err (*rollout)(trainer *t, int64_t step, st_step_plan *plan);
    /* micro-batch `micro` of update `update` into t->batch; *g0: the global
     * index of its first row (LoRA dropout follows it) */
    st_err (*fill)(trainer *t, int update, int micro, int64_t *g0);
    /* validation: *val (lower is better: the best checkpoint's) and *metric */
    st_err (*evaluate)(trainer *t, double *val, double *metric);
    /* what the step's progress line and metrics.jsonl add: returns how many;
     * collective (every rank calls it after each step) */
    int (*stats)(const trainer *t, st_stat *out, int max);
} st_method;

/* The method called name, or NULL. */
const st_method *st_method_find(const char *name);
/* "pretrain, sft, classify, reward, dpo, grpo, rloo, ppo" */
const char *st_method_names(void);

#endif
