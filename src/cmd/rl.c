/* rl.c: the on-policy RL methods grpo, rloo and ppo (rl.h). */
#include "cmd/rl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/answer.h"
#include "cmd/rewards.h"
#include "core/rng.h"
#include "core/timer.h"
#include "io/checkpoint.h"
#include "io/lora_ckpt.h"
#include "model/decode.h"
#include "model/rl.h"
#include "model/value.h"
#include "mpi/comm.h"

typedef enum { RL_GRPO, RL_RLOO, RL_PPO } rl_kind;

/* the step's numbers, summed over dp: see st_rl_stats */
enum { S_ANSWERS, S_REWARD, S_REWARD2, S_TOKENS, S_STOPPED, S_ENTROPY, S_KL, S_SCORE, S_COUNT };

typedef struct {
    rl_kind kind;
    int G, epochs, mb;           /* answers per prompt, passes, updates per pass */
    float kl_coef;
    int R, P, T, B;              /* answers and prompts of this rank per step; row length; micro-batch rows */
    int on_policy;               /* one update per step and nothing in the advantages needs the sampling
                                  * policy's log-probabilities: the update's own forward gives them */
    st_decoder dec;
    int gb;                      /* answers decoded together */
    st_decode_row *drows;        /* (gb) */
    st_decode_opts dopt;
    int32_t stop[16];
    int has_ref;
    st_model ref;                /* the frozen reference: the run's starting weights */
    st_rewarder *rw;
    int has_value;
    st_model vbody;              /* ppo: the value model */
    st_value_head vhead;
    st_batch pb;                 /* the step's prompts (as the loader gives their docs) */
    int n_prompts;               /* rows of pb: max(P, B) */
    int *pplen;                  /* (n_prompts) prompt tokens */
    char **ref_text;             /* (n_prompts) reference answers */
    int32_t *tokens, *targets;   /* (R, T) prompt + answer */
    float *mask;                 /* (R, T) 1 where the target is an answer token */
    int32_t *lengths;            /* (R) prompt + answer tokens */
    int *alen, *stopped;         /* (R) */
    int64_t *grow;               /* (R) global answer index */
    int32_t *ans;                /* (R, max_new) */
    char **ans_text;             /* (R) */
    float *old_lp, *ref_lp, *ent, *adv, *old_v, *ret, *tok_r; /* (R, T) */
    double *reward, *score, *seq_r; /* (R) */
    float *work;                 /* 2 B T */
    float *mbs[6];               /* (B, Tm) the micro-batch's old_lp, ref_lp, adv, old_v, ret, entropy */
    int32_t *pk;                 /* (B, Tm) tokens packed for the reward model */
    int cur, Tm;                 /* the micro-batch in t->batch: its first row, its columns */
    double step_t0, gen_s;
    double upd[6];               /* over the step's updates: pg loss, clipped, counted, value loss, value clipped, value count */
} rl_state;

static int is_rank0(const trainer *t) { return t->grid.world_rank == 0; }

/* ---- set-up ---------------------------------------------------------------- */

static st_err parse_kind(const char *name, rl_kind *k)
{
    if (!strcmp(name, "grpo")) *k = RL_GRPO;
    else if (!strcmp(name, "rloo")) *k = RL_RLOO;
    else if (!strcmp(name, "ppo")) *k = RL_PPO;
    else ST_FAIL(ST_ERR_INTERNAL, "'%s' is not an RL method", name);
    return ST_OK;
}

/* eos, the templates' end-of-turn tokens the tokenizer has, and rl.stop */
static st_err stop_tokens(rl_state *s, const trainer *t)
{
    static const char *const turn_ends[] = {"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"};
    int n = 0;
    if (st_tokenizer_eos(t->tok) >= 0) s->stop[n++] = st_tokenizer_eos(t->tok);
    for (size_t i = 0; i < sizeof turn_ends / sizeof turn_ends[0]; i++) {
        const int id = st_tokenizer_token_id(t->tok, turn_ends[i]);
        if (id >= 0) s->stop[n++] = id;
    }
    if (t->o->rl.stop) {
        char *list = strdup(t->o->rl.stop), *save = NULL;
        if (!list) ST_FAIL(ST_ERR_MEM, "out of memory");
        for (char *p = strtok_r(list, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
            const int id = st_tokenizer_token_id(t->tok, p);
            if (id < 0 || n == (int)(sizeof s->stop / sizeof s->stop[0])) {
                st_err e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "rl.stop: '%s' %s", p,
                                        id < 0 ? "is not a token of the dataset's tokenizer" : ": too many stop tokens");
                free(list);
                return e;
            }
            s->stop[n++] = id;
        }
        free(list);
    }
    if (!n) ST_FAIL(ST_ERR_ARG, "the tokenizer has no eos: give the tokens that end an answer with rl.stop");
    s->dopt.stop = s->stop;
    s->dopt.n_stop = n;
    return ST_OK;
}

/* The method's defaults and the shape checks: whole groups on every rank and
 * in every minibatch. */
