/* tokenize.c: `shardtune tokenize TOKENIZER_OR_CKPT`: texts in, token ids
 * out (or ids in, texts out with --decode), one line each, so a user can hold
 * shardtune's tokenizers against another tool's. The tokenizer is a spec as
 * prepare takes it or the one a checkpoint stores. World rank 0 does the
 * work; the other ranks only agree on the outcome.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint.h"
#include "io/chat/tokseq.h"
#include "io/jsonl.h"
#include "io/tok/tokenizer.h"
#include "cmd/commands.h"
#include "cmd/options.h"
#include "mpi/comm.h"
#include "mpi/grid.h"

typedef struct {
    char *input, *out, *format, *field;
    int decode, add_special, parse_special;
} tok_opts;

static const st_option tok_options[] = {
    {"input", ST_OPT_STRING, offsetof(tok_opts, input), "-", "file to read (- = standard input; gzip is read too)", NULL},
    {"out", ST_OPT_STRING, offsetof(tok_opts, out), "-", "file to write (- = standard output)", NULL},
    {"format", ST_OPT_STRING, offsetof(tok_opts, format), "lines", "lines: each input line is one text (decode: prints each text on its line); jsonl: each line a JSON string or an object whose --field is the text (decode: prints JSON strings)", NULL},
    {"field", ST_OPT_STRING, offsetof(tok_opts, field), "text", "the field holding the text in --format jsonl objects", NULL},
    {"decode", ST_OPT_BOOL, offsetof(tok_opts, decode), "false", "ids in, text out: each line a JSON array of ids (or an object with \"ids\")", NULL},
    {"add_special", ST_OPT_BOOL, offsetof(tok_opts, add_special), "true", "put bos/eos around each text by the tokenizer's own rule (add_bos_token, add_eos_token), as prepare and generate do", NULL},
    {"parse_special", ST_OPT_BOOL, offsetof(tok_opts, parse_special), "true", "special-token text in the input (\"<|im_end|>\") becomes that token, as Hugging Face tokenizers do", NULL},
};
#define N_TOK ((int)(sizeof tok_options / sizeof tok_options[0]))

static const char usage[] =
    "usage: shardtune tokenize TOKENIZER_OR_CKPT [options] < texts > ids\n\n"
    "Token ids of each text, one JSON array per line ([1, 403, 407]); with --decode\n"
    "the text of each line of ids. TOKENIZER_OR_CKPT: a tokenizer spec as prepare\n"
    "takes it (byte, gpt2:DIR, hf:PATH/tokenizer.json, llama2c:PATH/tokenizer.bin,\n"
    "llmc:PATH) or a checkpoint, whose stored tokenizer is used.\n\n";

/* A spec names its kind before a colon ("hf:..."), or is "byte". */
static int is_spec(const char *arg)
{
    static const char *const kinds[] = {"gpt2:", "hf:", "llama2c:", "llmc:"};
    if (!strcmp(arg, "byte")) return 1;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (!strncmp(arg, kinds[i], strlen(kinds[i]))) return 1;
    return 0;
}

static st_err load_tokenizer(const char *arg, st_tokenizer **tok)
{
    if (is_spec(arg)) {
        ST_TRY(st_tokenizer_load(tok, arg));
        return ST_OK;
    }
    char *kind = NULL;
    uint8_t *blob = NULL;
    size_t n = 0;
    st_err e = st_ckpt_read_tokenizer(arg, &kind, &blob, &n);
    if (e) {
        char why[512];
        snprintf(why, sizeof why, "%s", st_error_message());
        ST_FAIL(e, "'%s' is neither a tokenizer spec (byte, gpt2:DIR, hf:PATH/tokenizer.json, llama2c:PATH, "
                "llmc:PATH) nor a readable checkpoint: %s", arg, why);
    }
    e = kind ? st_tokenizer_from_blob(tok, kind, blob, n)
                    : st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                   "checkpoint '%s' carries no tokenizer (give a tokenizer spec instead)", arg);
    free(kind);
    free(blob);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* The text of one input line: the line itself, or its JSON string. *j keeps
 * the parsed line alive while the text is used. */
static st_err line_text(const char *line, size_t len, const char *path, int64_t lineno, cJSON **j,
                        const char **text, size_t *n, const tok_opts *o)
{
    if (strcmp(o->format, "jsonl") != 0) {
        *text = line, *n = len;
        return ST_OK;
    }
    ST_TRY(st_json_parse_line(j, line, len, path, lineno));
    const cJSON *v = cJSON_IsObject(*j) ? cJSON_GetObjectItemCaseSensitive(*j, o->field) : *j;
    if (!cJSON_IsString(v))
        ST_FAIL(ST_ERR_FORMAT, "%s:%lld: expected a JSON string or an object with a string \"%s\"", path,
                (long long)lineno, o->field);
    *text = v->valuestring, *n = strlen(v->valuestring);
    return ST_OK;
}

