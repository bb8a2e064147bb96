/* cmd_chat_template.c: `shardtune chat-template`, a model's chat template
 * rendered from a script, the way prepare renders it (io/chat_template.h).
 * For checking shardtune's Jinja against transformers, @huggingface/jinja
 * or Jinja2 itself: one JSON line of variables in, one JSON line out. */
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "cmd/options.h"
#include "io/chat/chat_template.h"
#include "io/jsonl.h"
#include "io/tok/tokenizer.h"
#include "mpi/comm.h"

typedef struct { char *input, *bos, *eos; } chat_template_opts;
static const st_option options[] = {
    {"input", ST_OPT_STRING, offsetof(chat_template_opts, input), NULL,
     "JSONL, one object per render: its keys are the template's variables (messages, add_generation_prompt, "
     "tools, enable_thinking, ...); default: standard input", NULL},
    {"bos", ST_OPT_STRING, offsetof(chat_template_opts, bos), NULL, "bos_token for a .jinja file (a tokenizer gives its own)", NULL},
    {"eos", ST_OPT_STRING, offsetof(chat_template_opts, eos), NULL, "eos_token for a .jinja file (a tokenizer gives its own)", NULL},
};

/* One render: obj's keys as variables (add_generation_prompt false unless
 * given, as in transformers); *text or the error's first line. */
static st_err render_line(const st_chat_template *ct, const cJSON *obj, st_jinja_text *text)
{
    st_jinja_var vars[65];
    int n = 0;
    st_err e = ST_OK;
    if (!cJSON_IsObject(obj)) ST_FAIL(ST_ERR_FORMAT, "a line must be a JSON object of template variables");
    if (!cJSON_GetObjectItemCaseSensitive(obj, "add_generation_prompt"))
        vars[n++] = (st_jinja_var){"add_generation_prompt", st_jv_boolean(0)};
    for (const cJSON *k = obj->child; k && !e; k = k->next) {
        if (n == 65) e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "more than 64 variables");
        else e = st_chat_template_json(k, !strcmp(k->string, "messages"), &vars[n].value);
        if (!e) vars[n++].name = k->string;
    }
    if (!e) e = st_chat_template_render_vars(ct, vars, n, text, NULL);
    for (int i = 0; i < n; i++) st_jv_unref(vars[i].value);
    return e;
}

/* The first line of the current error message. */
static cJSON *error_line(void)
{
    const char *m = st_error_message(), *nl = strchr(m, '\n');
    char *first = strndup(m, nl ? (size_t)(nl - m) : strlen(m));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", first ? first : "out of memory");
    free(first);
    return o;
}

static st_err load(const char *source, const chat_template_opts *o, st_chat_template **ct)
{
    if (strchr(source, ':')) { /* a tokenizer: its own template and bos/eos, as prepare takes them */
        st_tokenizer *tok;
        ST_TRY(st_tokenizer_load(&tok, source));
        st_err e = st_chat_template_from_tokenizer(ct, tok);
        st_tokenizer_free(tok);
        return e;
    }
    FILE *f = fopen(source, "rb");
    if (!f) ST_FAIL(ST_ERR_IO, "cannot open the chat template %s", source);
    char *src = NULL;
    size_t n = 0;
    FILE *mem = open_memstream(&src, &n);
    char buf[65536];
    for (size_t got; mem && (got = fread(buf, 1, sizeof buf, f)) > 0;) fwrite(buf, 1, got, mem);
    int bad = ferror(f);
    fclose(f);
    if (!mem || fclose(mem) || bad) {
        free(src);
        ST_FAIL(ST_ERR_IO, "cannot read the chat template %s", source);
    }
    st_err e = st_chat_template_new(ct, src, o->bos, o->eos);
    free(src);
    return e;
}

static st_err run(const char *source, MPI_Comm world, void *opts)
{
    const chat_template_opts *o = opts;
    if (st_comm_rank(world)) return ST_OK; /* one renderer: rank 0 */
    st_chat_template *ct;
    ST_TRY(load(source, o, &ct));
    st_lines *in;
    st_err e = st_lines_open(&in, o->input ? o->input : "/dev/stdin");
    if (e) {
        st_chat_template_free(ct);
        return e;
    }
    st_jinja_text text = {0};
    for (int eof = 0; !e;) {
        const char *line;
        size_t len;
        cJSON *obj = NULL, *res;
        if ((e = st_lines_next(in, &line, &len, &eof)) || eof) break;
        if (st_line_blank(line, len)) continue;
        if ((e = st_json_parse_line(&obj, line, len, st_lines_path(in), st_lines_lineno(in)))) break;
        if (render_line(ct, obj, &text)) {
            res = error_line();
        } else {
            res = cJSON_CreateObject();
            cJSON_AddItemToObject(res, "text", cJSON_CreateString(text.s ? text.s : ""));
        }
        char *json = cJSON_PrintUnformatted(res);
        if (json) puts(json);
        else e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
        free(json);
        cJSON_Delete(res);
        cJSON_Delete(obj);
    }
    st_jinja_text_free(&text);
    st_lines_close(in);
    st_chat_template_free(ct);
    if (!e && fflush(stdout)) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot write the output");
    return e;
}

st_err st_cmd_chat_template(int argc, char **argv, MPI_Comm world)
{
    chat_template_opts o;
    return st_options_run(argc, argv, world, options, sizeof options / sizeof options[0], &o,
                          "usage: shardtune chat-template TEMPLATE.jinja|TOKENIZER [--input chats.jsonl]\n\n"
                          "Renders a chat template as prepare does (transformers' apply_chat_template with\n"
                          "tokenize=False; io/jinja.h lists the Jinja supported), once per input line, and\n"
                          "prints {\"text\": ...} or {\"error\": ...} per line: for checking the rendering\n"
                          "against other implementations (make interop). TOKENIZER (hf:DIR/tokenizer.json)\n"
                          "gives its tokenizer_config.json's template, bos_token and eos_token. An input\n"
                          "line's keys are the variables, e.g.\n"
                          "  {\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"add_generation_prompt\": true}\n"
                          "strftime_now uses SOURCE_DATE_EPOCH (seconds, UTC) when set, else the local time.\n\n",
                          "a chat template file or a tokenizer", run);
}
