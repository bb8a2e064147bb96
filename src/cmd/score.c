/* score.c: `shardtune score CKPT --input candidates.jsonl --out scored.jsonl`.
 *
 * The rater loop's other half: a reward model (a checkpoint trained with
 * method reward) scores candidate answers, e.g. the {"prompt", "completion"}
 * lines `shardtune generate --prompts FILE --out FILE` writes, for best-of-n
 * selection or for picking pairs to send to human raters. Each line is
 * rendered exactly as `prepare` renders a prompt/response record (the same
 * template and max-length policy), so the model sees what it was trained on;
 * the output is each input object with a "reward" field, in input order.
 * A checkpoint without a head is scored as a language model instead: each
 * line gets "logprob", log p(completion | prompt) summed over the tokens the
 * template's loss mask marks (the answer and its end of turn), and
 * "n_tokens", their count: lm-evaluation-harness's loglikelihood request,
 * which multiple-choice tasks (LegalBench's Yes/No) compare across answers.
 * Scoring is a small job: world rank 0 does it (tp 1), the other ranks wait.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "cmd/options.h"
#include "io/chat/chat_template.h"
#include "io/chat/template.h"
#include "io/checkpoint.h"
#include "io/inference.h"
#include "io/jsonl.h"
#include "io/tok/tokenizer.h"
#include "model/classify.h"
#include "model/lora.h"
#include "mpi/comm.h"

typedef struct {
    char *input, *out, *template_name, *prompt_field, *completion_field, *precision;
    int seq_len, batch_size;
} score_opts;

static const st_option score_options[] = {
    {"input", ST_OPT_STRING, offsetof(score_opts, input), NULL, "JSONL of {\"prompt\": ..., \"completion\": ...} lines (required)", NULL},
    {"out", ST_OPT_STRING, offsetof(score_opts, out), NULL, "write the lines with a \"reward\" field here (required)", NULL},
    {"template", ST_OPT_STRING, offsetof(score_opts, template_name), NULL, "how prompt and completion become tokens, as in prepare: default, plain, chatml or tokenizer (unset: tokenizer when the tokenizer has a chat template, else default); use the reward model's training data's", NULL},
    {"prompt-field", ST_OPT_STRING, offsetof(score_opts, prompt_field), "prompt", "the field holding the prompt", NULL},
    {"completion-field", ST_OPT_STRING, offsetof(score_opts, completion_field), "completion", "the field holding the answer to score", NULL},
    {"seq_len", ST_OPT_INT, offsetof(score_opts, seq_len), "0", "tokens per sequence (0 = the model's max_seq); longer prompts are cut from the left", "[0,)"},
    {"batch_size", ST_OPT_INT, offsetof(score_opts, batch_size), "8", "sequences scored together", "[1,)"},
    {"precision", ST_OPT_STRING, offsetof(score_opts, precision), "fp32", "matrix products: fp32, bf16 (bf16 inputs, fp32 accumulation) or auto (bf16 where this CPU's bf16 matmul is faster)", NULL},
};

/* The reward model (body + 1-output head) or language model, loaded whole on this rank. */
typedef struct {
    st_grid g;
    st_infer x;           /* body, the 1-output head when x.has_head, tokenizer */
    st_chat_template *ct;
    st_template own;
    const st_template *tpl;
    int T;
} scorer;

static st_err load(scorer *v, const char *ckpt, const score_opts *o)
{
    ST_TRY(st_grid_init(&v->g, MPI_COMM_SELF, 1));
    if (o->batch_size < 1) ST_FAIL(ST_ERR_ARG, "--batch_size %d: expected at least 1", o->batch_size);
    /* a reward model trained with LoRA: its adapters merged into the weights, as eval does */
    const st_infer_opts io = {.B = o->batch_size, .T = o->seq_len, .head = ST_INFER_HEAD,
                              .merge_lora = 1, .need_tokenizer = 1, .precision = o->precision};
    ST_TRY(st_infer_open(&v->x, ckpt, &v->g, &io));
    st_infer_print_loaded(&v->x, "score", &v->g);
    if (v->x.has_head && v->x.n_labels != 1)
        ST_FAIL(ST_ERR_ARG, "'%s' is not a reward model (its head has %d outputs: a classifier); train one with "
                "method reward", ckpt, v->x.n_labels);
    v->T = v->x.m.T;
    if (v->T < 2 || o->seq_len > v->x.cfg.max_seq)
        ST_FAIL(ST_ERR_ARG, "--seq_len %d: expected 2..%d (the model's max_seq)", o->seq_len ? o->seq_len : v->T,
                v->x.cfg.max_seq);
    /* the template: prepare's rule */
    int has = st_tokenizer_chat_template(v->x.tok) != NULL;
    const char *name = o->template_name ? o->template_name : has ? "tokenizer" : "default";
    ST_TRY(st_template_resolve(name, v->x.tok, ckpt, &v->own, &v->ct, &v->tpl));
    return ST_OK;
}

