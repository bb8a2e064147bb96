/* trainer.h: the state of one `shardtune train` run, shared by the training
 * loop (train.c) and the methods (method.h, methods.c).
 *
 * One batch, from file to optimizer step:
 *   train_step (train.c): for each micro-batch of this dp rank's share of
 *     the global batch, st_loader_fill (io/dataset.c) fills t->batch, the
 *     method's forward computes the loss sums and its backward adds the
 *     gradients; on the last micro-batch each finished layer's gradients
 *     start their dp reduction (mpi/dp.c) while backward continues;
 *   then the mean over what counted, the global-norm clip, AdamW on the
 *   owned range (model/optim.c), and the ZeRO-1 all-gather.
 */
#ifndef ST_TRAINER_H
#define ST_TRAINER_H

#include <stdint.h>

#include "core/config.h"
#include "cmd/runctl.h"
#include "core/timer.h"
#include "io/dataset.h"
#include "io/metrics.h"
#include "io/tok/tokenizer.h"
#include "kernels/peak.h"
#include "model/classify.h"
#include "model/lora.h"
#include "model/model.h"
#include "model/optim.h"
#include "mpi/dp.h"
#include "mpi/grid.h"

struct st_method;

/* The settings of the RL methods (grpo, rloo, ppo; src/cmd/rl.c). Numbers
 * below 0 (or 0 where it says so) take the method's default. */
typedef struct {
    int group_size;            /* answers per prompt (0: grpo 8, rloo 2, ppo 1) */
    int max_new;               /* answer tokens at most */
    float temperature, top_p;  /* sampling */
    int top_k;
    int gen_batch;             /* answers decoded together on a rank (0: all of its answers) */
    char *stop;                /* more tokens that end an answer (their text, comma-separated) */
    int64_t seed;              /* sampling seed (0: the run's seed) */
    float clip;                /* policy ratio clip range */
    float kl_coef;             /* KL to the reference (< 0: grpo 0, rloo 0.05, ppo 0.05) */
    int epochs, minibatches;   /* passes over each rollout (0: grpo/rloo 1, ppo 4), updates per pass */
    int scale_rewards;         /* grpo: divide by the group's std */
    float gamma, lambda;       /* ppo: GAE */
    float vf_coef, value_clip; /* ppo: value loss weight and clip range */
    char *value_from;          /* ppo: the value model's starting checkpoint (NULL: the reward model, else init_from) */
    struct {                   /* the reward: a weighted sum of these terms */
        char *model;           /* a reward model's checkpoint (method reward) */
        float model_weight;
        float exact, contains; /* answer equals / contains the reference answer */
        char *regex;           /* PCRE2 pattern on the answer; {reference} stands for the reference, quoted */
        float regex_weight;
        float length_penalty;  /* minus this times answer tokens / max_new */
        float missing_eos;     /* minus this when the answer did not end with a stop token */
    } reward;
} rl_opts;

/* One line of what a method reports per step beside the loss: the
 * metrics.jsonl key and, unless NULL, a printf format for the progress line. */
typedef struct {
    const char *key, *fmt;
    double value;
} st_stat;

/* The recipe's settings (train.c's option table binds to these fields). */
typedef struct {
    /* model */
    char *family;
    st_config cfg;
    char *init_from, *init_skip;
    /* data */
    char *data_train, *sampling;
    int shuffle;
    int seq_len, batch_size, global_batch;
    /* method */
    char *method;
    char *pool;
    int cls_bias;
    float dpo_beta;
    int freeze_layers, recompute;
    char *precision;
    rl_opts rl;
    st_lora_config lora;
    char *lora_targets;
    /* optimisation */
    st_optim_config opt;
    char *schedule;
    int64_t steps, seed;
    /* grid */
    int tp, dp, zero;
    /* run */
    char *out_dir, *resume;
    int save_every, keep, log_every, eval_every, eval_batches, plot, patience;
    int64_t stop_after;
    float save_minutes, time_limit;   /* minutes; 0 = off */
    char *on_nonfinite;               /* "stop" or "skip" */
} train_opts;

/* A parameter set trained besides the body (a classification head, adapters):
 * replicated over dp, reduced through mpi/dp.c, its own AdamW. */
typedef struct {
    const char *what;
    const char *group;     /* its checkpoint group: "head", "lora" */
    char *meta;            /* its description (JSON), stored with it */
    const st_layout *lay;
    float *params, *grads;
    st_adamw adam;
} st_pset;

typedef struct {
    train_opts *o;          /* the recipe's settings (setup completes the derived ones) */
    const struct st_method *method;
    void *mstate;          /* the method's own state (DPO's reference model) */
    st_grid grid;
    st_model model;
    st_cls_head head;      /* methods with a head (classify, reward) */
    int has_head;
    st_lora *lora;         /* adapters, or NULL */
    uint8_t *trainable;    /* per body tensor */
    int body_trainable;    /* any body tensor trains */
    st_pset extra[4];      /* at most ST_CKPT_MAX_SETS */
    int n_extra;
    double best_val;
    int bad_evals;
    int nonfinite_run;     /* consecutive steps skipped for a non-finite loss or gradient norm */
    st_dp dp;
    st_adamw adam;
    size_t own_begin, own_end;
    st_dataset *ds;
    st_loader *train, *val;
    st_batch batch;
    st_tokenizer *tok;
    int micro_per_step;    /* micro-batches per rank per step */
    int resumed;           /* the run continues from a checkpoint (start_step may be 0) */
    int64_t start_step;
    int finished;          /* resumed at or past the end of the run: nothing to do */
    int64_t tokens_seen;
    uint64_t rng[4];       /* a method's random state, saved in /train rng (the RL sampler's seed) */
    double peak_gflops;    /* measured matmul rate of one rank, in the run's precision */
    st_precision prec;     /* fp32 or bf16 matrix products, and why */
    st_timers timers;
    st_runctl ctl;         /* signals, the time limit, the checkpoint interval */
    st_metrics metrics;
    int lock_fd;           /* rank 0: the lock on out_dir (io/runlock.h), -1 = none */
    char ckpt_dir[4096];
    const char *recipe_text;
} trainer;

/* Add a parameter set (what: for messages; group: its checkpoint group). */
st_err st_trainer_add_set(trainer *t, const char *what, const char *group, char *meta, const st_layout *lay,
                          float *params, float *grads);

/* init_from's weights into m (the policy, or DPO's reference); the
 * init_skip names are drawn from the seed instead. */
st_err st_trainer_load_init(trainer *t, st_model *m);

#endif
