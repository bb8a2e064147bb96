/* score.c: `shardtune score CKPT --input candidates.jsonl --out scored.jsonl`.
 *
 * The rater loop's other half: a reward model (a checkpoint trained with
 * method reward) scores candidate answers, e.g. the {"prompt", "completion"}
 * lines `shardtune generate --prompts FILE --out FILE` writes, for best-of-n
 * selection or for picking pairs to send to human raters. Each line is
 * rendered exactly as `prepare` renders a prompt/response record (the same
 * template and max-length policy), so the model sees what it was trained on;
 * the output is each input object with a "reward" field, in input order.
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

/* The reward model: body + 1-output head, loaded whole on this rank. */
typedef struct {
    st_grid g;
    st_infer x;           /* body, 1-output head, tokenizer */
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
    const st_infer_opts io = {.B = o->batch_size, .T = o->seq_len, .head = ST_INFER_HEAD_REQUIRED,
                              .merge_lora = 1, .need_tokenizer = 1, .precision = o->precision};
    ST_TRY(st_infer_open(&v->x, ckpt, &v->g, &io));
    st_infer_print_loaded(&v->x, "score", &v->g);
    if (v->x.n_labels != 1)
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

/* The rows [0, n) of tokens/lengths -> rewards. */
static st_err score_batch(scorer *v, const int32_t *tokens, const int32_t *lengths, int n, double *rewards)
{
    double none = 0;
    ST_TRY(st_cls_forward(&v->x.head, &v->x.m, tokens, lengths, NULL, n, v->T, 1.0f, &none, NULL));
    for (int i = 0; i < n; i++) rewards[i] = v->x.head.logits[i];
    return ST_OK;
}

/* One line's text fields as a rendered, fitted token sequence in row r. */
static st_err render_line(scorer *v, st_tokseq *seq, const char *prompt, const char *completion, int32_t *row,
                          int32_t *len)
{
    st_turn turns[2] = {{ST_ROLE_USER, prompt, strlen(prompt)}, {ST_ROLE_ASSISTANT, completion, strlen(completion)}};
    ST_TRY(st_template_render(seq, v->tpl, v->x.tok, turns, 2));
    int cut_p = 0, cut_r = 0;
    st_tokseq_fit(seq, (size_t)v->T, 0, &cut_p, &cut_r);
    if (seq->n == 0) ST_FAIL(ST_ERR_ARG, "the rendered sequence is empty");
    memset(row, 0, sizeof *row * (size_t)v->T);
    memcpy(row, seq->ids, sizeof *row * seq->n);
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
    const int B = o->batch_size;
    cJSON **objs = calloc((size_t)B, sizeof *objs);
    int32_t *tokens = calloc((size_t)B * v->T, sizeof *tokens), *lengths = calloc((size_t)B, sizeof *lengths);
    double *rewards = calloc((size_t)B, sizeof *rewards);
    st_tokseq seq = {0};
    st_err e = ST_OK;
    if (!f) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot write %s", tmp);
    if (!e && (!objs || !tokens || !lengths || !rewards))
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
            e = render_line(v, &seq, p->valuestring, c->valuestring, tokens + (size_t)n * v->T, &lengths[n]);
            n++;
            if (e) {
                st_error_trace(__FILE__, __LINE__, __func__);
                fprintf(stderr, "shardtune: in %s:%d\n", o->input, lineno);
                break;
            }
        }
        if (n == B || (eof && n > 0)) {
            if ((e = score_batch(v, tokens, lengths, n, rewards))) break;
            for (int i = 0; i < n; i++) {
                cJSON_AddNumberToObject(objs[i], "reward", rewards[i]);
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
    else printf("scored %ld lines of %s -> %s (template %s, seq_len %d)\n", scored, o->input, o->out, v->tpl->name, v->T);
    st_tokseq_free(&seq);
    free(objs);
    free(tokens);
    free(lengths);
    free(rewards);
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
                          "usage: shardtune score REWARD_CKPT --input candidates.jsonl --out scored.jsonl\n\n"
                          "Scores answers with a reward model (method reward): each {\"prompt\", \"completion\"}\n"
                          "line (what `generate --prompts F --out F` writes) is rendered as prepare renders\n"
                          "prompt/response data and gets a \"reward\" field; lines keep their order.\n\n",
                          "the reward model's checkpoint", score);
}