static st_err resolve(rl_state *s, trainer *t)
{
    train_opts *o = t->o;
    rl_opts *r = &o->rl;
    ST_TRY(parse_kind(o->method, &s->kind));
    const char *kind = st_dataset_kind(t->ds);
    if (strcmp(kind, "sft") && strcmp(kind, "chat"))
        ST_FAIL(ST_ERR_ARG, "method %s takes its prompts from sft or chat data ('%s' is %s): prepare prompt/response "
                "or messages JSONL, the response being the reference answer the rules compare with", o->method,
                o->data_train, kind);
    static const int def_g[] = {8, 2, 1}, def_epochs[] = {1, 1, 4};
    static const float def_kl[] = {0.0f, 0.05f, 0.05f};
    s->G = r->group_size > 0 ? r->group_size : def_g[s->kind];
    s->epochs = r->epochs > 0 ? r->epochs : def_epochs[s->kind];
    s->mb = r->minibatches;
    s->kl_coef = r->kl_coef >= 0 ? r->kl_coef : def_kl[s->kind];
    if (s->kind != RL_PPO && s->G < 2)
        ST_FAIL(ST_ERR_ARG, "method %s compares answers to the same prompt: rl.group_size must be at least 2, not %d",
                o->method, s->G);
    if (t->micro_per_step % s->mb)
        ST_FAIL(ST_ERR_ARG, "rl.minibatches %d must divide the %d micro-batches of each rank's share of a step", s->mb,
                t->micro_per_step);
    s->B = o->batch_size;
    s->T = o->seq_len;
    s->R = t->micro_per_step * s->B;
    if ((s->R / s->mb) % s->G)
        ST_FAIL(ST_ERR_ARG, "each rank's answers per update (global_batch %d / dp %d / rl.minibatches %d = %d) must be "
                "whole groups of rl.group_size %d", o->global_batch, t->grid.dp_size, s->mb, s->R / s->mb, s->G);
    s->P = s->R / s->G;
    /* a prompt and its reference answer must fit a row (the loader cuts longer docs at seq_len) */
    int64_t long_docs = 0, first = -1;
    for (int64_t d = 0; d < st_dataset_num_docs(t->ds); d++)
        if (st_dataset_doc_len(t->ds, d) > o->seq_len + 1) long_docs++, first = first < 0 ? d : first;
    if (long_docs)
        ST_FAIL(ST_ERR_ARG, "'%s': %lld records (the first is record %lld) are longer than seq_len %d: their reference "
                "answers would be cut and their prompts may leave no room to answer; prepare with --max-len %d "
                "(prompts are cut from the left)", o->data_train, (long long)long_docs, (long long)first + 1,
                o->seq_len, o->seq_len);
    if (r->max_new < 1 || r->max_new >= o->seq_len)
        ST_FAIL(ST_ERR_ARG, "rl.max_new %d: expected 1 .. seq_len - 1 (%d)", r->max_new, o->seq_len - 1);
    /* rl.temperature > 0, rl.clip in (0, 1), rl.minibatches >= 1: the option table's ranges */
    s->dopt.s = (st_sampling){.temperature = r->temperature, .top_k = r->top_k, .top_p = r->top_p};
    s->dopt.max_new = r->max_new;
    s->dopt.max_len = o->seq_len;
    ST_TRY(stop_tokens(s, t));
    /* the sampler's key; a resumed run takes the checkpoint's */
    t->rng[0] = st_splitmix64((uint64_t)(r->seed ? r->seed : o->seed) ^ 0x5a3b1e5eedULL);
    return ST_OK;
}

static st_err alloc_buffers(rl_state *s, const trainer *t)
{
    /* prompts: a step's, or a micro-batch of validation prompts */
    const size_t R = (size_t)s->R, RT = R * s->T, P = (size_t)(s->P > s->B ? s->P : s->B);
    s->n_prompts = (int)P;
    ST_TRY(st_batch_alloc(&s->pb, (int)P, s->T));
    ST_ALLOC(s->pplen, P, "prompt lengths");
    ST_ALLOC(s->ref_text, P, "reference answers");
    ST_ALLOC(s->tokens, RT, "rollout tokens");
    ST_ALLOC(s->targets, RT, "rollout targets");
    ST_ALLOC(s->mask, RT, "rollout mask");
    ST_ALLOC(s->lengths, R, "rollout lengths");
    ST_ALLOC(s->alen, R, "answer lengths");
    ST_ALLOC(s->stopped, R, "answer stops");
    ST_ALLOC(s->grow, R, "answer indices");
    ST_ALLOC(s->ans, R * t->o->rl.max_new, "answers");
    ST_ALLOC(s->ans_text, R, "answer texts");
    float **f[] = {&s->old_lp, &s->ref_lp, &s->ent, &s->adv, &s->old_v, &s->ret, &s->tok_r};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) ST_ALLOC(*f[i], RT, "rollout scores");
    ST_ALLOC(s->reward, R, "rewards");
    ST_ALLOC(s->score, R, "reward model scores");
    ST_ALLOC(s->seq_r, R, "answer rewards");
    ST_ALLOC(s->work, 2 * (size_t)s->B * s->T, "RL scratch");
    for (int k = 0; k < 6; k++) ST_ALLOC(s->mbs[k], (size_t)s->B * s->T, "micro-batch scores");
    ST_ALLOC(s->pk, (size_t)s->B * s->T, "packed tokens");
    return ST_OK;
}

