/* cmd_prepare.c: `shardtune prepare` — domain data (JSONL or CSV) into a
 * tokenized dataset.h5 (layout in io/dataset.h).
 *
 * Record formats, detected from the first record's fields unless --format:
 *   text      {"text": ...}                     the text + eos, loss everywhere
 *   sft       {"prompt": ..., "response": ...}  through the template, loss on the response
 *   chat      {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
 *             loss on every assistant turn
 *   pref      {"prompt", "chosen", "rejected"}, or hh-rlhf's {"chosen", "rejected"}
 *             whole dialogues: the prompt is their common part up to and including
 *             its last "\n\nAssistant:", the responses are the rest (template plain)
 *   classify  {"text": ..., "label": string or integer}; CSV with a header
 *             (text,category for banking77); label ids follow the sorted label
 *             names (numbers in numeric order) unless --label-names fixes them
 * CSV columns play the role of fields (.csv or .csv.gz inputs).
 * The template of sft, chat and pref records: --template, else the
 * tokenizer's own Jinja chat template when it has one (hh-rlhf pairs:
 * plain), else default (io/chat/template.h, io/chat/chat_template.h).
 *
 * Under MPI every rank takes one contiguous block of records (rank 0 counts
 * them first), tokenizes it, and the ranks write one file together, so the
 * file is identical for any number of ranks. A bad record (malformed JSON or
 * CSV, missing field, wrong type, invalid UTF-8, empty response, unknown
 * role or label) stops everything with its file:line and field, or with
 * --on-error skip is counted by reason and left out.
 */
#include <search.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "cmd/options.h"
#include "core/timer.h"
#include "io/chat/chat_template.h"
#include "io/chat/template.h"
#include "io/csv.h"
#include "io/dataset.h"
#include "io/jsonl.h"
#include "io/tok/tokenizer.h"
#include "mpi/comm.h"

enum { FMT_TEXT, FMT_SFT, FMT_CHAT, FMT_PREF, FMT_CLASSIFY, FMT_IDS, N_FMT };
static const char *const fmt_name[N_FMT] = {"text", "sft", "chat", "pref", "classify", "ids"};

/* Why a record was left out. */
enum { R_JSON, R_CSV, R_MISSING, R_TYPE, R_UTF8, R_EMPTY, R_VALUE, N_REASONS };
static const char *const reason_name[N_REASONS] = {
    "malformed JSON", "malformed CSV", "missing field", "wrong type", "invalid UTF-8",
    "empty field", "bad value"};

#define NAME_CAP 256
#define MSG_CAP 512
#define MAX_LABEL_LEN 1024
#define MAX_LABELS (1 << 20)
static const char hh_marker[] = "\n\nAssistant:";

/* ---- options ------------------------------------------------------------ */

typedef struct {
    char *input, *out, *tokenizer, *format, *template_name, *on_error;
    char *text_col, *label_col, *text_field, *label_field, *label_names, *prompt_field, *response_field;
    char *ids_field;
    int max_len, force;
    float val_fraction;
    int64_t seed;
} prepare_opts;

static const st_option prepare_options[] = {
    {"input", ST_OPT_STRING, offsetof(prepare_opts, input), NULL, "JSONL (.jsonl, .gz) or CSV (.csv, .csv.gz) file (required)", NULL},
    {"out", ST_OPT_STRING, offsetof(prepare_opts, out), NULL, "dataset file to write (required; an existing file only with --force)", NULL},
    {"force", ST_OPT_BOOL, offsetof(prepare_opts, force), "false", "replace an existing --out file", NULL},
    {"tokenizer", ST_OPT_STRING, offsetof(prepare_opts, tokenizer), "byte", "byte, gpt2:DIR, hf:PATH/tokenizer.json or llama2c:PATH", NULL},
    {"format", ST_OPT_STRING, offsetof(prepare_opts, format), "auto", "auto, text, sft, chat, pref, classify or ids (JSONL of token ids made elsewhere: {\"ids\": [...]}, taken as they are)", NULL},
    {"template", ST_OPT_STRING, offsetof(prepare_opts, template_name), NULL, "default, plain, chatml or tokenizer (the tokenizer's own Jinja chat template); unset: tokenizer when it has one, else default; plain for hh-rlhf pairs", NULL},
    {"max-len", ST_OPT_INT, offsetof(prepare_opts, max_len), "1024", "longest example in tokens (not text: the loader cuts windows); the prompt is cut from the left, then the response's end", "[1,)"},
    {"val-fraction", ST_OPT_FLOAT, offsetof(prepare_opts, val_fraction), "0.1", "fraction of records in the validation split", "[0,1)"},
    {"seed", ST_OPT_INT64, offsetof(prepare_opts, seed), "1234", "seed of the train/validation split", NULL},
    {"on-error", ST_OPT_STRING, offsetof(prepare_opts, on_error), "fail", "fail (stop at the first bad record, write nothing) or skip", NULL},
    {"text-col", ST_OPT_STRING, offsetof(prepare_opts, text_col), "text", "CSV column with the text", NULL},
    {"prompt-field", ST_OPT_STRING, offsetof(prepare_opts, prompt_field), "prompt", "sft: JSONL field or CSV column with the prompt", NULL},
    {"response-field", ST_OPT_STRING, offsetof(prepare_opts, response_field), "response", "sft: JSONL field or CSV column with the response (e.g. banking77's category)", NULL},
    {"label-col", ST_OPT_STRING, offsetof(prepare_opts, label_col), NULL, "CSV column with the label (unset: label, category, intent or class)", NULL},
    {"text-field", ST_OPT_STRING, offsetof(prepare_opts, text_field), "text", "JSONL field with the text", NULL},
    {"label-field", ST_OPT_STRING, offsetof(prepare_opts, label_field), NULL, "JSONL field with the label (unset: label, category, intent or class)", NULL},
    {"ids-field", ST_OPT_STRING, offsetof(prepare_opts, ids_field), "ids", "ids: JSONL field with the array of token ids", NULL},
    {"label-names", ST_OPT_STRING, offsetof(prepare_opts, label_names), NULL, "JSON array of label names fixing the label ids (e.g. categories.json)", NULL},
};
#define N_OPTIONS ((int)(sizeof prepare_options / sizeof prepare_options[0]))

