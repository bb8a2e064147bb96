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
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "cmd/options.h"
#include "io/lora_ckpt.h"
#include "io/chat/chat_template.h"
#include "io/chat/template.h"
#include "io/checkpoint.h"
#include "io/jsonl.h"
#include "io/tok/tokenizer.h"
#include "model/classify.h"
#include "model/lora.h"
#include "mpi/comm.h"

typedef struct {
    char *input, *out, *template_name, *prompt_field, *completion_field;
    int seq_len, batch_size;
} score_opts;
static score_opts S;

static const st_option score_options[] = {
    {"input", ST_OPT_STRING, &S.input, NULL, "JSONL of {\"prompt\": ..., \"completion\": ...} lines (required)"},
    {"out", ST_OPT_STRING, &S.out, NULL, "write the lines with a \"reward\" field here (required)"},
    {"template", ST_OPT_STRING, &S.template_name, NULL, "how prompt and completion become tokens, as in prepare: default, plain, chatml or tokenizer (unset: tokenizer when the tokenizer has a chat template, else default); use the reward model's training data's"},
    {"prompt-field", ST_OPT_STRING, &S.prompt_field, "prompt", "the field holding the prompt"},
    {"completion-field", ST_OPT_STRING, &S.completion_field, "completion", "the field holding the answer to score"},
    {"seq_len", ST_OPT_INT, &S.seq_len, "0", "tokens per sequence (0 = the model's max_seq); longer prompts are cut from the left"},
    {"batch_size", ST_OPT_INT, &S.batch_size, "8", "sequences scored together"},
};

/* The reward model: body + 1-output head, loaded whole on this rank. */
typedef struct {
    st_grid g;
    st_model m;
    st_cls_head head;
    st_tokenizer *tok;
    st_chat_template *ct;
    st_template own;
    const st_template *tpl;
    int T;
} scorer;

static st_err load(scorer *v, const char *ckpt)
{
    ST_TRY(st_grid_init(&v->g, MPI_COMM_SELF, 1));
    st_config cfg;
    ST_TRY(st_ckpt_read_config(ckpt, MPI_COMM_SELF, &cfg));
    char *meta = NULL;
    int present = 0, K = 0, pool_mean = 0;
    ST_TRY(st_ckpt_read_set_meta(ckpt, MPI_COMM_SELF, "head", &meta, &present));
    st_err e = present ? st_cls_meta_parse(meta, &K, &pool_mean, NULL) : ST_OK;
    free(meta);
    ST_TRY(e);
    if (K != 1)
        ST_FAIL(ST_ERR_ARG, "'%s' is not a reward model (%s); train one with method reward", ckpt,
                present ? "its head has several outputs: a classifier" : "it has no head");
    v->T = S.seq_len ? S.seq_len : cfg.max_seq;
    if (v->T < 2 || v->T > cfg.max_seq)
        ST_FAIL(ST_ERR_ARG, "--seq_len %d: expected 2..%d (the model's max_seq)", v->T, cfg.max_seq);
    if (S.batch_size < 1) ST_FAIL(ST_ERR_ARG, "--batch_size %d: expected at least 1", S.batch_size);
    ST_TRY(st_model_create(&v->m, &cfg, v->g.tp, S.batch_size, v->T, 0, ST_MODEL_INFER));
    ST_TRY(st_cls_create(&v->head, &v->m, 1, pool_mean, 0));
    st_ckpt_tensors t = {.lay = &v->m.lay, .params = v->m.params, .n_sets = 1};
    t.sets[0] = (st_ckpt_set){.group = "head", .lay = &v->head.lay, .params = v->head.params};
    char *kind = NULL;
    uint8_t *blob = NULL;
    size_t nb = 0;
    ST_TRY(st_ckpt_load(ckpt, &v->g, &t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, &kind, &blob, &nb));
    free(t.sets[0].meta);
    if (!kind) ST_FAIL(ST_ERR_FORMAT, "'%s' stores no tokenizer, so its inputs cannot be tokenized", ckpt);
    e = st_tokenizer_from_blob(&v->tok, kind, blob, nb);
    free(kind);
    free(blob);
    ST_TRY(e);
    int merged = 0; /* a reward model trained with LoRA: its adapters merged into the weights, as eval does */
    ST_TRY(st_lora_merge_checkpoint(ckpt, &v->g, &v->m.lay, v->m.params, &merged));
    /* the template: prepare's rule */
    int has = st_tokenizer_chat_template(v->tok) != NULL;
    const char *name = S.template_name ? S.template_name : has ? "tokenizer" : "default";
    ST_TRY(st_template_resolve(name, v->tok, ckpt, &v->own, &v->ct, &v->tpl));
    return ST_OK;
}