/* ppo: the value model (a body and a per-position head), trained beside the
 * policy as two parameter sets. Its shape is the checkpoint's it starts from
 * (value_from, else the reward model), else the policy's. */
static st_err value_setup(rl_state *s, trainer *t)
{
    const train_opts *o = t->o;
    const char *from = o->rl.value_from ? o->rl.value_from : st_rewarder_model_path(s->rw);
    st_config cfg = t->model.lay.cfg;
    if (from) ST_TRY(st_ckpt_read_config(from, t->grid.world, &cfg));
    if (cfg.max_seq < o->seq_len)
        ST_FAIL(ST_ERR_ARG, "the value model from '%s' reads at most %d tokens, fewer than seq_len %d", from,
                cfg.max_seq, o->seq_len);
    /* fp32 whatever the run's precision: the trainer refreshes only the policy's bf16 copy */
    ST_TRY(st_model_create(&s->vbody, &cfg, t->grid.tp, s->B, s->T,
                           o->recompute ? ST_MODEL_TRAIN_RECOMPUTE : ST_MODEL_TRAIN));
    st_model_init(&s->vbody, (uint64_t)o->seed ^ 0x7a1e); /* unless load_start loads a checkpoint over it */
    ST_TRY(st_value_create(&s->vhead, &s->vbody, (uint64_t)o->seed));
    s->has_value = 1;
    ST_TRY(st_trainer_add_set(t, "value model", "value", NULL, &s->vbody.lay, s->vbody.params, s->vbody.grads));
    ST_TRY(st_trainer_add_set(t, "value head", "value_head", NULL, &s->vhead.lay, s->vhead.params, s->vhead.grads));
    return ST_OK;
}

st_err st_rl_setup(trainer *t)
{
    const train_opts *o = t->o;
    rl_state *s;
    ST_ALLOC(s, 1, "RL state");
    t->mstate = s;
    ST_TRY(resolve(s, t));
    ST_TRY(alloc_buffers(s, t));
    ST_TRY(st_rewarder_open(&s->rw, t));
    /* decode all of the rank's answers at once (bigger products per token), as
     * far as rl.gen_batch and the model's B x T positions allow */
    const int cap = o->rl.gen_batch > 0 ? o->rl.gen_batch : s->R > s->B ? s->R : s->B;
    s->gb = cap < s->B * s->T ? cap : s->B * s->T;
    ST_ALLOC(s->drows, s->gb, "decoding rows");
    ST_TRY(st_decoder_init(&s->dec, &t->model, s->gb));
    if (s->kl_coef > 0) { /* forward only: one layer's activations */
        ST_TRY(st_model_create(&s->ref, &t->model.lay.cfg, t->grid.tp, s->B, s->T, ST_MODEL_INFER));
        s->has_ref = 1;
    }
    if (s->kind == RL_PPO) ST_TRY(value_setup(s, t));
    s->on_policy = s->epochs * s->mb == 1 && (s->kind == RL_GRPO || (s->kind == RL_RLOO && !s->has_ref));
    if (is_rank0(t)) {
        printf("%s: %d answers per prompt, %d prompts per step (%d per rank), %d update%s per step, KL coefficient "
               "%g%s; reward = %s\n", o->method, s->G, o->global_batch / s->G, s->P, s->epochs * s->mb,
               s->epochs * s->mb > 1 ? "s" : "", (double)s->kl_coef, s->has_ref ? "" : " (no reference model)",
               st_rewarder_describe(s->rw));
        if (o->rl.temperature != 1.0f || o->rl.top_k || o->rl.top_p < 1.0f)
            printf("warning: answers are sampled with temperature %g, top_k %d, top_p %g but their log-probabilities "
                   "are the model's own: the ratio and KL are then off-policy estimates\n",
                   (double)o->rl.temperature, o->rl.top_k, (double)o->rl.top_p);
    }
    return ST_OK;
}

/* from's weights (and its head as the value head, when it has one, LoRA merged) into the value model */
static st_err load_value(rl_state *s, trainer *t, const char *from)
{
    st_ckpt_tensors c = {.lay = &s->vbody.lay, .params = s->vbody.params, .n_sets = 1};
    c.sets[0] = (st_ckpt_set){.group = "head", .lay = &s->vhead.lay, .params = s->vhead.params};
    ST_TRY(st_ckpt_load(from, &t->grid, &c, NULL, NULL, ST_CKPT_WEIGHTS_ONLY | ST_CKPT_SETS_OPTIONAL, NULL, NULL,
                        NULL));
    free(c.sets[0].meta);
    int merged = 0;
    ST_TRY(st_lora_merge_checkpoint(from, &t->grid, &s->vbody.lay, s->vbody.params, &merged));
    return ST_OK;
}