static void unload(scorer *v)
{

    if (v->ct) st_chat_template_free(v->ct);
    st_infer_close(&v->x);
    st_grid_free(&v->g);
}

/* Per-batch buffers: rows of tokens with their template loss masks. */
typedef struct {
    int32_t *tokens, *lengths;   /* (B, T), (B) */
    uint8_t *masks;              /* (B, T): 1 on the completion's tokens */
    int32_t *targets;            /* (B, T) language model: the next token */
    float *fmask, *losses;       /* (B, T) language model: mask at the target, -log p(target) */
    double *scores;              /* (B) reward or log-probability */
    int *counts;                 /* (B) language model: tokens scored */
} batch;

/* The rows [0, n) of b -> b->scores: the reward head's output. */
static st_err reward_batch(scorer *v, batch *b, int n)
{
    double none = 0;
    ST_TRY(st_cls_forward(&v->x.head, &v->x.m, b->tokens, b->lengths, NULL, n, v->T, 1.0f, &none, NULL));
    for (int i = 0; i < n; i++) b->scores[i] = v->x.head.logits[i];
    return ST_OK;
}

/* The rows [0, n) of b -> b->scores = sum of log p(token) over the tokens whose
 * mask is 1, each predicted from the tokens before it; b->counts their number. */
static st_err logprob_batch(scorer *v, batch *b, int n)
{
    const int T = v->T;
    for (int i = 0; i < n; i++)
        for (int t = 0; t < T; t++) {
            size_t k = (size_t)i * T + t;
            int next = t + 1 < b->lengths[i];
            b->targets[k] = next ? b->tokens[k + 1] : 0;
            b->fmask[k] = next && b->masks[k + 1] ? 1.0f : 0.0f;
        }
    double loss_sum = 0;
    ST_TRY(st_model_forward(&v->x.m, b->tokens, b->targets, b->fmask, n, T, 1.0f, &loss_sum));
    st_model_position_losses(&v->x.m, b->losses);
    for (int i = 0; i < n; i++) {
        double lp = 0;
        int c = 0;
        for (int t = 0; t < T; t++) {
            size_t k = (size_t)i * T + t;
            if (b->fmask[k] > 0) lp -= b->losses[k], c++;
        }
        b->scores[i] = lp;
        b->counts[i] = c;
    }
    return ST_OK;
}

/* One line's text fields as a rendered, fitted token sequence in row r. */
static st_err render_line(scorer *v, st_tokseq *seq, const char *prompt, const char *completion, int32_t *row,
                          uint8_t *mask, int32_t *len)
{
    st_turn turns[2] = {{ST_ROLE_USER, prompt, strlen(prompt)}, {ST_ROLE_ASSISTANT, completion, strlen(completion)}};
    ST_TRY(st_template_render(seq, v->tpl, v->x.tok, turns, 2));
    int cut_p = 0, cut_r = 0;
    st_tokseq_fit(seq, (size_t)v->T, 0, &cut_p, &cut_r);
    if (seq->n == 0) ST_FAIL(ST_ERR_ARG, "the rendered sequence is empty");
    memset(row, 0, sizeof *row * (size_t)v->T);
    memcpy(row, seq->ids, sizeof *row * seq->n);
    memset(mask, 0, (size_t)v->T);
    memcpy(mask, seq->mask, seq->n);
    *len = (int32_t)seq->n;
    return ST_OK;
}