static const char usage[] =
    "usage: [mpirun -np N] shardtune prepare --input FILE --out dataset.h5 [options]\n\n"
    "Tokenizes JSONL (text | prompt,response | messages | prompt,chosen,rejected |\n"
    "chosen,rejected (hh-rlhf) | text,label) or CSV with a header into dataset.h5.\n"
    "Templates: default \"<|user|>\\n{prompt}\\n<|assistant|>\\n{response}<eos>\",\n"
    "plain \"{prompt}{response}<eos>\", chatml, and tokenizer: the model's own Jinja chat\n"
    "template from tokenizer_config.json (used by default when the tokenizer has one).\n"
    "The loss mask covers responses (+eos or the template's end of turn).\n\n";

static int is_csv(const char *path)
{
    size_t n = strlen(path);
    return (n >= 4 && !strcmp(path + n - 4, ".csv")) || (n >= 7 && !strcmp(path + n - 7, ".csv.gz"));
}

/* ---- one record, JSON or CSV -------------------------------------------- */

typedef struct {
    const char *path;
    int64_t line;
    cJSON *obj;           /* JSONL record, or NULL */
    const st_csv *csv;    /* CSV record, or NULL */
    const char *raw;      /* the source text (hashed for the split) */
    size_t raw_len;
} record;

static const char *json_type(const cJSON *v)
{
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "an invalid value";
}

/* A record-level failure: the reason for the skip summary and the message. */
#define BAD(reason_out, r, ...)                                               \
    do {                                                                      \
        *(reason_out) = (r);                                                  \
        ST_FAIL(ST_ERR_FORMAT, __VA_ARGS__);                                  \
    } while (0)

static st_err check_utf8(const record *rec, const char *field, const char *s, size_t n,
                         int *reason)
{
    size_t bad;
    char why[128];
    if (!st_utf8_valid(s, n, &bad, why, sizeof why))
        BAD(reason, R_UTF8, "%s:%lld: field \"%s\" is not valid UTF-8 at byte %zu (%s); convert "
            "the file to UTF-8", rec->path, (long long)rec->line, field, bad, why);
    return ST_OK;
}

/* The string value v named field (already looked up in a JSON object). */
static st_err json_string(const record *rec, const cJSON *v, const char *field, const char **s,
                          size_t *n, int *reason)
{
    if (!v) BAD(reason, R_MISSING, "%s:%lld: field \"%s\" is missing (expected a string)",
                rec->path, (long long)rec->line, field);
    if (!cJSON_IsString(v) || !v->valuestring)
        BAD(reason, R_TYPE, "%s:%lld: field \"%s\" must be a string, got %s", rec->path,
            (long long)rec->line, field, json_type(v));
    *s = v->valuestring;
    *n = strlen(v->valuestring);
    return check_utf8(rec, field, *s, *n, reason);
}

/* Field name of the record as a UTF-8 string. */
static st_err get_string(const record *rec, const char *field, const char **s, size_t *n,
                         int *reason)
{
    if (rec->obj)
        return json_string(rec, cJSON_GetObjectItemCaseSensitive(rec->obj, field), field, s, n, reason);
    int col = st_csv_find_col(rec->csv, field);
    if (col < 0)
        BAD(reason, R_MISSING, "%s: there is no column \"%s\" (the header has %d columns)",
            rec->path, field, st_csv_num_cols(rec->csv));
    *s = st_csv_field(rec->csv, col, n);
    return check_utf8(rec, field, *s, *n, reason);
}

static int has_field(const record *rec, const char *field)
{
    if (rec->obj) return cJSON_GetObjectItemCaseSensitive(rec->obj, field) != NULL;
    return st_csv_find_col(rec->csv, field) >= 0;
}

static st_err nonempty(const record *rec, const char *field, size_t n, int *reason)
{
    if (n == 0)
        BAD(reason, R_EMPTY, "%s:%lld: field \"%s\" is empty (nothing to learn from)", rec->path,
            (long long)rec->line, field);
    return ST_OK;
}

/* ---- the state of one rank's pass ---------------------------------------- */

typedef struct {
    char *name;
    int id;
} label_ent;

typedef struct {
    int format, hh;                   /* hh: pref records without "prompt" */
    char text_name[NAME_CAP], label_name[NAME_CAP];
    int64_t n_records;                /* in the whole input */
} plan;

typedef struct {
    const prepare_opts *o;
    const plan *pl;
    const st_tokenizer *tok;
    const st_template *tpl;
    int skip;
    st_tokseq seq[2];
    st_turn *turns;
    int cap_turns;
    st_docs docs;
    void *labels;                     /* tsearch tree of label_ent */
    int n_labels, fixed_labels;       /* fixed: ids from --label-names */
    char **label_list;                /* (n_labels) local names by local id */
    int64_t n_records, n_val, n_cut_prompt, n_cut_response;
    int64_t n_skipped[N_REASONS];
    char first_msg[N_REASONS][MSG_CAP];
} prep;

static int label_cmp(const void *a, const void *b)
{
    return strcmp(((const label_ent *)a)->name, ((const label_ent *)b)->name);
}

static void label_free(void *p)
{
    label_ent *e = p;
    free(e->name);
    free(e);
}

static void prep_free(prep *p)
{
    st_tokseq_free(&p->seq[0]);
    st_tokseq_free(&p->seq[1]);
    free(p->turns);
    st_docs_free(&p->docs);
    if (p->labels) tdestroy(p->labels, label_free);
    free(p->label_list); /* names are owned by the tree */
}

/* Add name with id (or, when id < 0, the next local id); *out = its id. */
static st_err label_put(prep *p, const char *name, int id, int *out)
{
    label_ent key = {(char *)name, 0};
    label_ent **hit = tfind(&key, &p->labels, label_cmp);
    if (hit) {
        *out = (*hit)->id;
        return ST_OK;
    }
    if (p->n_labels >= MAX_LABELS) ST_FAIL(ST_ERR_ARG, "more than %d distinct labels", MAX_LABELS);
    label_ent *e = malloc(sizeof *e);
    char **list = realloc(p->label_list, (size_t)(p->n_labels + 1) * sizeof *list);
    if (list) p->label_list = list;
    if (!e || !list || !(e->name = strdup(name))) {
        free(e);
        ST_FAIL(ST_ERR_MEM, "out of memory for labels");
    }
    e->id = id >= 0 ? id : p->n_labels;
    if (!tsearch(e, &p->labels, label_cmp)) {
        label_free(e);
        ST_FAIL(ST_ERR_MEM, "out of memory for labels");
    }
    p->label_list[p->n_labels++] = e->name;
    *out = e->id;
    return ST_OK;
}

