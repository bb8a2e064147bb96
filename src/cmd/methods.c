/* methods.c: the training methods of method.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/method.h"
#include "cmd/rl.h"
#include "model/dpo.h"

/* ---- language modelling: pretrain, sft --------------------------------------- */

static st_err lm_forward(trainer *t, int rows, double *loss, double *count, double *correct)
{
    st_batch *b = &t->batch;
    const int T = t->o->seq_len;
    if (t->method->stream) st_batch_mask_all(b, rows); /* pretraining: every real next token counts */
    *count = *correct = 0;
    for (int i = 0; i < rows * T; i++) *count += b->mask[i];
    return st_model_forward(&t->model, b->tokens, b->targets, b->mask, rows, T, 1.0f, loss);
}

static st_err lm_backward(trainer *t) { return st_model_backward(&t->model, t->batch.tokens); }

/* ---- preference pairs ---------------------------------------------------------- */

/* Preference pairs for reward and dpo: present, whole in every micro-batch,
 * and not cut at seq_len (the loader keeps a doc's first seq_len tokens, so a
 * longer pair would lose its responses). */
static st_err check_pairs(trainer *t)
{
    const train_opts *o = t->o;
    if (st_dataset_num_pairs(t->ds) < 1)
        ST_FAIL(ST_ERR_ARG, "method %s needs preference pairs ('%s' has none); prepare JSONL with "
                "prompt/chosen/rejected (or hh-rlhf's chosen/rejected) into a dataset of kind pref", o->method,
                o->data_train);
    if (o->batch_size % 2)
        ST_FAIL(ST_ERR_ARG, "method %s: batch_size %d must be even (rows hold (chosen, rejected) pairs)", o->method,
                o->batch_size);
    int64_t cut = 0, np = st_dataset_num_pairs(t->ds);
    for (int64_t i = 0; i < np; i++) {
        int64_t c, r;
        st_dataset_pair(t->ds, i, &c, &r);
        cut += st_dataset_doc_len(t->ds, c) > o->seq_len || st_dataset_doc_len(t->ds, r) > o->seq_len;
    }
    if (cut == np)
        ST_FAIL(ST_ERR_ARG, "method %s: every pair of '%s' is longer than seq_len %d, so the responses would be "
                "cut off; prepare with --max-len %d (prompts are then cut from the left)", o->method,
                o->data_train, o->seq_len, o->seq_len);
    if (cut && t->grid.world_rank == 0)
        printf("warning: %lld of %lld pairs are longer than seq_len %d and lose the end of their responses; "
               "prepare with --max-len %d to cut prompts from the left instead\n", (long long)cut, (long long)np,
               o->seq_len, o->seq_len);
    return ST_OK;
}

/* ---- heads: classify, reward ------------------------------------------------------ */

/* The head: one output per label (classify) or one reward, trained as an
 * extra parameter set. */
static st_err head_setup(trainer *t)
{
    const train_opts *o = t->o;
    const int reward = t->method->head == ST_HEAD_SCALAR;
    if (reward) ST_TRY(check_pairs(t));
    if (strcmp(o->pool, "last") && strcmp(o->pool, "mean"))
        ST_FAIL(ST_ERR_ARG, "classify.pool '%s': expected last or mean", o->pool);
    int k = reward ? 1 : st_dataset_num_labels(t->ds);
    if (k < 2 && !reward)
        ST_FAIL(ST_ERR_ARG, "method classify needs a dataset with labels ('%s' has %d); prepare it with "
                "--format classify", o->data_train, k);
    ST_TRY(st_cls_create(&t->head, &t->model, k, !strcmp(o->pool, "mean"), (uint64_t)o->seed));
    t->has_head = 1;
    t->head.no_bias = !o->cls_bias;
    const char **names = malloc(sizeof *names * (size_t)k);
    if (!names) ST_FAIL(ST_ERR_MEM, "out of memory");
    for (int i = 0; i < k; i++) names[i] = reward ? "reward" : st_dataset_label_name(t->ds, i);
    char *meta = NULL;
    st_err e = st_cls_meta_json(&t->head, names, &meta);
    free(names);
    ST_TRY(e);
    ST_TRY(st_trainer_add_set(t, reward ? "reward head" : "classification head", "head", meta, &t->head.lay,
                              t->head.params, t->head.grads));
    int32_t *pred; /* the predictions of a micro-batch */
    ST_ALLOC(pred, o->batch_size, "predictions");
    t->mstate = pred;
    return ST_OK;
}

static void head_free(trainer *t)
{
    free(t->mstate);
    t->mstate = NULL;
}

static st_err classify_forward(trainer *t, int rows, double *loss, double *count, double *correct)
{
    st_batch *b = &t->batch;
    int32_t *pred = t->mstate;
    ST_TRY(st_cls_forward(&t->head, &t->model, b->tokens, b->lengths, b->labels, rows, t->o->seq_len, 1.0f, loss,
                          pred));
    *count = rows;
    *correct = 0;
    for (int i = 0; i < rows; i++) *correct += pred[i] == b->labels[i];
    return ST_OK;
}