/* The reference and the value model's starting points (called once the
 * policy is loaded or drawn; on a resume the checkpoint already gave the
 * value model its trained weights, as a parameter set). The reference is the
 * policy as it starts: a copy of it, or on a resume rebuilt from init_from
 * or the seed as the run began; in the policy's precision. */
st_err st_rl_load_start(trainer *t)
{
    rl_state *s = t->mstate;
    if (s->has_ref) {
        if (!t->resumed) memcpy(s->ref.params, t->model.params, t->model.lay.numel * sizeof(float));
        else if (t->o->init_from) ST_TRY(st_trainer_load_init(t, &s->ref));
        else st_model_init(&s->ref, (uint64_t)t->o->seed);
        ST_TRY(st_model_set_precision(&s->ref, t->prec.bf16)); /* after its weights are in */
    }
    if (!s->has_value || t->resumed) return ST_OK;
    const char *from = t->o->rl.value_from ? t->o->rl.value_from : st_rewarder_model_path(s->rw);
    if (from) return load_value(s, t, from);
    if (t->o->init_from) return st_trainer_load_init(t, &s->vbody);
    return ST_OK;
}

void st_rl_free(trainer *t)
{
    rl_state *s = t->mstate;
    if (!s) return;
    st_decoder_free(&s->dec);
    if (s->has_ref) st_model_free(&s->ref);
    if (s->has_value) st_value_free(&s->vhead), st_model_free(&s->vbody);
    st_rewarder_close(s->rw);
    st_batch_free(&s->pb);
    for (int i = 0; s->ref_text && i < s->n_prompts; i++) free(s->ref_text[i]);
    for (int i = 0; s->ans_text && i < s->R; i++) free(s->ans_text[i]);
    void *p[] = {s->pplen, s->ref_text, s->tokens, s->targets, s->mask, s->lengths, s->alen, s->stopped, s->grow,
                 s->ans, s->ans_text, s->old_lp, s->ref_lp, s->ent, s->adv, s->old_v, s->ret, s->tok_r, s->reward,
                 s->score, s->seq_r, s->work, s->pk, s->drows};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
    for (int k = 0; k < 6; k++) free(s->mbs[k]);
    free(s);
    t->mstate = NULL;
}

/* ---- the rollout -------------------------------------------------------------- */

/* Prompt k of pb (a doc of sft/chat data): its length (the tokens before the
 * first response token) and its reference answer's text (the response, stop
 * tokens left out). */
static st_err read_prompt(rl_state *s, const trainer *t, int k, int64_t sample)
{
    const st_batch *b = &s->pb;
    const float *mk = b->mask + (size_t)k * s->T;
    const int32_t *tg = b->targets + (size_t)k * s->T;
    int p = 0;
    while (p < b->lengths[k] && mk[p] == 0.0f) p++;
    if (p >= b->lengths[k])
        ST_FAIL(ST_ERR_ARG, "'%s': prompt sample %lld has no response within seq_len %d: RL needs sft or chat records "
                "whose prompt leaves room for an answer (prepare with --max-len to cut long prompts)",
                t->o->data_train, (long long)sample, s->T);
    s->pplen[k] = p + 1;
    int end = p;
    while (end < s->T && mk[end] != 0.0f) end++;
    while (end > p && st_tokenizer_eos(t->tok) >= 0 && tg[end - 1] == st_tokenizer_eos(t->tok)) end--;
    for (int i = 0; i < s->dopt.n_stop; i++) /* a template's end of turn, then eos */
        while (end > p && tg[end - 1] == s->stop[i]) end--;
    free(s->ref_text[k]);
    s->ref_text[k] = NULL;
    return st_answer_text(t->tok, tg + p, (size_t)(end - p), &s->ref_text[k]);
}

/* Row i = prompt + answer: tokens, next-token targets, mask on the answer's
 * targets, length. */
static void build_row(rl_state *s, int i, const int32_t *prompt, int plen, const int32_t *answer, int alen)
{
    const int T = s->T, L = plen + alen; /* <= T: the decoder's max_len */
    int32_t *tk = s->tokens + (size_t)i * T, *tg = s->targets + (size_t)i * T;
    float *mk = s->mask + (size_t)i * T;
    memset(tk, 0, sizeof(int32_t) * T), memset(tg, 0, sizeof(int32_t) * T), memset(mk, 0, sizeof(float) * T);
    memcpy(tk, prompt, sizeof(int32_t) * plen);
    memcpy(tk + plen, answer, sizeof(int32_t) * alen);
    for (int p = 0; p + 1 < L; p++) tg[p] = tk[p + 1];
    for (int p = plen - 1; p + 1 < L; p++) mk[p] = 1.0f;
    s->lengths[i] = L;
}

/* Rows run on the columns they use: a micro-batch's longest row, rounded up
 * to 8, at most T (answers are short next to seq_len: the forward and
 * backward cost scales with the columns). */