/* Split of a record: a seeded hash of its source text. */
static uint8_t split_of(const record *rec, const prepare_opts *o)
{
    uint64_t h = st_hash_bytes(rec->raw, rec->raw_len, (uint64_t)o->seed);
    return (double)(h >> 11) * 0x1.0p-53 < o->val_fraction;
}

static st_err add_doc(prep *p, const st_tokseq *s, uint8_t split, int32_t label)
{
    ST_TRY(st_docs_add(&p->docs, s, split, label));
    p->n_val += split;
    return ST_OK;
}

/* Apply --max-len and count what was cut. */
static void fit(prep *p, st_tokseq *s, size_t reserve)
{
    const prepare_opts *o = p->o;
    int cut_p, cut_r;
    st_tokseq_fit(s, (size_t)o->max_len, reserve, &cut_p, &cut_r);
    p->n_cut_prompt += cut_p;
    p->n_cut_response += cut_r;
}

/* ---- record -> documents, per format ------------------------------------- */

static st_err do_text(prep *p, const record *rec, int *reason)
{
    const prepare_opts *o = p->o;
    const char *s;
    size_t n;
    ST_TRY(get_string(rec, p->pl->text_name, &s, &n, reason));
    ST_TRY(nonempty(rec, p->pl->text_name, n, reason));
    st_tokseq *q = &p->seq[0];
    st_tokseq_clear(q);
    int eos = st_tokenizer_eos(p->tok);
    if (st_tokenizer_adds_bos(p->tok)) { /* the tokenizer's rule; never a target worth learning */
        ST_TRY(st_tokseq_push_id(q, st_tokenizer_bos(p->tok), 0));
        q->has_bos = 1;                  /* the text still starts the sequence: sentencepiece's dummy prefix */
    }
    ST_TRY(st_tokseq_push_text(q, p->tok, s, n, 0, 1));
    if (eos >= 0) ST_TRY(st_tokseq_push_id(q, eos, 1));
    return add_doc(p, q, split_of(rec, o), -1);
}

/* Render turns into seq. A Jinja template that refuses this conversation
 * (raise_exception, not prefix-stable, ...) makes the record a bad value. */
static st_err render_turns(prep *p, const record *rec, st_tokseq *seq, const st_turn *t, int n,
                           int *reason)
{
    st_err e = st_template_render(seq, p->tpl, p->tok, t, n);
    if (!e) return ST_OK;
    if (!p->tpl->jinja || e == ST_ERR_MEM) ST_TRY(e);
    char msg[MSG_CAP];
    const char *m = st_error_message(), *nl = strchr(m, '\n');
    snprintf(msg, sizeof msg, "%.*s", (int)(nl ? nl - m : (long)strlen(m)), m);
    BAD(reason, R_VALUE, "%s:%lld: the tokenizer's chat template failed on this record: %s", rec->path,
        (long long)rec->line, msg);
}

/* render [user prompt, assistant response] into seq */
static st_err render_pair(prep *p, const record *rec, st_tokseq *seq, const char *prompt, size_t np,
                          const char *resp, size_t nr, int *reason)
{
    st_turn t[2] = {{ST_ROLE_USER, prompt, np}, {ST_ROLE_ASSISTANT, resp, nr}};
    return render_turns(p, rec, seq, t, 2, reason);
}

static st_err do_sft(prep *p, const record *rec, int *reason)
{
    const prepare_opts *o = p->o;
    const char *pr, *re;
    size_t np, nr;
    ST_TRY(get_string(rec, o->prompt_field, &pr, &np, reason));
    ST_TRY(get_string(rec, o->response_field, &re, &nr, reason));
    ST_TRY(nonempty(rec, o->response_field, nr, reason));
    ST_TRY(render_pair(p, rec, &p->seq[0], pr, np, re, nr, reason));
    fit(p, &p->seq[0], 0);
    return add_doc(p, &p->seq[0], split_of(rec, o), -1);
}

static st_err do_chat(prep *p, const record *rec, int *reason)
{
    const prepare_opts *o = p->o;
    static const char *const roles[] = {"system", "user", "assistant"};
    if (!rec->obj) BAD(reason, R_TYPE, "%s: chat records need JSONL (a \"messages\" list)", rec->path);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(rec->obj, "messages");
    if (!msgs) BAD(reason, R_MISSING, "%s:%lld: field \"messages\" is missing", rec->path, (long long)rec->line);
    if (!cJSON_IsArray(msgs))
        BAD(reason, R_TYPE, "%s:%lld: field \"messages\" must be an array, got %s", rec->path,
            (long long)rec->line, json_type(msgs));
    int n = cJSON_GetArraySize(msgs), n_assistant = 0, i = 0;
    if (n > p->cap_turns) {
        st_turn *t = realloc(p->turns, (size_t)n * sizeof *t);
        if (!t) ST_FAIL(ST_ERR_MEM, "out of memory for %d chat turns", n);
        p->turns = t;
        p->cap_turns = n;
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        char field[64];
        snprintf(field, sizeof field, "messages[%d]", i);
        if (!cJSON_IsObject(m))
            BAD(reason, R_TYPE, "%s:%lld: field \"%s\" must be an object {role, content}, got %s",
                rec->path, (long long)rec->line, field, json_type(m));
        const char *role, *content;
        size_t nrole, ncontent;
        snprintf(field, sizeof field, "messages[%d].role", i);
        ST_TRY(json_string(rec, cJSON_GetObjectItemCaseSensitive(m, "role"), field, &role, &nrole, reason));
        int r = 0;
        while (r < 3 && strcmp(role, roles[r])) r++;
        if (r == 3)
            BAD(reason, R_VALUE, "%s:%lld: field \"%s\" is \"%.40s\"; expected system, user or assistant",
                rec->path, (long long)rec->line, field, role);
        snprintf(field, sizeof field, "messages[%d].content", i);
        ST_TRY(json_string(rec, cJSON_GetObjectItemCaseSensitive(m, "content"), field, &content,
                           &ncontent, reason));
        if (r == ST_ROLE_ASSISTANT) {
            ST_TRY(nonempty(rec, field, ncontent, reason));
            n_assistant++;
        }
        p->turns[i++] = (st_turn){(st_role)r, content, ncontent};
    }
    if (!n_assistant)
        BAD(reason, R_VALUE, "%s:%lld: field \"messages\" has no assistant turn (nothing to learn)",
            rec->path, (long long)rec->line);
    ST_TRY(render_turns(p, rec, &p->seq[0], p->turns, n, reason));
    fit(p, &p->seq[0], 0);
    return add_doc(p, &p->seq[0], split_of(rec, o), -1);
}