/* Score every line of the input (rank 0), writing the output file atomically. */
static st_err score_file(scorer *v, const score_opts *o)
{
    st_lines *r = NULL;
    ST_TRY(st_lines_open(&r, o->input));
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", o->out);
    FILE *f = fopen(tmp, "w");
    const int B = o->batch_size, lm = !v->x.has_head;
    const size_t BT = (size_t)B * v->T;
    cJSON **objs = calloc((size_t)B, sizeof *objs);
    batch b = {.tokens = calloc(BT, sizeof *b.tokens), .lengths = calloc((size_t)B, sizeof *b.lengths),
               .masks = calloc(BT, 1), .targets = calloc(BT, sizeof *b.targets), .fmask = calloc(BT, sizeof *b.fmask),
               .losses = calloc(BT, sizeof *b.losses), .scores = calloc((size_t)B, sizeof *b.scores),
               .counts = calloc((size_t)B, sizeof *b.counts)};
    st_tokseq seq = {0};
    st_err e = ST_OK;
    if (!f) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot write %s", tmp);
    if (!e && (!objs || !b.tokens || !b.lengths || !b.masks || !b.targets || !b.fmask || !b.losses || !b.scores ||
               !b.counts))
        e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    int n = 0, lineno = 0, eof = 0;
    long scored = 0;
    while (!e && !eof) {
        const char *line;
        size_t len;
        if ((e = st_lines_next(r, &line, &len, &eof))) break;
        if (!eof) {
            lineno++;
            if (st_line_blank(line, len)) continue;
            cJSON *j = NULL;
            if ((e = st_json_parse_line(&j, line, len, o->input, lineno))) break;
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, o->prompt_field);
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, o->completion_field);
            objs[n] = j;
            if (!cJSON_IsString(p) || !cJSON_IsString(c)) {
                e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s:%d: field \"%s\" is missing or "
                                 "not a string (set --prompt-field / --completion-field)", o->input, lineno,
                                 !cJSON_IsString(p) ? o->prompt_field : o->completion_field);
                n++;
                break;
            }
            e = render_line(v, &seq, p->valuestring, c->valuestring, b.tokens + (size_t)n * v->T,
                            b.masks + (size_t)n * v->T, &b.lengths[n]);
            n++;
            if (e) {
                st_error_trace(__FILE__, __LINE__, __func__);
                fprintf(stderr, "shardtune: in %s:%d\n", o->input, lineno);
                break;
            }
        }
        if (n == B || (eof && n > 0)) {
            if ((e = lm ? logprob_batch(v, &b, n) : reward_batch(v, &b, n))) break;
            for (int i = 0; i < n; i++) {
                cJSON_AddNumberToObject(objs[i], lm ? "logprob" : "reward", b.scores[i]);
                if (lm) cJSON_AddNumberToObject(objs[i], "n_tokens", b.counts[i]);
                char *s = cJSON_PrintUnformatted(objs[i]);
                if (!s || fprintf(f, "%s\n", s) < 0)
                    e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "writing %s failed", tmp);
                free(s);
                cJSON_Delete(objs[i]);
                objs[i] = NULL;
            }
            scored += n;
            n = 0;
        }
    }
    for (int i = 0; i < B && objs; i++) cJSON_Delete(objs[i]);
    if (f && fclose(f) && !e) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "closing %s failed", tmp);
    if (!e && rename(tmp, o->out)) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot rename %s", tmp);
    if (e) remove(tmp);
    else printf("scored %ld lines of %s -> %s (%s, template %s, seq_len %d)\n", scored, o->input, o->out,
                lm ? "language model: logprob" : "reward model: reward", v->tpl->name, v->T);
    st_tokseq_free(&seq);
    free(objs);
    free(b.tokens), free(b.lengths), free(b.masks), free(b.targets), free(b.fmask), free(b.losses);
    free(b.scores), free(b.counts);
    st_lines_close(r);
    return e;
}

static st_err score(const char *ckpt, MPI_Comm world, void *opts)
{
    const score_opts *o = opts;
    int rank = 0;
    rank = st_comm_rank(world);
    st_err e = ST_OK;
    if (!o->input || !o->out) e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "score needs --input FILE.jsonl and --out FILE.jsonl");
    if (!e && rank == 0) {
        scorer v;
        memset(&v, 0, sizeof v);
        e = load(&v, ckpt, o);
        if (!e) e = score_file(&v, o);
        unload(&v);
    }
    return st_agree(world, e);
}

st_err st_cmd_score(int argc, char **argv, MPI_Comm world)
{
    score_opts o;
    return st_options_run(argc, argv, world, score_options, (int)(sizeof score_options / sizeof score_options[0]), &o,
                          "usage: shardtune score CKPT --input candidates.jsonl --out scored.jsonl\n\n"
                          "Scores answers with a reward model (method reward): each {\"prompt\", \"completion\"}\n"
                          "line (what `generate --prompts F --out F` writes) is rendered as prepare renders\n"
                          "prompt/response data and gets a \"reward\" field; lines keep their order.\n"
                          "A checkpoint without a head (a language model) gives each line \"logprob\",\n"
                          "log p(completion | prompt) over the tokens the template's loss mask marks, and\n"
                          "\"n_tokens\", their count (compare answers to a multiple-choice question).\n\n",
                          "the reward model's or language model's checkpoint", score);
}