static int used_len(const rl_state *s, int i0, int n)
{
    int L = 1;
    for (int i = i0; i < i0 + n; i++) L = s->lengths[i] > L ? s->lengths[i] : L;
    L = (L + 7) / 8 * 8;
    return L < s->T ? L : s->T;
}

/* rows of elem-byte values from stride src_ld to stride dst_ld: the first
 * min(src_ld, dst_ld) of each row, the rest of a longer row zero */
static void restride(void *dst, int dst_ld, const void *src, int src_ld, int rows, size_t elem)
{
    const int n = dst_ld < src_ld ? dst_ld : src_ld;
    for (int r = 0; r < rows; r++) {
        char *d = (char *)dst + (size_t)r * dst_ld * elem;
        memcpy(d, (const char *)src + (size_t)r * src_ld * elem, n * elem);
        memset(d + n * elem, 0, (size_t)(dst_ld - n) * elem);
    }
}

/* rows [i0, i0 + n) into b on Tm columns */
static void pack_rows(const rl_state *s, st_batch *b, int i0, int n, int Tm)
{
    const size_t o = (size_t)i0 * s->T;
    restride(b->tokens, Tm, s->tokens + o, s->T, n, sizeof(int32_t));
    restride(b->targets, Tm, s->targets + o, s->T, n, sizeof(int32_t));
    restride(b->mask, Tm, s->mask + o, s->T, n, sizeof(float));
    memcpy(b->lengths, s->lengths + i0, (size_t)n * sizeof(int32_t));
}

/* Local row i's global answer index: update u's global minibatch j is the
 * same answers on every grid (see rl.h). */
static int64_t global_row(const rl_state *s, const trainer *t, int64_t step, int i)
{
    const int Rm = s->R / s->mb, j = i / Rm, w = i % Rm;
    const int64_t GB = t->o->global_batch;
    return step * GB + (int64_t)j * (GB / s->mb) + (int64_t)t->grid.dp_rank * Rm + w;
}

/* The prompts of this rank's rows: whole groups, runs of consecutive samples. */
static st_err load_prompts(rl_state *s, trainer *t, st_loader *ld, int64_t step, int shuffle)
{
    const int Rm = s->R / s->mb, per = Rm / s->G;
    for (int j = 0; j < s->mb; j++) {
        const int64_t p0 = global_row(s, t, step, j * Rm) / s->G;
        st_batch view = s->pb;
        const size_t off = (size_t)j * per * s->T;
        view.B = per;
        view.tokens += off, view.targets += off, view.mask += off;
        view.labels += j * per, view.lengths += j * per;
        ST_TRY(st_loader_fill(ld, &view, p0, per, shuffle));
        for (int k = 0; k < per; k++) ST_TRY(read_prompt(s, t, j * per + k, p0 + k));
    }
    return ST_OK;
}

/* Answers to rows [0, n) of prompt rows (row i answers prompt i / per_prompt)
 * with the given sampling, into the rollout rows; texts decoded. */
static st_err generate(rl_state *s, trainer *t, int n, int per_prompt, const st_decode_opts *dopt)
{
    const int max_new = t->o->rl.max_new;
    st_decode_row *rows = s->drows;
    for (int i0 = 0; i0 < n; i0 += s->gb) {
        const int nb = n - i0 < s->gb ? n - i0 : s->gb;
        for (int r = 0; r < nb; r++) {
            const int i = i0 + r, k = i / per_prompt;
            rows[r] = (st_decode_row){.prompt = s->pb.tokens + (size_t)k * s->T, .plen = s->pplen[k],
                                      .key = st_splitmix64(t->rng[0] ^ st_splitmix64((uint64_t)s->grow[i])),
                                      .out = s->ans + (size_t)i * max_new};
        }
        ST_TRY(st_decode(&s->dec, rows, nb, dopt));
        for (int r = 0; r < nb; r++) {
            const int i = i0 + r;
            s->alen[i] = rows[r].len;
            s->stopped[i] = rows[r].stopped;
            build_row(s, i, rows[r].prompt, rows[r].plen, rows[r].out, rows[r].len);
            free(s->ans_text[i]);
            s->ans_text[i] = NULL;
            ST_TRY(st_answer_text(t->tok, rows[r].out, (size_t)(rows[r].len - rows[r].stopped), &s->ans_text[i]));
        }
    }
    return ST_OK;
}

/* Rewards of rows [0, n) (row i answers prompt i / per_prompt). */
static st_err rewards(rl_state *s, int n, int per_prompt)
{
    char *refs[s->B];
    for (int i0 = 0; i0 < n; i0 += s->B) {
        const int nb = n - i0 < s->B ? n - i0 : s->B;
        for (int r = 0; r < nb; r++) refs[r] = s->ref_text[(i0 + r) / per_prompt];
        const int Tm = used_len(s, i0, nb);
        restride(s->pk, Tm, s->tokens + (size_t)i0 * s->T, s->T, nb, sizeof(int32_t));
        ST_TRY(st_rewarder_score(s->rw, s->pk, s->lengths + i0, nb, Tm, s->alen + i0, s->stopped + i0,
                                 s->ans_text + i0, refs, s->reward + i0, s->score + i0));
    }
    return ST_OK;
}