static void unload(scorer *v)
{
    if (v->tok) st_tokenizer_free(v->tok);
    if (v->ct) st_chat_template_free(v->ct);
    st_cls_free(&v->head);
    st_model_free(&v->m);
    st_grid_free(&v->g);
}

/* The rows [0, n) of tokens/lengths -> rewards. */
static st_err score_batch(scorer *v, const int32_t *tokens, const int32_t *lengths, int n, double *rewards)
{
    double none = 0;
    ST_TRY(st_cls_forward(&v->head, &v->m, tokens, lengths, NULL, n, v->T, 1.0f, &none, NULL));
    for (int i = 0; i < n; i++) rewards[i] = v->head.logits[i];
    return ST_OK;
}

/* One line's text fields as a rendered, fitted token sequence in row r. */
static st_err render_line(scorer *v, st_tokseq *seq, const char *prompt, const char *completion, int32_t *row,
                          int32_t *len)
{
    st_turn turns[2] = {{ST_ROLE_USER, prompt, strlen(prompt)}, {ST_ROLE_ASSISTANT, completion, strlen(completion)}};
    ST_TRY(st_template_render(seq, v->tpl, v->tok, turns, 2));
    int cut_p = 0, cut_r = 0;
    st_tokseq_fit(seq, (size_t)v->T, 0, &cut_p, &cut_r);
    if (seq->n == 0) ST_FAIL(ST_ERR_ARG, "the rendered sequence is empty");
    memset(row, 0, sizeof *row * (size_t)v->T);
    memcpy(row, seq->ids, sizeof *row * seq->n);
    *len = (int32_t)seq->n;
    return ST_OK;
}

/* Score every line of the input (rank 0), writing the output file atomically. */
static st_err score_file(scorer *v)
{
    st_lines *r = NULL;
    ST_TRY(st_lines_open(&r, S.input));
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", S.out);
    FILE *f = fopen(tmp, "w");
    const int B = S.batch_size;
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
            if ((e = st_json_parse_line(&j, line, len, S.input, lineno))) break;
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, S.prompt_field);
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, S.completion_field);
            objs[n] = j;
            if (!cJSON_IsString(p) || !cJSON_IsString(c)) {
                e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s:%d: field \"%s\" is missing or "
                                 "not a string (set --prompt-field / --completion-field)", S.input, lineno,
                                 !cJSON_IsString(p) ? S.prompt_field : S.completion_field);
                n++;
                break;
            }
            e = render_line(v, &seq, p->valuestring, c->valuestring, tokens + (size_t)n * v->T, &lengths[n]);
            n++;
            if (e) {
                st_error_trace(__FILE__, __LINE__, __func__);
                fprintf(stderr, "shardtune: in %s:%d\n", S.input, lineno);
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
    if (!e && rename(tmp, S.out)) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot rename %s", tmp);
    if (e) remove(tmp);
    else printf("scored %ld lines of %s -> %s (template %s, seq_len %d)\n", scored, S.input, S.out, v->tpl->name, v->T);
    st_tokseq_free(&seq);
    free(objs);
    free(tokens);
    free(lengths);
    free(rewards);
    st_lines_close(r);
    return e;
}

static st_err score(const char *ckpt, MPI_Comm world)
{
    int rank = 0;
    rank = st_comm_rank(world);
    st_err e = ST_OK;
    if (!S.input || !S.out) e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "score needs --input FILE.jsonl and --out FILE.jsonl");
    if (!e && rank == 0) {
        scorer v;
        memset(&v, 0, sizeof v);
        e = load(&v, ckpt);
        if (!e) e = score_file(&v);
        unload(&v);
    }
    return st_agree(world, e);
}

st_err st_cmd_score(int argc, char **argv, MPI_Comm world)
{
    return st_options_run(argc, argv, world, score_options, (int)(sizeof score_options / sizeof score_options[0]),
                          "usage: shardtune score REWARD_CKPT --input candidates.jsonl --out scored.jsonl\n\n"
                          "Scores answers with a reward model (method reward): each {\"prompt\", \"completion\"}\n"
                          "line (what `generate --prompts F --out F` writes) is rendered as prepare renders\n"
                          "prompt/response data and gets a \"reward\" field; lines keep their order.\n\n",
                          "the reward model's checkpoint", score);
}