/* hh-rlhf: the prompt is the common start of both dialogues up to and
 * including the last "\n\nAssistant:" inside it. */
static st_err hh_split(const record *rec, const char *c, size_t nc, const char *r, size_t nr,
                       size_t *prompt, int *reason)
{
    size_t common = 0, mlen = sizeof hh_marker - 1;
    while (common < nc && common < nr && c[common] == r[common]) common++;
    const char *last = NULL;
    for (const char *at = c; (at = memmem(at, common - (size_t)(at - c), hh_marker, mlen)); at++)
        last = at;
    if (!last)
        BAD(reason, R_VALUE, "%s:%lld: \"chosen\" and \"rejected\" share no prompt ending in "
            "\"\\n\\nAssistant:\" (give a \"prompt\" field)", rec->path, (long long)rec->line);
    *prompt = (size_t)(last - c) + mlen;
    return ST_OK;
}

static st_err do_pref(prep *p, const record *rec, int *reason)
{
    const prepare_opts *o = p->o;
    const char *pr = "", *c, *r;
    size_t np = 0, nc, nr;
    ST_TRY(get_string(rec, "chosen", &c, &nc, reason));
    ST_TRY(get_string(rec, "rejected", &r, &nr, reason));
    if (has_field(rec, "prompt")) {
        ST_TRY(get_string(rec, "prompt", &pr, &np, reason));
    } else {
        ST_TRY(hh_split(rec, c, nc, r, nr, &np, reason));
        pr = c;
        c += np, nc -= np;
        r += np, nr -= np;
    }
    ST_TRY(nonempty(rec, "chosen", nc, reason));
    ST_TRY(nonempty(rec, "rejected", nr, reason));
    ST_TRY(render_pair(p, rec, &p->seq[0], pr, np, c, nc, reason));
    ST_TRY(render_pair(p, rec, &p->seq[1], pr, np, r, nr, reason));
    /* both keep the same prompt tokens: budget for the longer response */
    size_t rc = p->seq[0].n - p->seq[0].resp_start, rr = p->seq[1].n - p->seq[1].resp_start;
    fit(p, &p->seq[0], rr > rc ? rr : rc);
    fit(p, &p->seq[1], rr > rc ? rr : rc);
    uint8_t split = split_of(rec, o);
    ST_TRY(add_doc(p, &p->seq[0], split, -1));
    return add_doc(p, &p->seq[1], split, -1);
}

/* The record's label as text: a string, or a non-negative integer. */
static st_err label_text(const record *rec, const char *field, char *buf, int *reason)
{
    const char *s;
    size_t n;
    const cJSON *v = rec->obj ? cJSON_GetObjectItemCaseSensitive(rec->obj, field) : NULL;
    if (v && cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d < 0 || d > 2147483647.0 || d != (double)(int)d)
            BAD(reason, R_VALUE, "%s:%lld: field \"%s\" = %g; a numeric label must be a "
                "non-negative integer", rec->path, (long long)rec->line, field, d);
        snprintf(buf, MAX_LABEL_LEN + 1, "%d", (int)d);
        return ST_OK;
    }
    ST_TRY(get_string(rec, field, &s, &n, reason));
    ST_TRY(nonempty(rec, field, n, reason));
    if (n > MAX_LABEL_LEN || memchr(s, '\0', n))
        BAD(reason, R_VALUE, "%s:%lld: field \"%s\" is longer than %d bytes; is it a label?",
            rec->path, (long long)rec->line, field, MAX_LABEL_LEN);
    memcpy(buf, s, n);
    buf[n] = '\0';
    return ST_OK;
}

static st_err do_classify(prep *p, const record *rec, int *reason)
{
    const prepare_opts *o = p->o;
    const char *s;
    size_t n;
    char name[MAX_LABEL_LEN + 1];
    ST_TRY(get_string(rec, p->pl->text_name, &s, &n, reason));
    ST_TRY(nonempty(rec, p->pl->text_name, n, reason));
    ST_TRY(label_text(rec, p->pl->label_name, name, reason));
    int id;
    if (p->fixed_labels) {
        label_ent key = {name, 0};
        label_ent **hit = tfind(&key, &p->labels, label_cmp);
        if (!hit)
            BAD(reason, R_VALUE, "%s:%lld: label \"%s\" is not in --label-names %s", rec->path,
                (long long)rec->line, name, o->label_names);
        id = (*hit)->id;
    } else {
        ST_TRY(label_put(p, name, -1, &id));
    }
    st_tokseq *q = &p->seq[0];
    st_tokseq_clear(q);
    if (st_tokenizer_adds_bos(p->tok)) {
        ST_TRY(st_tokseq_push_id(q, st_tokenizer_bos(p->tok), 0));
        q->has_bos = 1;
    }
    ST_TRY(st_tokseq_push_text(q, p->tok, s, n, 0, 0));
    q->resp_start = q->n; /* all of it is "prompt": cut from the left */
    fit(p, q, 0);
    return add_doc(p, q, split_of(rec, o), id);
}

/* ids data: token ids made elsewhere (another tool's tokenizer), taken as
 * they are, no bos or eos added, each checked against --tokenizer's
 * vocabulary (the dataset's tokenizer); mask 1 everywhere, as text. */
static st_err do_ids(prep *p, const record *rec, int *reason)
{
    const prepare_opts *o = p->o;
    const char *f = o->ids_field;
    if (!rec->obj) BAD(reason, R_TYPE, "%s: --format ids reads JSONL ({\"%s\": [ids]}), not CSV", rec->path, f);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rec->obj, f), *it;
    if (!v) BAD(reason, R_MISSING, "%s:%lld: field \"%s\" is missing (expected an array of token ids)", rec->path,
                (long long)rec->line, f);
    if (!cJSON_IsArray(v))
        BAD(reason, R_TYPE, "%s:%lld: field \"%s\" must be an array of token ids, got %s", rec->path,
            (long long)rec->line, f, json_type(v));
    if (cJSON_GetArraySize(v) == 0)
        BAD(reason, R_EMPTY, "%s:%lld: field \"%s\" is empty (nothing to learn from)", rec->path, (long long)rec->line, f);
    st_tokseq *q = &p->seq[0];
    st_tokseq_clear(q);
    const int vocab = st_tokenizer_vocab_size(p->tok);
    int i = 0;
    cJSON_ArrayForEach(it, v) {
        double d = cJSON_IsNumber(it) ? it->valuedouble : -1;
        if (!(d >= 0 && d < vocab) || d != (double)(int32_t)d)
            BAD(reason, R_VALUE, "%s:%lld: %s[%d] is not a token id of the tokenizer %s (integers 0..%d)", rec->path,
                (long long)rec->line, f, i, o->tokenizer, vocab - 1);
        ST_TRY(st_tokseq_push_id(q, (int32_t)d, 1));
        i++;
    }
    return add_doc(p, q, split_of(rec, o), -1);
}