/* log-probabilities (policy, reference), entropies and values of every row,
 * a micro-batch at a time (packed in t->batch, which is free until the updates) */
static st_err score_rows(rl_state *s, trainer *t)
{
    const int B = s->B, T = s->T;
    st_batch *b = &t->batch;
    float *out = s->work, *ent = s->work + (size_t)B * T;
    for (int i0 = 0; i0 < s->R; i0 += B) {
        const size_t o = (size_t)i0 * T;
        const int Tm = used_len(s, i0, B);
        pack_rows(s, b, i0, B, Tm);
        if (!s->on_policy) {
            ST_TRY(st_rl_logprobs(&t->model, b->tokens, b->targets, b->mask, B, Tm, out, ent));
            restride(s->old_lp + o, T, out, Tm, B, sizeof(float));
            restride(s->ent + o, T, ent, Tm, B, sizeof(float));
        }
        if (s->has_ref) {
            ST_TRY(st_rl_logprobs(&s->ref, b->tokens, b->targets, b->mask, B, Tm, out, NULL));
            restride(s->ref_lp + o, T, out, Tm, B, sizeof(float));
        }
        if (s->has_value) {
            ST_TRY(st_value_forward(&s->vhead, &s->vbody, b->tokens, B, Tm, out));
            restride(s->old_v + o, T, out, Tm, B, sizeof(float));
        }
    }
    return ST_OK;
}

/* sum over row i's answer tokens of old_lp - ref_lp: its KL estimate */
static double row_kl(const rl_state *s, int i)
{
    double kl = 0;
    for (int p = 0; p < s->T; p++) {
        const size_t k = (size_t)i * s->T + p;
        if (s->mask[k] != 0.0f) kl += (double)s->old_lp[k] - s->ref_lp[k];
    }
    return kl;
}

/* Per-token advantages (and ppo's returns) from the rewards. */
static st_err advantages(rl_state *s, trainer *t)
{
    const int R = s->R, T = s->T;
    if (s->kind == RL_PPO) {
        /* per-token rewards: -kl_coef (log pi_old - log ref), the reward on the answer's last token */
        for (int i = 0; i < R; i++) {
            int last = -1;
            for (int p = 0; p < T; p++) {
                const size_t k = (size_t)i * T + p;
                s->tok_r[k] = 0.0f;
                if (s->mask[k] == 0.0f) continue;
                if (s->has_ref) s->tok_r[k] = -s->kl_coef * (s->old_lp[k] - s->ref_lp[k]);
                last = (int)k;
            }
            if (last >= 0) s->tok_r[last] += (float)s->reward[i];
        }
        st_gae(s->old_v, s->tok_r, s->mask, R, T, t->o->rl.gamma, t->o->rl.lambda, s->adv, s->ret);
        /* whitened over the global batch's answer tokens (unbiased variance, as TRL's masked_whiten) */
        double m[3] = {0, 0, 0};
        for (size_t k = 0; k < (size_t)R * T; k++)
            if (s->mask[k] != 0.0f) m[0] += 1, m[1] += s->adv[k], m[2] += (double)s->adv[k] * s->adv[k];
        ST_TRY(st_allreduce(t->grid.dp, m, 3, ST_M_F64, ST_OP_SUM));
        const double mean = m[1] / m[0], var = (m[2] - m[0] * mean * mean) / (m[0] > 1 ? m[0] - 1 : 1);
        const double inv = 1.0 / sqrt(fmax(var, 0.0) + 1e-8);
        for (size_t k = 0; k < (size_t)R * T; k++)
            s->adv[k] = s->mask[k] != 0.0f ? (float)((s->adv[k] - mean) * inv) : 0.0f;
        return ST_OK;
    }
    /* grpo: the rewards; rloo: minus the answer's KL */
    for (int i = 0; i < R; i++)
        s->seq_r[i] = s->reward[i] - (s->kind == RL_RLOO && s->has_ref ? s->kl_coef * row_kl(s, i) : 0.0);
    double *a = s->seq_r + 0; /* in place: each group's advantages depend only on its own rewards */
    double tmp[s->G];
    for (int g = 0; g < R; g += s->G) {
        if (s->kind == RL_GRPO) st_grpo_advantages(s->seq_r + g, s->G, s->G, t->o->rl.scale_rewards, tmp);
        else st_rloo_advantages(s->seq_r + g, s->G, s->G, tmp);
        memcpy(a + g, tmp, sizeof tmp);
    }
    for (int i = 0; i < R; i++)
        for (int p = 0; p < T; p++) {
            const size_t k = (size_t)i * T + p;
            s->adv[k] = s->mask[k] != 0.0f ? (float)a[i] : 0.0f;
        }
    return ST_OK;
}