/* One text's ids as a JSON array line; bos/eos by the tokenizer's rule. */
static st_err encode_line(const st_tokenizer *tok, const char *text, size_t n, const char *where,
                          st_tokseq *q, FILE *out, const tok_opts *o)
{
    st_tokseq_clear(q);
    st_err e = ST_OK;
    if (o->add_special && st_tokenizer_adds_bos(tok)) {
        e = st_tokseq_push_id(q, st_tokenizer_bos(tok), 0);
        q->has_bos = 1;   /* the text still starts a sequence (sentencepiece's dummy prefix) */
    }
    if (!e) e = st_tokseq_push_text(q, tok, text, n, o->parse_special, 0);
    if (!e && o->add_special && st_tokenizer_adds_eos(tok)) e = st_tokseq_push_id(q, st_tokenizer_eos(tok), 0);
    if (e) {
        char why[512];
        snprintf(why, sizeof why, "%s", st_error_message());
        ST_FAIL(e, "%s: %s", where, why);
    }
    fputc('[', out);
    for (size_t i = 0; i < q->n; i++) fprintf(out, i ? ", %d" : "%d", q->ids[i]);
    fputs("]\n", out);
    return ST_OK;
}

static st_err decode_line(const st_tokenizer *tok, const char *line, size_t len, const char *path, int64_t lineno,
                          FILE *out, const tok_opts *o)
{
    cJSON *j = NULL;
    ST_TRY(st_json_parse_line(&j, line, len, path, lineno));
    const cJSON *arr = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "ids") : j;
    int n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
    int32_t *ids = n > 0 ? malloc(sizeof *ids * (size_t)n) : NULL;
    st_err e = n < 0 ? st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                    "%s:%lld: expected a JSON array of token ids or an object with \"ids\"", path,
                                    (long long)lineno)
             : n > 0 && !ids ? st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory")
                             : ST_OK;
    for (int i = 0; !e && i < n; i++) {
        const cJSON *v = cJSON_GetArrayItem(arr, i);
        if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int32_t)v->valuedouble)
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s:%lld: ids[%d] is not an integer",
                             path, (long long)lineno, i);
        else ids[i] = (int32_t)v->valuedouble;
    }
    char *text = NULL;
    size_t tlen = 0;
    if (!e && (e = st_tokenizer_decode(tok, ids, (size_t)(n > 0 ? n : 0), &text, &tlen))) {
        char why[512];
        snprintf(why, sizeof why, "%s", st_error_message());
        e = st_error_set(e, __FILE__, __LINE__, __func__, "%s:%lld: %s", path, (long long)lineno, why);
    }
    if (!e && strcmp(o->format, "jsonl") == 0) {
        cJSON *s = cJSON_CreateString(text);
        char *js = s ? cJSON_PrintUnformatted(s) : NULL;
        if (js) fprintf(out, "%s\n", js);
        else e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
        free(js);
        cJSON_Delete(s);
    } else if (!e) {
        fwrite(text, 1, tlen, out);
        fputc('\n', out);
    }
    free(text);
    free(ids);
    cJSON_Delete(j);
    return e;
}

static st_err run(const char *arg, const tok_opts *o)
{
    if (strcmp(o->format, "lines") != 0 && strcmp(o->format, "jsonl") != 0)
        ST_FAIL(ST_ERR_ARG, "--format %s: expected lines or jsonl", o->format);
    st_tokenizer *tok = NULL;
    ST_TRY(load_tokenizer(arg, &tok));
    const char *path = strcmp(o->input, "-") ? o->input : "/dev/stdin";
    st_lines *r = NULL;
    st_err e = st_lines_open(&r, path);
    FILE *out = stdout;
    st_tokseq q = {0};
    if (!e && strcmp(o->out, "-") && !(out = fopen(o->out, "w")))
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot write '%s': %s", o->out, strerror(errno));
    for (int eof = 0; !e;) {
        const char *line;
        size_t len;
        if ((e = st_lines_next(r, &line, &len, &eof)) || eof) break;
        int64_t lineno = st_lines_lineno(r);
        int jsonl = strcmp(o->format, "jsonl") == 0;
        if ((jsonl || o->decode) && st_line_blank(line, len)) continue;
        if (o->decode) {
            e = decode_line(tok, line, len, o->input, lineno, out, o);
            continue;
        }
        cJSON *j = NULL;
        const char *text = NULL;
        size_t n = 0;
        char where[512];
        snprintf(where, sizeof where, "%s:%lld", o->input, (long long)lineno);
        e = line_text(line, len, o->input, lineno, &j, &text, &n, o);
        if (!e) e = encode_line(tok, text, n, where, &q, out, o);
        cJSON_Delete(j);
    }
    if (out && out != stdout && fclose(out) != 0 && !e)
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "writing '%s' failed: %s", o->out, strerror(errno));
    if (out == stdout) fflush(stdout);
    if (r) st_lines_close(r);
    st_tokseq_free(&q);
    st_tokenizer_free(tok);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

static st_err tokenize(const char *arg, MPI_Comm world, void *opts)
{
    return st_agree(world, st_comm_rank(world) == 0 ? run(arg, opts) : ST_OK);
}

st_err st_cmd_tokenize(int argc, char **argv, MPI_Comm world)
{
    tok_opts o;
    return st_options_run(argc, argv, world, tok_options, N_TOK, &o, usage, "a tokenizer spec or a checkpoint",
                          tokenize);
}