static st_err do_record(prep *p, const record *rec, int *reason)
{
    switch (p->pl->format) {
    case FMT_TEXT: return do_text(p, rec, reason);
    case FMT_SFT: return do_sft(p, rec, reason);
    case FMT_CHAT: return do_chat(p, rec, reason);
    case FMT_PREF: return do_pref(p, rec, reason);
    case FMT_IDS: return do_ids(p, rec, reason);
    default: return do_classify(p, rec, reason);
    }
}

/* A record-level failure: fatal in fail mode, counted in skip mode. An
 * empty text of text data is always counted and skipped: an empty document
 * teaches nothing, and corpora have them (blank rows, stripped markup). */
static st_err handle(prep *p, st_err e, int reason)
{
    if (!e) return ST_OK;
    int benign = reason == R_EMPTY && (p->pl->format == FMT_TEXT || p->pl->format == FMT_IDS);
    if (reason < 0 || (!p->skip && !benign)) return e;
    if (!p->n_skipped[reason]++) {
        const char *m = st_error_message(), *nl = strchr(m, '\n');
        snprintf(p->first_msg[reason], MSG_CAP, "%.*s", (int)(nl ? nl - m : (long)strlen(m)), m);
    }
    st_error_clear();
    return ST_OK;
}

/* ---- reading the input ---------------------------------------------------- */

/* Calls fn(ctx, rec) for every record k in [lo, hi) and, for one that is
 * malformed below the field level (JSON or CSV syntax), bad(ctx, reason, e).
 * Records are the non-blank lines of a JSONL file or the data rows of a CSV
 * file; a malformed line still counts as one. hi < 0 reads to the end;
 * *n_seen = the records passed. */
typedef st_err (*record_fn)(void *ctx, const record *rec);
typedef st_err (*bad_fn)(void *ctx, int reason, st_err e);

static st_err for_records(const char *path, int64_t lo, int64_t hi, void *ctx, record_fn fn,
                          bad_fn bad, int64_t *n_seen)
{
    st_err e = ST_OK;
    int64_t k = 0;
    int eof = 0;
    if (is_csv(path)) {
        st_csv *c;
        ST_TRY(st_csv_open(&c, path));
        for (; hi < 0 || k < hi; k++) {
            e = st_csv_next(c, &eof);
            if (eof) break;
            if (e && e != ST_ERR_FORMAT) break;
            if (k < lo) {
                if (e) st_error_clear();
                e = ST_OK;
                continue;
            }
            if (e) {
                e = bad(ctx, R_CSV, e);
            } else {
                record rec = {path, st_csv_lineno(c), NULL, c, NULL, 0};
                rec.raw = st_csv_raw(c, &rec.raw_len);
                e = fn(ctx, &rec);
            }
            if (e) break;
        }
        st_csv_close(c);
    } else {
        st_lines *r;
        ST_TRY(st_lines_open(&r, path));
        while (hi < 0 || k < hi) {
            const char *line;
            size_t len;
            if ((e = st_lines_next(r, &line, &len, &eof)) || eof) break;
            if (st_line_blank(line, len)) continue;
            if (k++ < lo) continue;
            record rec = {path, st_lines_lineno(r), NULL, NULL, line, len};
            e = st_json_parse_line(&rec.obj, line, len, path, rec.line);
            if (!e && !cJSON_IsObject(rec.obj)) {
                e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                 "%s:%lld: the line is %s, expected a JSON object", path,
                                 (long long)rec.line, json_type(rec.obj));
                e = bad(ctx, R_TYPE, e);
            } else if (e) {
                e = bad(ctx, R_JSON, e);
            } else {
                e = fn(ctx, &rec);
            }
            cJSON_Delete(rec.obj);
            if (e) break;
        }
        st_lines_close(r);
    }
    *n_seen = k;
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* ---- pass 1 (rank 0): count records, detect the format -------------------- */

typedef struct {
    const prepare_opts *o;
    plan *pl;
    int detected;
    int fmt_given;
    char first_bad[MSG_CAP];  /* the first bad line's message, for when no line is good */
} scan_ctx;

static const char *const label_fallback[] = {"label", "category", "intent", "class"};

/* Resolve the text and label field names against the first good record. */
static st_err detect(scan_ctx *s, const record *rec)
{
    const prepare_opts *o = s->o;
    plan *pl = s->pl;
    const char *text = rec->obj ? o->text_field : o->text_col;
    const char *label = rec->obj ? o->label_field : o->label_col;
    if (!label)
        for (size_t i = 0; i < sizeof label_fallback / sizeof *label_fallback && !label; i++)
            if (has_field(rec, label_fallback[i])) label = label_fallback[i];
    if (strlen(text) >= NAME_CAP || (label && strlen(label) >= NAME_CAP))
        ST_FAIL(ST_ERR_ARG, "field names are limited to %d bytes", NAME_CAP - 1);
    snprintf(pl->text_name, NAME_CAP, "%s", text);
    snprintf(pl->label_name, NAME_CAP, "%s", label ? label : "label");
    if (!s->fmt_given) {
        if (has_field(rec, "messages")) pl->format = FMT_CHAT;
        else if (has_field(rec, "chosen") && has_field(rec, "rejected")) pl->format = FMT_PREF;
        else if (has_field(rec, o->prompt_field) && has_field(rec, o->response_field)) pl->format = FMT_SFT;
        else if (has_field(rec, text) && label && has_field(rec, label)) pl->format = FMT_CLASSIFY;
        else if (has_field(rec, text)) pl->format = FMT_TEXT;
        else if (rec->obj && has_field(rec, o->ids_field)) pl->format = FMT_IDS;
        else
            ST_FAIL(ST_ERR_ARG, "%s:%lld: cannot tell the format from this record's fields; expected "
                    "\"%s\" (text), \"prompt\"+\"response\" (sft), \"messages\" (chat), "
                    "\"chosen\"+\"rejected\" (pref) or \"%s\"+a label (classify); or pass --format",
                    rec->path, (long long)rec->line, text, text);
    }
    pl->hh = pl->format == FMT_PREF && !has_field(rec, "prompt");
    if (pl->format == FMT_CLASSIFY && !has_field(rec, pl->label_name))
        ST_FAIL(ST_ERR_ARG, "%s: no label field \"%s\" in the first record (set --%s)", rec->path,
                pl->label_name, rec->obj ? "label-field" : "label-col");
    if (pl->format == FMT_CHAT && !rec->obj)
        ST_FAIL(ST_ERR_ARG, "%s: chat data needs JSONL with a \"messages\" list, not CSV", rec->path);
    s->detected = 1;
    return ST_OK;
}