st_err st_rl_rollout(trainer *t, int64_t step, st_step_plan *plan)
{
    rl_state *s = t->mstate;
    s->step_t0 = st_now();
    memset(s->upd, 0, sizeof s->upd);
    if (t->lora) st_lora_set_step(t->lora, step, 0); /* no adapter dropout while sampling and scoring */
    for (int i = 0; i < s->R; i++) s->grow[i] = global_row(s, t, step, i);
    st_timer_start(&t->timers, ST_PH_DATA);
    ST_TRY(load_prompts(s, t, t->train, step, t->o->shuffle));
    st_timer_stop(&t->timers, ST_PH_DATA);
    st_timer_start(&t->timers, ST_PH_GENERATE);
    const double g0 = st_now();
    ST_TRY(generate(s, t, s->R, s->G, &s->dopt));
    s->gen_s = st_now() - g0;
    st_timer_stop(&t->timers, ST_PH_GENERATE);
    st_timer_start(&t->timers, ST_PH_FORWARD);
    ST_TRY(score_rows(s, t));
    st_timer_stop(&t->timers, ST_PH_FORWARD);
    st_timer_start(&t->timers, ST_PH_REWARD);
    ST_TRY(rewards(s, s->R, s->G));
    st_timer_stop(&t->timers, ST_PH_REWARD);
    ST_TRY(advantages(s, t));
    plan->updates = s->epochs * s->mb;
    plan->micro = t->micro_per_step / s->mb;
    /* the columns the updates run on (for tokens/s and MFU) */
    double cols = 0;
    for (int i0 = 0; i0 < s->R; i0 += s->B) cols += (double)s->B * used_len(s, i0, s->B);
    ST_TRY(st_allreduce(t->grid.dp, &cols, 1, ST_M_F64, ST_OP_SUM));
    plan->tokens = (int64_t)cols * s->epochs;
    return ST_OK;
}

/* ---- the updates ---------------------------------------------------------------- */

st_err st_rl_fill(trainer *t, int update, int micro, int64_t *g0)
{
    rl_state *s = t->mstate;
    const int Rm = s->R / s->mb, i0 = (update % s->mb) * Rm + micro * s->B;
    const size_t o = (size_t)i0 * s->T;
    s->cur = i0;
    s->Tm = used_len(s, i0, s->B);
    pack_rows(s, &t->batch, i0, s->B, s->Tm);
    float *const from[5] = {s->old_lp, s->ref_lp, s->adv, s->old_v, s->ret};
    for (int k = 0; k < 5; k++) restride(s->mbs[k], s->Tm, from[k] + o, s->T, s->B, sizeof(float));
    *g0 = s->grow[i0];
    return ST_OK;
}

/* The clipped loss (and ppo's value loss) of the micro-batch fill put in
 * t->batch; counts answer tokens (rloo: answers). */
st_err st_rl_forward(trainer *t, int rows, double *loss, double *count, double *correct)
{
    rl_state *s = t->mstate;
    const st_batch *b = &t->batch;
    const size_t o = (size_t)s->cur * s->T;
    const int Tm = s->Tm;
    const st_pg_config c = {.clip = t->o->rl.clip, .kl_coef = s->kind == RL_GRPO ? s->kl_coef : 0.0f,
                            .seq_ratio = s->kind == RL_RLOO};
    st_pg_stats ps;
    ST_TRY(st_pg_forward(&t->model, b->tokens, b->targets, b->mask, rows, Tm, s->on_policy ? NULL : s->mbs[0],
                         s->has_ref ? s->mbs[1] : NULL, s->mbs[2], &c, 1.0f, s->work, s->on_policy ? s->mbs[5] : NULL,
                         &ps));
    if (s->on_policy) { /* the sampling policy's log-probabilities and entropies, for the statistics */
        restride(s->old_lp + o, s->T, s->work, Tm, rows, sizeof(float));
        restride(s->ent + o, s->T, s->mbs[5], Tm, rows, sizeof(float));
    }
    double tokens = 0, answers = 0;
    for (int i = 0; i < rows; i++) {
        double n = 0;
        for (int p = 0; p < Tm; p++) n += b->mask[(size_t)i * Tm + p];
        tokens += n, answers += n > 0;
    }
    *loss = ps.loss;
    *count = s->kind == RL_RLOO ? answers : tokens;
    *correct = 0;
    s->upd[0] += ps.pg, s->upd[1] += ps.clipped, s->upd[2] += s->kind == RL_RLOO ? answers : tokens;
    if (s->has_value) {
        double vl = 0, vc = 0;
        ST_TRY(st_value_forward(&s->vhead, &s->vbody, b->tokens, rows, Tm, NULL));
        st_value_loss(&s->vhead, b->mask, s->mbs[3], s->mbs[4], t->o->rl.value_clip, t->o->rl.vf_coef, &vl, &vc);
        *loss += vl;
        s->upd[3] += vl, s->upd[4] += vc, s->upd[5] += tokens;
    }
    return ST_OK;
}

st_err st_rl_backward(trainer *t)
{
    rl_state *s = t->mstate;
    ST_TRY(st_model_backward(&t->model, t->batch.tokens));
    if (s->has_value) ST_TRY(st_value_backward(&s->vhead, &s->vbody, t->batch.tokens));
    return ST_OK;
}