/* rows 2i, 2i+1: pair i's chosen and rejected; the loss counts pairs */
static st_err reward_forward(trainer *t, int rows, double *loss, double *count, double *correct)
{
    st_batch *b = &t->batch;
    ST_TRY(st_cls_forward(&t->head, &t->model, b->tokens, b->lengths, NULL, rows, t->o->seq_len, 1.0f, loss, NULL));
    ST_TRY(st_cls_pair_loss(&t->head, rows, 1.0f, loss, correct));
    *count = rows / 2;
    return ST_OK;
}

static st_err head_backward(trainer *t) { return st_cls_backward(&t->head, &t->model, t->batch.tokens); }

/* ---- dpo ------------------------------------------------------------------------------ */

typedef struct {
    st_model ref;   /* the frozen reference: the run's starting weights */
    float *work;    /* 2 * batch_size * seq_len floats */
} dpo_state;

static st_err dpo_setup(trainer *t)
{
    const train_opts *o = t->o;
    ST_TRY(check_pairs(t));
    dpo_state *s;
    ST_ALLOC(s, 1, "DPO state");
    t->mstate = s;
    /* forward only: one layer's activations */
    ST_TRY(st_model_create(&s->ref, &t->model.lay.cfg, t->grid.tp, o->batch_size, o->seq_len, ST_MODEL_INFER));
    ST_ALLOC(s->work, 2 * (size_t)o->batch_size * o->seq_len, "DPO scratch");
    return ST_OK;
}

/* The reference is the policy's starting point: a copy of the policy as it
 * starts (called once the policy is loaded or drawn); on a resume, rebuilt
 * from init_from or the seed as the run began (the same seed and layout). */
static st_err dpo_load_start(trainer *t)
{
    dpo_state *s = t->mstate;
    if (!t->resumed) memcpy(s->ref.params, t->model.params, t->model.lay.numel * sizeof(float));
    else if (t->o->init_from) ST_TRY(st_trainer_load_init(t, &s->ref));
    else st_model_init(&s->ref, (uint64_t)t->o->seed);
    ST_TRY(st_model_set_precision(&s->ref, t->prec.bf16)); /* after its weights are in */
    return ST_OK;
}

/* rows 2i, 2i+1: a pair; the loss counts pairs */
static st_err dpo_forward(trainer *t, int rows, double *loss, double *count, double *correct)
{
    dpo_state *s = t->mstate;
    st_batch *b = &t->batch;
    double margin = 0;
    ST_TRY(st_dpo_forward(&t->model, &s->ref, b->tokens, b->targets, b->mask, rows, t->o->seq_len, t->o->dpo_beta,
                          1.0f, s->work, loss, correct, &margin));
    *count = rows / 2;
    return ST_OK;
}

static void dpo_free(trainer *t)
{
    dpo_state *s = t->mstate;
    if (!s) return;
    st_model_free(&s->ref);
    free(s->work);
    free(s);
    t->mstate = NULL;
}

/* ---- the table -------------------------------------------------------------------------- */

static const st_method methods[] = {
    {.name = "pretrain", .summary = "loss on every next token (continued pretraining on domain text)", .stream = 1,
     .token_loss = 1, .forward = lm_forward, .backward = lm_backward},
    {.name = "sft", .summary = "loss where the dataset's mask says (responses)", .token_loss = 1,
     .forward = lm_forward, .backward = lm_backward},
    {.name = "classify", .summary = "a head over the dataset's labels", .head = ST_HEAD_LABELS,
     .metric = "accuracy", .setup = head_setup, .forward = classify_forward, .backward = head_backward,
     .free = head_free},
    {.name = "reward", .summary = "a scalar head on preference pairs: -log sigmoid(r_chosen - r_rejected)",
     .pairs = 1, .head = ST_HEAD_SCALAR, .metric = "pair accuracy", .setup = head_setup,
     .forward = reward_forward, .backward = head_backward, .free = head_free},
    {.name = "dpo", .summary = "the language model on preference pairs against a frozen copy of its starting weights",
     .pairs = 1, .metric = "pair accuracy", .setup = dpo_setup, .forward = dpo_forward, .backward = lm_backward,
     .load_start = dpo_load_start, .free = dpo_free},
    ST_RL_METHOD("grpo", "on-policy RL: groups of answers per prompt, rewards normalised within the group"),
    ST_RL_METHOD("rloo", "on-policy RL: each answer's baseline is the mean reward of the others of its prompt"),
    ST_RL_METHOD("ppo", "on-policy RL: a value model, GAE, per-token KL penalty, several epochs per rollout"),
};

const st_method *st_method_find(const char *name)
{
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (!strcmp(methods[i].name, name)) return &methods[i];
    return NULL;
}

const char *st_method_names(void) { return "pretrain, sft, classify, reward, dpo, grpo, rloo, ppo"; }