static st_err scan_record(void *ctx, const record *rec)
{
    scan_ctx *s = ctx;
    return s->detected ? ST_OK : detect(s, rec);
}

static st_err scan_bad(void *ctx, int reason, st_err e)
{
    scan_ctx *s = ctx;
    (void)reason, (void)e;
    if (!s->first_bad[0]) /* its first line: the message without the trace */
        snprintf(s->first_bad, sizeof s->first_bad, "%.*s", (int)strcspn(st_error_message(), "\n"),
                 st_error_message());
    st_error_clear(); /* reported by pass 2, with the rank that owns the record */
    return ST_OK;
}

static st_err scan(plan *pl, int fmt_given, const prepare_opts *o)
{
    scan_ctx s = {o, pl, 0, fmt_given, ""};
    ST_TRY(for_records(o->input, 0, -1, &s, scan_record, scan_bad, &pl->n_records));
    if (pl->n_records == 0) ST_FAIL(ST_ERR_ARG, "%s holds no records", o->input);
    if (!s.detected)
        ST_FAIL(ST_ERR_FORMAT, "%s: no record could be read, every line is malformed; the first: %s", o->input,
                s.first_bad);
    return ST_OK;
}

/* ---- pass 2 (every rank): its block of records ---------------------------- */

static st_err prep_record(void *ctx, const record *rec)
{
    prep *p = ctx;
    int reason = -1;
    p->n_records++;
    st_err e = do_record(p, rec, &reason);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return handle(p, e, reason);
}

static st_err prep_bad(void *ctx, int reason, st_err e)
{
    prep *p = ctx;
    p->n_records++;
    return handle(p, e, reason);
}

/* --label-names: a JSON array of strings fixes ids = positions. */
static st_err load_label_names(prep *p)
{
    const prepare_opts *o = p->o;
    FILE *f = fopen(o->label_names, "rb");
    if (!f) ST_FAIL(ST_ERR_IO, "cannot open --label-names %s", o->label_names);
    char *text = NULL;
    size_t n = 0;
    FILE *mem = open_memstream(&text, &n);
    char buf[65536];
    size_t got;
    while (mem && (got = fread(buf, 1, sizeof buf, f)) > 0 && n < ((size_t)1 << 28))
        fwrite(buf, 1, got, mem);
    int ok = mem && !ferror(f) && fclose(mem) == 0;
    fclose(f);
    cJSON *arr = ok ? cJSON_ParseWithLength(text, n) : NULL;
    free(text);
    st_err e = ST_OK;
    if (!ok) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot read %s", o->label_names);
    else if (!cJSON_IsArray(arr))
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                         "%s: expected a JSON array of label names", o->label_names);
    const cJSON *it;
    int id = 0;
    if (!e) cJSON_ArrayForEach(it, arr) {
        int got_id;
        if (!cJSON_IsString(it) || !it->valuestring[0] || strlen(it->valuestring) > MAX_LABEL_LEN) {
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s: entry %d is not a label name (a non-empty string)", o->label_names, id);
            break;
        }
        if ((e = label_put(p, it->valuestring, id, &got_id))) break;
        if (got_id != id) {
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s: label \"%s\" appears twice", o->label_names, it->valuestring);
            break;
        }
        id++;
    }
    cJSON_Delete(arr);
    if (!e && id == 0)
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s: no label names", o->label_names);
    p->fixed_labels = 1;
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* ---- labels: local ids -> global sorted ids -------------------------------- */

/* Numbers in numeric order, then text in byte order. */
static int name_cmp(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    size_t nx = strspn(x, "0123456789"), ny = strspn(y, "0123456789");
    int dx = nx && !x[nx], dy = ny && !y[ny];
    if (dx != dy) return dy - dx;
    if (dx && strlen(x) != strlen(y)) return strlen(x) < strlen(y) ? -1 : 1;
    return strcmp(x, y);
}

/* Every rank's label names, NUL-separated, into *all (*total bytes, the
 * same on every rank). Collective; a local failure stops every rank. */
static st_err gather_names(const prep *p, MPI_Comm comm, char **all, int64_t *total)
{
    const int size = st_comm_size(comm), me = st_comm_rank(comm);
    *all = NULL;
    *total = 0;
    int64_t mine = 0;
    for (int i = 0; i < p->n_labels; i++) mine += (int64_t)strlen(p->label_list[i]) + 1;
    int64_t *lens = calloc(2 * (size_t)size, sizeof *lens), *displs = lens ? lens + size : NULL;
    st_err e = ST_OK;
    if (!lens) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    if (!(e = st_agree(comm, e))) e = st_allgather(comm, &mine, lens, 1, ST_M_I64);
    for (int r = 0; !e && r < size; r++) displs[r] = *total, *total += lens[r];
    if (!e && *total > (int64_t)1 << 30)
        e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "label names take more than 1 GiB");
    if (!e && !(*all = malloc((size_t)*total + 1)))
        e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for label names");
    if (!(e = st_agree(comm, e))) {
        for (int i = 0, at = 0; i < p->n_labels; i++) { /* this rank's names in place, then everyone's */
            size_t l = strlen(p->label_list[i]) + 1;
            memcpy(*all + displs[me] + at, p->label_list[i], l);
            at += (int)l;
        }
        e = st_allgatherv(comm, *all, lens, displs, ST_M_U8);
    }
    free(lens);
    if (e) {
        free(*all);
        *all = NULL;
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    return e;
}

/* Every rank learns every label name; ids follow name_cmp (the same table on
 * every rank); the docs' local ids are rewritten. *names (n) point into *store. */