/* ---- evaluation and statistics ---------------------------------------------------- */

/* Greedy answers to validation prompts (eval_batches x batch_size per dp
 * rank, the first of the validation split's seeded order, the same at every
 * evaluation: files are often sorted by class): *metric their mean reward,
 * *val minus it (lower is better). */
st_err st_rl_evaluate(trainer *t, double *val, double *metric)
{
    rl_state *s = t->mstate;
    const int64_t n = st_loader_num_samples(t->val);
    const st_decode_opts greedy = {.s = {.temperature = 0}, .max_new = s->dopt.max_new, .max_len = s->T,
                                   .stop = s->dopt.stop, .n_stop = s->dopt.n_stop};
    /* the first eval_batches x batch_size prompts, split over the dp ranks:
     * the same prompts, so the same number, on any grid */
    const int64_t want = (int64_t)t->o->eval_batches * s->B, all = want < n ? want : n;
    const int64_t lo = all * t->grid.dp_rank / t->grid.dp_size, hi = all * (t->grid.dp_rank + 1) / t->grid.dp_size;
    double sum[2] = {0, 0};
    for (int64_t p0 = lo; p0 < hi; p0 += s->B) {
        const int rows = hi - p0 < s->B ? (int)(hi - p0) : s->B;
        st_batch view = s->pb;
        view.B = rows;
        ST_TRY(st_loader_fill(t->val, &view, p0, rows, 1));
        for (int i = 0; i < rows; i++) ST_TRY(read_prompt(s, t, i, p0 + i));
        ST_TRY(generate(s, t, rows, 1, &greedy));
        ST_TRY(rewards(s, rows, 1));
        for (int i = 0; i < rows; i++) sum[0] += s->reward[i], sum[1] += 1;
    }
    ST_TRY(st_allreduce(t->grid.dp, sum, 2, ST_M_F64, ST_OP_SUM));
    if (sum[1] > 0) *metric = sum[0] / sum[1], *val = -*metric;
    return ST_OK;
}

/* The step's numbers: sums over the rank's answers and the updates, then over dp. */
int st_rl_stats(const trainer *t, st_stat *out, int max)
{
    const rl_state *s = t->mstate;
    double m[S_COUNT + 6] = {0}, gen_s = s->gen_s;
    for (int i = 0; i < s->R; i++) {
        m[S_ANSWERS] += 1;
        m[S_REWARD] += s->reward[i];
        m[S_REWARD2] += s->reward[i] * s->reward[i];
        m[S_SCORE] += s->score[i];
        m[S_TOKENS] += s->alen[i];
        m[S_STOPPED] += s->stopped[i];
        if (s->has_ref) m[S_KL] += row_kl(s, i);
        for (int p = 0; p < s->T; p++) m[S_ENTROPY] += s->ent[(size_t)i * s->T + p];
    }
    const double *upd = m + S_COUNT;
    memcpy(m + S_COUNT, s->upd, sizeof s->upd);
    if (st_allreduce(t->grid.dp, m, S_COUNT + 6, ST_M_F64, ST_OP_SUM) ||
        st_allreduce(t->grid.dp, &gen_s, 1, ST_M_F64, ST_OP_MAX)) {
        st_error_clear();
        return 0;
    }
    const double n = m[S_ANSWERS] > 0 ? m[S_ANSWERS] : 1;
    const double mean = m[S_REWARD] / n, var = m[S_REWARD2] / n - mean * mean;
    const double step_s = st_now() - s->step_t0;
    st_stat all[] = {
        {"reward", "reward %.3f", mean},
        {"reward_std", "±%.3f", sqrt(fmax(var, 0))},
        {"reward_model", NULL, st_rewarder_model_path(s->rw) ? m[S_SCORE] / n : NAN},
        {"kl", "kl %.4f", s->has_ref ? m[S_KL] / n : NAN},
        {"entropy", "entropy %.3f", m[S_TOKENS] > 0 ? m[S_ENTROPY] / m[S_TOKENS] : NAN},
        {"clip_frac", "clip %.1f%%", upd[2] > 0 ? 100 * upd[1] / upd[2] : NAN},
        {"answer_len", "len %.1f", m[S_TOKENS] / n},
        {"stopped", NULL, m[S_STOPPED] / n},
        {"value_loss", "vloss %.4f", s->has_value && upd[5] > 0 ? upd[3] / t->o->rl.vf_coef / upd[5] : NAN},
        {"gen_tokens_per_s", "gen %.0f tok/s", gen_s > 0 ? m[S_TOKENS] / gen_s : NAN},
        {"gen_share", "gen %.0f%% of step", step_s > 0 ? 100 * s->gen_s / step_s : NAN},
    };
    int k = 0;
    for (size_t i = 0; i < sizeof all / sizeof all[0] && k < max; i++)
        if (isfinite(all[i].value)) out[k++] = all[i];
    return k;
}