static st_err unify_labels(prep *p, MPI_Comm comm, char ***names, int *n, char **store)
{
    const prepare_opts *o = p->o;
    char *all = NULL;
    int64_t total = 0, count = 0;
    ST_TRY(gather_names(p, comm, &all, &total));
    for (int64_t i = 0; i < total; i++) count += all[i] == '\0';
    char **list = malloc((size_t)(count + 1) * sizeof *list);
    int *map = malloc((size_t)(p->n_labels + 1) * sizeof *map);
    if (!list || !map) {
        free(all), free(list), free(map);
        ST_FAIL(ST_ERR_MEM, "out of memory for %lld label names", (long long)count);
    }
    int64_t c = 0, u = 0;
    for (int64_t i = 0; i < total; i += (int64_t)strlen(all + i) + 1) list[c++] = all + i;
    qsort(list, (size_t)count, sizeof *list, name_cmp);
    for (int64_t i = 0; i < count; i++)
        if (u == 0 || strcmp(list[u - 1], list[i])) list[u++] = list[i];
    if (u > MAX_LABELS) { /* the same verdict on every rank: the table is the same */
        free(all), free(list), free(map);
        ST_FAIL(ST_ERR_ARG, "%s has %lld distinct labels, more than %d", o->input, (long long)u, MAX_LABELS);
    }
    /* local id -> global id (every local name is in the list) */
    for (int i = 0; i < p->n_labels; i++) {
        char **hit = bsearch(&p->label_list[i], list, (size_t)u, sizeof *list, name_cmp);
        map[i] = (int)(hit - list);
    }
    for (size_t d = 0; d < p->docs.n_docs; d++) p->docs.label[d] = map[p->docs.label[d]];
    free(map);
    *names = list;
    *n = (int)u;
    *store = all;
    return ST_OK;
}

/* ---- the command ---------------------------------------------------------- */

static st_err parse_format(int *fmt, const prepare_opts *o)
{
    *fmt = -1;
    if (!strcmp(o->format, "auto")) return ST_OK;
    for (int i = 0; i < N_FMT; i++)
        if (!strcmp(o->format, fmt_name[i])) *fmt = i;
    if (*fmt < 0) ST_FAIL(ST_ERR_ARG, "--format %s: expected auto, text, sft, chat, pref, classify or ids", o->format);
    return ST_OK;
}

static st_err check_options(int *fmt, const prepare_opts *o)
{
    if (!o->input) ST_FAIL(ST_ERR_ARG, "prepare needs --input FILE (JSONL or CSV)");
    if (!o->out) ST_FAIL(ST_ERR_ARG, "prepare needs --out FILE (the dataset.h5 to write)");
    if (o->max_len < 2) ST_FAIL(ST_ERR_ARG, "--max-len %d: must be at least 2 tokens", o->max_len);
    if (!(o->val_fraction >= 0.0f && o->val_fraction < 1.0f))
        ST_FAIL(ST_ERR_ARG, "--val-fraction %g: must be in [0, 1)", o->val_fraction);
    if (strcmp(o->on_error, "fail") && strcmp(o->on_error, "skip"))
        ST_FAIL(ST_ERR_ARG, "--on-error %s: expected fail or skip", o->on_error);
    if (o->template_name && strcmp(o->template_name, "tokenizer") && !st_template_find(o->template_name))
        ST_FAIL(ST_ERR_ARG, "--template %s: unknown template (available: %s, tokenizer)", o->template_name,
                st_template_names());
    return parse_format(fmt, o);
}

/* The output must not be the input, nor an existing file unless --force. */
static st_err check_output(const prepare_opts *o)
{
    struct stat in, out;
    if (stat(o->out, &out)) return ST_OK; /* nothing there yet */
    if (!stat(o->input, &in) && in.st_dev == out.st_dev && in.st_ino == out.st_ino)
        ST_FAIL(ST_ERR_ARG, "--out %s is the same file as --input %s: it would be overwritten", o->out, o->input);
    if (!o->force) ST_FAIL(ST_ERR_ARG, "--out %s exists; add --force to replace it", o->out);
    return ST_OK;
}

/* Rank 0 plans (counts, detects), then everyone learns the plan. */
static st_err make_plan(plan *pl, int fmt, MPI_Comm comm, int rank, const prepare_opts *o)
{
    memset(pl, 0, sizeof *pl);
    pl->format = fmt;
    st_err e = rank == 0 ? scan(pl, fmt >= 0, o) : ST_OK;
    ST_TRY(st_agree(comm, e));
    ST_TRY(st_bcast(comm, pl, (int64_t)sizeof *pl, ST_M_U8, 0));
    return ST_OK;
}

/* Counters summed over ranks. */
enum { C_RECORDS, C_DOCS, C_TOKENS, C_VAL, C_CUT_P, C_CUT_R, C_SKIP0, N_COUNTS = C_SKIP0 + N_REASONS };

static void print_summary(const prep *p, const int64_t *c, char first[][MSG_CAP], int n_labels,
                          double seconds, int ranks)
{
    const prepare_opts *o = p->o;
    const plan *pl = p->pl;
    int64_t skipped = 0;
    for (int i = 0; i < N_REASONS; i++) skipped += c[C_SKIP0 + i];
    printf("prepare: %s -> %s (kind %s, tokenizer %s, template %s%s)\n", o->input, o->out,
           fmt_name[pl->format], o->tokenizer, p->tpl ? p->tpl->name : "-",
           p->tpl && p->tpl->jinja ? ": the tokenizer's own Jinja chat template" : "");
    printf("  records %lld, docs %lld (train %lld, validation %lld), tokens %lld\n",
           (long long)c[C_RECORDS], (long long)c[C_DOCS], (long long)(c[C_DOCS] - c[C_VAL]),
           (long long)c[C_VAL], (long long)c[C_TOKENS]);
    printf("  skipped %lld\n", (long long)skipped);
    for (int i = 0; i < N_REASONS; i++)
        if (c[C_SKIP0 + i])
            printf("    %-15s %lld  (first: %s)\n", reason_name[i], (long long)c[C_SKIP0 + i], first[i]);
    printf("  cut to --max-len %d: %lld docs lost the start of their prompt, %lld the end of their response\n", o->max_len,
           (long long)c[C_CUT_P], (long long)c[C_CUT_R]);
    if (pl->format == FMT_CLASSIFY) printf("  labels %d\n", n_labels);
    printf("  time %.2f s on %d rank%s\n", seconds, ranks, ranks > 1 ? "s" : "");
    fflush(stdout);
}

/* The first skip message per reason, from the lowest rank that has one. */
static st_err gather_first(prep *p, MPI_Comm comm, int rank, int size, char out[][MSG_CAP])
{
    char *all = rank == 0 ? calloc((size_t)size, sizeof p->first_msg) : NULL;
    st_err e = rank == 0 && !all ? st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory") : ST_OK;
    ST_TRY(st_agree(comm, e));
    e = st_gather(comm, p->first_msg, all, (int64_t)sizeof p->first_msg, ST_M_U8, 0);
    if (e) {
        free(all);
        ST_TRY(e);
    }
    for (int i = 0; rank == 0 && i < N_REASONS; i++) {
        out[i][0] = '\0';
        for (int r = 0; r < size && !out[i][0]; r++)
            memcpy(out[i], all + (size_t)r * sizeof p->first_msg + (size_t)i * MSG_CAP, MSG_CAP);
    }
    free(all);
    return ST_OK;
}

/* The template of sft/chat/pref data: --template, else the tokenizer's own
 * chat template when it has one (not for hh-rlhf pairs, whose text carries
 * its own turn markers: plain), else default. A Jinja template is parsed
 * into *ct and described by *own. */
static st_err choose_template(prep *p, st_template *own, st_chat_template **ct)
{
    const prepare_opts *o = p->o;
    const plan *pl = p->pl;
    if (pl->format != FMT_SFT && pl->format != FMT_CHAT && pl->format != FMT_PREF) return ST_OK;
    int has = st_tokenizer_chat_template(p->tok) != NULL;
    const char *name = o->template_name ? o->template_name : pl->hh ? "plain" : has ? "tokenizer" : "default";
    ST_TRY(st_template_resolve(name, p->tok, o->tokenizer, own, ct, &p->tpl));
    return ST_OK;
}

static st_err prepare(MPI_Comm comm, int fmt, const prepare_opts *o)
{
    int rank, size;
    rank = st_comm_rank(comm);
    size = st_comm_size(comm);
    double t0 = st_now();
    st_tokenizer *tok = NULL;
    plan pl;
    prep p = {.o = o, .pl = &pl, .skip = !strcmp(o->on_error, "skip")};
    char **names = NULL, *store = NULL;
    int n_labels = 0;
    st_template own;
    st_chat_template *ct = NULL;
    st_err e = st_agree(comm, st_tokenizer_load(&tok, o->tokenizer));
    p.tok = tok;
    if (!e) e = make_plan(&pl, fmt, comm, rank, o);
    if (e) goto done;
    e = choose_template(&p, &own, &ct);
    if (!e && pl.format == FMT_CLASSIFY && o->label_names) e = load_label_names(&p);
    ST_TRY_GOTO(e, st_agree(comm, e), done);

    int64_t lo = pl.n_records * rank / size, hi = pl.n_records * (rank + 1) / size, seen;
    e = for_records(o->input, lo, hi, &p, prep_record, prep_bad, &seen);
    ST_TRY_GOTO(e, st_agree(comm, e), done);

    if (pl.format == FMT_CLASSIFY) {
        if (p.fixed_labels) {
            n_labels = p.n_labels;
            names = p.label_list;
        } else {
            ST_TRY_GOTO(e, st_agree(comm, unify_labels(&p, comm, &names, &n_labels, &store)), done);
        }
    }
    int64_t mine[N_COUNTS] = {p.n_records, (int64_t)p.docs.n_docs, (int64_t)p.docs.n_tokens,
                              p.n_val, p.n_cut_prompt, p.n_cut_response};
    int64_t c[N_COUNTS];
    for (int i = 0; i < N_REASONS; i++) mine[C_SKIP0 + i] = p.n_skipped[i];
    memcpy(c, mine, sizeof c);
    ST_TRY_GOTO(e, st_allreduce(comm, c, N_COUNTS, ST_M_I64, ST_OP_SUM), done);
    int64_t skipped = 0;
    for (int i = 0; i < N_REASONS; i++) skipped += c[C_SKIP0 + i];
    char first[N_REASONS][MSG_CAP];
    ST_TRY_GOTO(e, gather_first(&p, comm, rank, size, first), done);
    if (c[C_DOCS] == 0 && skipped > 0) { /* say why, with the first bad record */
        char *why = NULL;
        const char *mine = "";
        for (int i = 0; rank == 0 && i < N_REASONS && !mine[0]; i++) mine = first[i];
        ST_TRY_GOTO(e, st_bcast_str(comm, 0, mine, &why), done);
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "every record of %s was skipped (%lld); the "
                         "first: %s", o->input, (long long)skipped, why ? why : "?");
        free(why);
        goto done;
    }
    st_dataset_info info = {
        .kind = pl.format == FMT_IDS ? "text" : fmt_name[pl.format], /* ids data trains as text */
        .template_name = p.tpl ? p.tpl->name : "", .source = o->input,
        .n_records = c[C_RECORDS], .n_skipped = skipped, .n_truncated_prompt = c[C_CUT_P],
        .n_truncated_response = c[C_CUT_R], .max_len = o->max_len, .val_fraction = o->val_fraction,
        .seed = (uint64_t)o->seed, .n_labels = n_labels, .label_names = names};
    ST_TRY_GOTO(e, st_dataset_write(o->out, comm, tok, &info, &p.docs), done);
    if (rank == 0) print_summary(&p, c, first, n_labels, st_now() - t0, size);
done:
    if (names != p.label_list) free(names);
    free(store);
    prep_free(&p);
    st_chat_template_free(ct);
    st_tokenizer_free(tok);
    return e;
}

st_err st_cmd_prepare(int argc, char **argv, const st_grid *g)
{
    int rank = g->world_rank, help = 0, npos = 0, fmt = -1;
    char *pos[1];
    prepare_opts o;
    st_options opts;
    ST_TRY(st_options_init(&opts, prepare_options, N_OPTIONS, &o));
    st_err e = st_options_parse(&opts, argc, argv, &help, pos, 0, &npos);
    e = st_agree(g->world, e); /* a recipe one rank alone could not read */
    if (!e) e = st_options_same_everywhere(&opts, g->world, argc, argv);
    if (!e && help) {
        if (rank == 0) {
            printf("%s", usage);
            st_options_print_help(&opts, stdout);
            fflush(stdout);
        }
    } else if (!e) {
        e = check_options(&fmt, &o);
        if (!e) e = st_agree(g->world, rank == 0 ? check_output(&o) : ST_OK);
        if (!e) e = prepare(g->world, fmt, &o);
    }
    st_options_free(&opts);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}
