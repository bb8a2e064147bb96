/* test_chat_template.c: a model's own Jinja chat template in prepare
 * (io/jinja*.c, io/chat/chat_template.c, the "tokenizer" template of prepare).
 *
 * Fixtures are the chat_template strings real models ship in
 * tokenizer_config.json (sources next to each). Expected texts are written
 * by hand from what transformers' apply_chat_template produces for them
 * (checked while writing against Jinja2 3.1 set up as transformers sets
 * it up: trim_blocks, lstrip_blocks, loopcontrols). Token expectations use
 * a small Hugging Face tokenizer built here: one token per byte (id = the
 * byte) plus special added tokens (ids from 256), so a text's ids are its
 * bytes except where a special token is matched.
 * Runs without fork: prepare uses MPI (a 1x1 grid on MPI_COMM_SELF).
 */
#include <check.h>
#include <cjson/cJSON.h>
#include <hdf5.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cmd/commands.h"
#include "harness.h"
#include "io/chat/chat_template.h"
#include "io/chat/jinja.h"
#include "io/chat/template.h"
#include "io/dataset.h"
#include "io/h5util.h"
#include "io/tok/tokenizer.h"
#include "mpi/grid.h"

static st_grid G;
static char DIR_[256];

/* ---- real chat templates ------------------------------------------------------ */

/* A real model's template from data/chat-templates/ (data/SOURCES.md says
 * where each came from), read once. */
static const char *tpl(const char *file)
{
    static struct {
        char name[64];
        char *src;
    } cache[32];
    int i = 0;
    for (; i < 32 && cache[i].src; i++)
        if (!strcmp(cache[i].name, file)) return cache[i].src;
    ck_assert(i < 32);
    char rel[128];
    snprintf(rel, sizeof rel, "chat-templates/%s", file);
    snprintf(cache[i].name, sizeof cache[i].name, "%s", file);
    cache[i].src = th_read_file(th_data_path(rel), NULL);
    return cache[i].src;
}

#define SMOLLM2 tpl("smollm2.jinja")          /* ChatML with a default system message */
#define QWEN2 tpl("qwen2.jinja")              /* also Qwen1.5-Chat */
#define LLAMA3 tpl("llama3_1.jinja")          /* bos_token written by the template, content trimmed */
#define LLAMA3_FIRST tpl("llama3.jinja")      /* the first release: the assistant header always at the end */
#define LLAMA2 tpl("llama2.jinja")
#define MISTRAL tpl("mistral-v0.1.jinja")     /* Mixtral-8x7B-Instruct-v0.1, Mistral-7B-Instruct-v0.2 */
#define ZEPHYR tpl("zephyr.jinja")            /* line breaks between tags: trim_blocks and lstrip_blocks decide */
#define PHI3_SMALL tpl("phi3-small.jinja")    /* eos only after the last message */
#define QWEN3 tpl("qwen3.jinja")              /* drops the reasoning of turns before the last user message */
#define GPT_OSS tpl("gpt-oss.jinja")          /* macros, strftime_now, <|return|> ends the last turn */
#define HERMES3 tpl("hermes3-tool_use.jinja") /* a recursive macro over the tools' JSON schemas */
#define SMOLLM3 tpl("smollm3.jinja")          /* strftime_now, {% generation %} blocks */
#define MISTRAL_SMALL3 tpl("mistral-small-3.2.jinja") /* strftime_now in the default system message */
#define GEMMA3 tpl("gemma3.jinja")

/* ---- conversations ------------------------------------------------------------- */

static const st_turn T1[] = {{ST_ROLE_USER, "Hi", 2}};
static const st_turn T2[] = {{ST_ROLE_USER, "Hi", 2}, {ST_ROLE_ASSISTANT, "Hello!", 6}};
static const st_turn T3[] = {{ST_ROLE_USER, "Hi", 2}, {ST_ROLE_ASSISTANT, "Hello!", 6}, {ST_ROLE_USER, "Bye", 3}};
static const st_turn TS[] = {{ST_ROLE_SYSTEM, "Be brief.", 9}, {ST_ROLE_USER, "Hi", 2}, {ST_ROLE_ASSISTANT, "Hello!", 6}};

/* ---- helpers --------------------------------------------------------------------- */

static st_chat_template *parse_ok(const char *src, const char *bos, const char *eos)
{
    st_chat_template *ct = NULL;
    st_err e = st_chat_template_new(&ct, src, bos, eos);
    ck_assert_msg(e == ST_OK && ct, "parse failed: %s", st_error_message());
    return ct;
}

static void expect_text(const char *src, const char *bos, const char *eos, const st_turn *t, int n, int gen,
                        const char *want)
{
    st_chat_template *ct = parse_ok(src, bos, eos);
    st_jinja_text out = {0};
    st_err e = st_chat_template_apply(ct, t, n, gen, &out);
    ck_assert_msg(e == ST_OK, "render failed: %s", st_error_message());
    ck_assert_msg(out.n == strlen(want) && !memcmp(out.s, want, out.n), "rendered\n[%s]\nexpected\n[%s]",
                  out.s ? out.s : "", want);
    st_jinja_text_free(&out);
    st_chat_template_free(ct);
}

static void assert_has(const char *hay, const char *needle)
{
    ck_assert_msg(strstr(hay, needle) != NULL, "expected '%s' in: %s", needle, hay);
}

/* Parsing src must fail naming line and what. */
static void expect_parse_error(const char *src, const char *line, const char *what)
{
    st_chat_template *ct = NULL;
    st_error_clear();
    st_err e = st_chat_template_new(&ct, src, "<s>", "</s>");
    ck_assert_msg(e != ST_OK && !ct, "parsing [%.60s] should fail", src);
    assert_has(st_error_message(), line);
    assert_has(st_error_message(), what);
    assert_has(st_error_message(), "use --template default|plain|chatml");
}

/* Rendering src over t must fail with what in the message. */
static void expect_render_error(const char *src, const st_turn *t, int n, const char *what)
{
    st_chat_template *ct = parse_ok(src, "<s>", "</s>");
    st_jinja_text out = {0};
    st_error_clear();
    st_err e = st_chat_template_apply(ct, t, n, 1, &out);
    ck_assert_msg(e == ST_ERR_FORMAT, "rendering [%.60s] should fail, got %d: %s", src, e, st_error_message());
    assert_has(st_error_message(), what);
    st_jinja_text_free(&out);
    st_chat_template_free(ct);
}

/* ---- a small Hugging Face tokenizer ---------------------------------------------- */

/* Special added tokens of the fixture, ids 256 + index. */
static const char *const SPECIAL[] = {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>",
                                      "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>", "<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>"};
#define N_SPECIAL 14
enum { IM_START = 256, IM_END, ENDOFTEXT, BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT_ID, BOS_S, EOS_S };

static char *fixture_json(void)
{
    cJSON *root = cJSON_CreateObject(), *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    cJSON *added = cJSON_CreateArray(), *pre = cJSON_CreateObject();
    for (int b = 0; b < 256; b++) {
        char c[3];
        th_gpt2_stand_in(b, c);
        cJSON_AddNumberToObject(vocab, c, b);
    }
    for (int i = 0; i < N_SPECIAL; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", 256 + i);
        cJSON_AddStringToObject(a, "content", SPECIAL[i]);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", cJSON_CreateArray());
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", 0);
    cJSON_AddBoolToObject(pre, "use_regex", 1);
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", pre);
    cJSON_AddItemToObject(root, "model", model);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

static void spit(const char *path, const char *s) { th_write_file(path, s, strlen(s)); }

static const char *tmp_path(const char *name)
{
    static char buf[8][512];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, 512, "%s/%s", DIR_, name);
    return b;
}

/* DIR_/sub/tokenizer.json + tokenizer_config.json with template, bos and
 * eos (NULL: null). Returns the "hf:..." spec (static). */
static const char *tokenizer_dir(const char *sub, const char *tpl, const char *bos, const char *eos)
{
    static char spec[600];
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/%s", DIR_, sub);
    mkdir(dir, 0700);
    char *json = fixture_json();
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    spit(path, json);
    free(json);
    cJSON *cfg = cJSON_CreateObject();
    if (bos) cJSON_AddStringToObject(cfg, "bos_token", bos);
    else cJSON_AddNullToObject(cfg, "bos_token");
    if (eos) cJSON_AddStringToObject(cfg, "eos_token", eos);
    else cJSON_AddNullToObject(cfg, "eos_token");
    if (tpl) cJSON_AddStringToObject(cfg, "chat_template", tpl);
    char *c = cJSON_PrintUnformatted(cfg);
    cJSON_Delete(cfg);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    spit(path, c);
    free(c);
    snprintf(spec, sizeof spec, "hf:%s/tokenizer.json", dir);
    return spec;
}

static st_tokenizer *load_tok(const char *spec)
{
    st_tokenizer *t = NULL;
    ck_assert_msg(st_tokenizer_load(&t, spec) == ST_OK, "load %s: %s", spec, st_error_message());
    return t;
}

/* Expected ids and mask, built from text. */
typedef struct {
    int32_t ids[4096];
    uint8_t mask[4096];
    size_t n;
} expect_seq;

static void ex_id(expect_seq *x, int32_t id, uint8_t m)
{
    ck_assert(x->n < 4096);
    x->ids[x->n] = id;
    x->mask[x->n++] = m;
}

/* Bytes of s as ids (what content encodes to). */
static void ex_bytes(expect_seq *x, const char *s, uint8_t m)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) ex_id(x, *p, m);
}

/* Template text: its special tokens become their ids, the rest bytes. */
static void ex_tpl(expect_seq *x, const char *s, uint8_t m)
{
    while (*s) {
        int hit = -1;
        for (int i = 0; i < N_SPECIAL && hit < 0; i++)
            if (!strncmp(s, SPECIAL[i], strlen(SPECIAL[i]))) hit = i;
        if (hit >= 0) {
            ex_id(x, 256 + hit, m);
            s += strlen(SPECIAL[hit]);
        } else {
            ex_id(x, (unsigned char)*s++, m);
        }
    }
}

static void assert_seq(const int32_t *ids, const uint8_t *mask, size_t n, const expect_seq *x)
{
    for (size_t k = 0; k < n && k < x->n; k++) {
        ck_assert_msg(ids[k] == x->ids[k], "token %zu: %d, expected %d", k, ids[k], x->ids[k]);
        ck_assert_msg(mask[k] == x->mask[k], "mask %zu (token %d): %d, expected %d", k, ids[k], mask[k], x->mask[k]);
    }
    ck_assert_uint_eq(n, x->n);
}

/* The tokens of turns through the tokenizer's own template. */
static void render_seq(st_tokseq *s, const st_tokenizer *tok, const st_turn *t, int n)
{
    st_chat_template *ct = NULL;
    ck_assert_msg(st_chat_template_from_tokenizer(&ct, tok) == ST_OK, "%s", st_error_message());
    st_template tpl = {"tokenizer", {NULL, NULL, NULL}, ct};
    st_err e = st_template_render(s, &tpl, tok, t, n);
    ck_assert_msg(e == ST_OK, "render: %s", st_error_message());
    st_chat_template_free(ct);
}

/* ---- the language ------------------------------------------------------------------- */

START_TEST(test_language)
{
    static const struct {
        const char *src, *want;
    } cases[] = {
        /* whitespace control, trim_blocks, lstrip_blocks, comments, trailing newline */
        {"a  {%- if true %} b {% endif -%}  c\n  {% if true %}\n    x\n  {% endif %}\nd", "a b c\n    x\nd"},
        {"  {%+ if true %}k{% endif %}\n{# c #}\n  {#- c2 -#}  e {{- ' v ' -}} f\n", "  ke v f"},
        {"{% for m in messages %}\n  {{ m.role }}\n{% endfor %}\n", "  user\n  assistant\n"},
        {"{% if true +%}\nX{% endif %}", "\nX"},
        {"abc\r\n\r\n", "abc\n"},
        /* loops */
        {"{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};"
         "{% else %}E{% endfor %}", "10TrueFalse2;21FalseTrue2;"},
        {"{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 5 %}{% break %}{% endif %}{{ i }}"
         "{% endfor %}", "01345"},
        {"{% for x in [] %}x{% else %}empty{% endfor %}{% for x in [1, 2, 3] if x > 1 %}{{ loop.index }}{{ x }}"
         "{% endfor %}", "empty1223"},
        {"{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}", "a=1;b=2;"},
        {"{% for c in 'h\xc3\xa9y' %}[{{ c }}]{% endfor %}", "[h][\xc3\xa9][y]"},
        /* scoping: a loop's sets stay in its iteration; namespaces carry values out */
        {"{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 2 %}{% endfor %}{{ x }}", "111"},
        {"{% set ns = namespace(a=1, found=false) %}{% for i in [1, 2, 3] %}{% set ns.a = ns.a + i %}"
         "{% set ns.found = true %}{% endfor %}{{ ns.a }}{{ ns.found }}", "7True"},
        {"{% if true %}{% set y = 5 %}{% endif %}{{ y }}", "5"},
        {"{% set x %}[{{ messages | length }}]{% endset %}{{ x }}{{ x | length }}", "[2]3"},
        /* indexing, slicing, attributes */
        {"{{ messages[1:] | length }}{{ messages[-1].role }}{{ messages[0]['content'] }}{{ messages[0].nope is defined }}",
         "1assistantHiFalse"},
        {"{{ 'abcdef'[1:4] }} {{ 'abcdef'[::-1] }} {{ 'abcdef'[::2] }} {{ [1, 2, 3, 4][-2:] }} {{ 'h\xc3\xa9llo'[1] }} "
         "{{ [1, 2, 3][5:1:-1] }} {{ messages[10] is defined }}", "bcd fedcba ace [3, 4] \xc3\xa9 [3] False"},
        /* operators */
        {"{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 'a' ~ 1 ~ none ~ true }} {{ 1 + 2 * 3 }} "
         "{{ 'ab' * 2 }} {{ [1] + [2] }} {{ 1 == 1.0 }} {{ 1 < 2 < 3 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 2.0 }}",
         "3 -4 2 3.5 1024 a1NoneTrue 7 abab [1, 2] True True 0.30000000000000004 1e+16 2.0"},
        {"{{ none or 'd' }} {{ 'x' and 'y' }} {{ 0 and 1 }} {{ not [] }} {{ 'a' in 'cat' }} {{ 3 not in [1, 2] }} "
         "{{ 'k' in {'k': 1} }} [{{ 'z' if false }}] {{ 'y' if true else 'n' }}", "d y 0 True True True True [] y"},
        /* tests */
        {"{{ x is defined }}{{ x is undefined }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}{{ {} is mapping }}"
         "{{ [] is iterable }}{{ 'a' is sequence }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 'a' is not none }}"
         "{{ 1 is integer }}{{ true is boolean }}{{ 'a' is eq 'a' }}",
         "FalseTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrue"},
        /* filters */
        {"{{ '  a b  ' | trim }}|{{ messages | length }}|{{ 'h\xc3\xa9llo' | length }}|{{ 'abc' | upper }}|"
         "{{ 'hello wORLD' | capitalize }}|{{ 'hello wORLD-x' | title }}|{{ x | default('d') }}|{{ '' | default('e', true) }}|"
         "{{ [1, 2, 3] | first }}{{ [1, 2, 3] | last }}|{{ ['a', 'b'] | join(', ') }}|{{ 'aXb' | replace('X', '-') }}|"
         "{{ 'ab' | list }}|{{ {'a': 1} | items | list }}|{{ 42 | string }}|{{ messages | map(attribute='role') | join(',') }}|"
         "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}",
         "a b|2|5|ABC|Hello world|Hello World-X|d|e|13|a, b|a-b|['a', 'b']|[('a', 1)]|42|user,assistant|1"},
        {"{{ {'a': [1, 2.5, none, true, 'q\"\\\\\\n\xc3\xa9'], 'b': {}} | tojson }}|{{ {'k': [1]} | tojson(indent=2) }}",
         "{\"a\": [1, 2.5, null, true, \"q\\\"\\\\\\n\xc3\xa9\"], \"b\": {}}|{\n  \"k\": [\n    1\n  ]\n}"},
        /* Jinja's |title is not Python's str.title() */
        {"{{ \"they're abc1def [x-y\" | title }}|{{ \"they're abc1def\".title() }}", "They're Abc1def [X-Y|They'Re Abc1Def"},
        /* string and dict methods */
        {"{{ '  x y  '.strip() }}|{{ '--x--'.strip('-') }}|{{ '  x '.lstrip() }}|{{ ' x  '.rstrip() }}|"
         "{{ 'hello'.startswith('he') }}{{ 'hello'.endswith('lo') }}|{{ 'a b  c'.split() }}|{{ 'a,b,,c'.split(',') }}|"
         "{{ 'assistant'.title() }}|{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}|{{ 'aaa'.replace('a', 'b', 2) }}|"
         "{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b') }}{{ {'a': 1}.get('b', 7) }}|{{ {'a': 1}.keys() | list }}|"
         "{{ 'x</think>y'.split('</think>')[-1] }}",
         "x y|x|x | x|TrueTrue|['a', 'b', 'c']|['a', 'b', '', 'c']|Assistant|ABab|bba|1None7|['a']|y"},
        /* printing values as Python does */
        {"{{ messages[0] }}|{{ [1, 'a', none, true, 1.5, {'k': \"it's\"}] }}|{{ none }}|{{ x }}|{{ (1, 2) }}|{{ 'a' 'b' }}",
         "{'role': 'user', 'content': 'Hi'}|[1, 'a', None, True, 1.5, {'k': \"it's\"}]|None||(1, 2)|ab"},
        {"{{ 'a\\tb\\x41\\u00e9\\101\\q' }}", "a\tbA\xc3\xa9" "A\\q"},
        /* undefined variables are empty and false; tools and documents are None as transformers passes them */
        {"{% if extra %}T{% else %}N{% endif %}{% if extra is not none %}X{% endif %}{{ extra | length }}"
         "{% for t in extra %}t{% endfor %}{{ undefined_name }}|{{ tools }}{{ tools is none }}{{ documents is defined }}",
         "NX0|NoneTrueTrue"},
        /* HF's generation block is transparent */
        {"{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}", "HiHello!"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_text(cases[i].src, "<s>", "</s>", T2, 2, 0, cases[i].want);
}
END_TEST

/* ---- real templates ------------------------------------------------------------------- */

#define SMOL_SYS "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
#define QWEN_SYS "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
#define ML_U "<|im_start|>user\nHi<|im_end|>\n"
#define ML_A "<|im_start|>assistant\nHello!<|im_end|>\n"
#define ML_B "<|im_start|>user\nBye<|im_end|>\n"
#define ML_G "<|im_start|>assistant\n"

START_TEST(test_chatml_templates)
{
    expect_text(SMOLLM2, "<|im_start|>", "<|im_end|>", T1, 1, 0, SMOL_SYS ML_U);
    expect_text(SMOLLM2, "<|im_start|>", "<|im_end|>", T1, 1, 1, SMOL_SYS ML_U ML_G);
    expect_text(SMOLLM2, "<|im_start|>", "<|im_end|>", T2, 2, 0, SMOL_SYS ML_U ML_A);
    expect_text(SMOLLM2, "<|im_start|>", "<|im_end|>", T2, 2, 1, SMOL_SYS ML_U ML_A ML_G);
    expect_text(SMOLLM2, "<|im_start|>", "<|im_end|>", T3, 3, 0, SMOL_SYS ML_U ML_A ML_B);
    expect_text(SMOLLM2, "<|im_start|>", "<|im_end|>", T3, 3, 1, SMOL_SYS ML_U ML_A ML_B ML_G);
    expect_text(SMOLLM2, "<|im_start|>", "<|im_end|>", TS, 3, 0, "<|im_start|>system\nBe brief.<|im_end|>\n" ML_U ML_A);
    expect_text(QWEN2, NULL, "<|im_end|>", T1, 1, 1, QWEN_SYS ML_U ML_G);
    expect_text(QWEN2, NULL, "<|im_end|>", T2, 2, 0, QWEN_SYS ML_U ML_A);
    expect_text(QWEN2, NULL, "<|im_end|>", T3, 3, 1, QWEN_SYS ML_U ML_A ML_B ML_G);
    expect_text(QWEN2, NULL, "<|im_end|>", TS, 3, 0, "<|im_start|>system\nBe brief.<|im_end|>\n" ML_U ML_A);
}
END_TEST

#define L3_H "<|start_header_id|>"
#define L3_E "<|end_header_id|>\n\n"

START_TEST(test_llama_mistral_zephyr)
{
    const char *bot = "<|begin_of_text|>", *eot = "<|eot_id|>";
    expect_text(LLAMA3, bot, eot, T1, 1, 0, "<|begin_of_text|>" L3_H "user" L3_E "Hi<|eot_id|>");
    expect_text(LLAMA3, bot, eot, T1, 1, 1, "<|begin_of_text|>" L3_H "user" L3_E "Hi<|eot_id|>" L3_H "assistant" L3_E);
    expect_text(LLAMA3, bot, eot, T2, 2, 0,
                "<|begin_of_text|>" L3_H "user" L3_E "Hi<|eot_id|>" L3_H "assistant" L3_E "Hello!<|eot_id|>");
    expect_text(LLAMA3, bot, eot, T3, 3, 1,
                "<|begin_of_text|>" L3_H "user" L3_E "Hi<|eot_id|>" L3_H "assistant" L3_E "Hello!<|eot_id|>" L3_H "user"
                L3_E "Bye<|eot_id|>" L3_H "assistant" L3_E);
    static const st_turn spaced[] = {{ST_ROLE_USER, "  Hi \n", 6}};   /* | trim */
    expect_text(LLAMA3, bot, eot, spaced, 1, 0, "<|begin_of_text|>" L3_H "user" L3_E "Hi<|eot_id|>");

    expect_text(LLAMA2, "<s>", "</s>", T1, 1, 0, "<s>[INST] Hi [/INST]");
    expect_text(LLAMA2, "<s>", "</s>", T2, 2, 0, "<s>[INST] Hi [/INST] Hello! </s>");
    expect_text(LLAMA2, "<s>", "</s>", T3, 3, 0, "<s>[INST] Hi [/INST] Hello! </s><s>[INST] Bye [/INST]");
    expect_text(LLAMA2, "<s>", "</s>", TS, 3, 0, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s>");

    expect_text(MISTRAL, "<s>", "</s>", T1, 1, 1, "<s>[INST] Hi [/INST]");
    expect_text(MISTRAL, "<s>", "</s>", T2, 2, 0, "<s>[INST] Hi [/INST]Hello!</s>");
    expect_text(MISTRAL, "<s>", "</s>", T3, 3, 0, "<s>[INST] Hi [/INST]Hello!</s>[INST] Bye [/INST]");

    expect_text(ZEPHYR, NULL, "</s>", T1, 1, 0, "<|user|>\nHi</s>\n");
    expect_text(ZEPHYR, NULL, "</s>", T1, 1, 1, "<|user|>\nHi</s>\n<|assistant|>\n");
    expect_text(ZEPHYR, NULL, "</s>", T2, 2, 0, "<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n");
    expect_text(ZEPHYR, NULL, "</s>", T3, 3, 1, "<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n<|user|>\nBye</s>\n<|assistant|>\n");
    expect_text(ZEPHYR, NULL, "</s>", TS, 3, 0, "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n");
}
END_TEST

START_TEST(test_raise_exception)
{
    static const st_turn uu[] = {{ST_ROLE_USER, "a", 1}, {ST_ROLE_USER, "b", 1}};
    expect_render_error(LLAMA2, uu, 2, "chat template line 1: the template raised an error: Conversation roles must "
                        "alternate user/assistant/user/assistant/...");
    expect_render_error(MISTRAL, TS, 3, "Conversation roles must alternate user/assistant/user/assistant/...");
    expect_render_error("{{ 'x' }}\n\n{{ raise_exception('line ' ~ 3) }}", T1, 1, "chat template line 3: the template raised an error: line 3");
    /* the template's text reaches the terminal without control characters */
    expect_render_error("{{ raise_exception('a\\nb\\x1b[2J') }}", T1, 1, "raised an error: a b [2J");
    /* undefined: empty and false, but not something to compute with */
    expect_render_error("{{ x.y }}", T1, 1, "'x' is undefined");
    expect_render_error("\n{{ bos + 'a' }}", T1, 1, "line 2: 'bos' is undefined");
    expect_render_error("{{ messages[5]['role'] }}", T1, 1, "is undefined");
    expect_render_error("{{ strftime_nowish('%d') }}", T1, 1, "'strftime_nowish' is undefined");
    expect_render_error("{{ 'a'.format(1) }}", T1, 1, "the string method 'format' is not supported");
    expect_render_error("{{ 1 // 0 }}", T1, 1, "division by zero");
    expect_render_error("{{ 9223372036854775807 + 1 }}", T1, 1, "integer overflow");
    expect_render_error("{{ 'a' - 1 }}", T1, 1, "cannot apply - to a string and an integer");
}
END_TEST

/* ---- macros and call blocks ------------------------------------------------------------- */

START_TEST(test_macros)
{
    /* expected texts: Jinja2 3.1.2 set up as transformers sets it up */
    static const struct {
        const char *src, *want;
    } cases[] = {
        /* defaults (evaluated per call, seeing earlier parameters), keywords, missing arguments undefined */
        {"{% macro f(a, b='B', c=a ~ '!') %}[{{ a }}|{{ b }}|{{ c }}]{% endmacro %}{{ f(1) }}{{ f(1, c=3) }}"
         "{{ f(a='x', b='y') }}{{ f() }}{% set v = f(2) %}{{ v | length }}{{ v == '[2|B|2!]' }}",
         "[1|B|1!][1|B|3][x|y|x!][|B|!]8True"},
        /* recursion */
        {"{% macro r(n) %}{% if n > 0 %}{{ n }}{{ r(n - 1) }}{% endif %}{% endmacro %}{{ r(5) }}", "54321"},
        /* a call block's body sees the variables where it stands (the loop), with caller's arguments */
        {"{% macro w(x) %}<{{ caller(x, 2) }}>{% endmacro %}{% for m in messages %}{% call(p, q) w(m.role) %}"
         "{{ p }}{{ q }}{{ m.content }}{{ loop.index }}{% endcall %}{% endfor %}", "<user2Hi1><assistant2Hello!2>"},
        {"{% macro list(items) %}{% for i in items %}{{ caller(i) }}{% if not loop.last %},{% endif %}{% endfor %}"
         "{% endmacro %}{% call(i) list([1, 2, 3]) %}<{{ i * 2 }}>{% endcall %}", "<2>,<4>,<6>"},
        /* a macro sees where it was defined, not the caller's loop; its sets stay inside */
        {"{% macro g() %}[{{ m }}]{% endmacro %}{% for m in messages %}{{ g() }}{% endfor %}{% macro h() %}{{ x }}"
         "{% endmacro %}{% set x = 5 %}{{ h() }}{% set y = 1 %}{% macro k() %}{% set y = 2 %}{{ y }}{% endmacro %}"
         "{{ k() }}{{ y }}", "[][]521"},
        /* trim_blocks and lstrip_blocks inside a body; macros are callable values */
        {"{% macro t(s) %}\n  x {{ s }}\n{% endmacro %}[{{ t('a') }}]{% macro f() %}{% endmacro %}{{ f is callable }}"
         "{{ f is defined }}{{ f() == '' }}", "[  x a\n]TrueTrueTrue"},
        /* namespaces carry values out; caller is undefined without a call block */
        {"{% set ns = namespace(n=0) %}{% macro inc() %}{% set ns.n = ns.n + 1 %}{% endmacro %}{{ inc() }}{{ inc() }}"
         "{{ ns.n }}{% macro c() %}{{ caller is defined }}{% endmacro %}{{ c() }}", "2False"},
        /* a macro defined inside a macro */
        {"{% macro outer(x) %}{% macro inner(y) %}({{ x }}{{ y }}){% endmacro %}{{ inner(1) }}{{ inner(2) }}"
         "{% endmacro %}{{ outer('a') }}", "(a1)(a2)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) expect_text(cases[i].src, "<s>", "</s>", T2, 2, 0, cases[i].want);

    expect_render_error("{% macro f(a) %}{% endmacro %}\n{{ f(1, 2) }}", T1, 1, "line 2: macro 'f' takes not more than 1 argument(s)");
    expect_render_error("{% macro f(a) %}{% endmacro %}{{ f(b=2) }}", T1, 1, "macro 'f' takes no keyword argument 'b'");
    expect_render_error("{% macro f(a) %}{% endmacro %}{{ f(1, a=2) }}", T1, 1, "macro 'f' takes no keyword argument 'a'");
    expect_render_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", T1, 1, "macros call each other more than 64 deep");
    expect_render_error("{{ m() }}{% macro m() %}{% endmacro %}", T1, 1, "'m' is undefined");
    expect_render_error("{% macro c() %}{{ caller() }}{% endmacro %}{{ c() }}", T1, 1, "'caller' is undefined");
    expect_render_error("{% macro o() %}x{% endmacro %}{% call o() %}{% endcall %}", T1, 1,
                        "macro 'o' does not use caller, but a call block gives it one");
    expect_render_error("{% set x = 1 %}{% call x() %}{% endcall %}", T1, 1, "a call block needs a macro, not an integer");
    /* exponential recursion ends on the step budget */
    expect_render_error("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
                        T1, 1, "chat template line 1: the template ");
}
END_TEST

/* gpt-oss and Hermes 3 call their macros on the tools' JSON schemas */
START_TEST(test_macro_templates)
{
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    expect_text(GPT_OSS, "<|startoftext|>", "<|return|>", T3, 3, 1,
                "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge "
                "cutoff: 2024-06\nCurrent date: 2023-11-14\n\nReasoning: medium\n\n# Valid channels: analysis, "
                "commentary, final. Channel must be included for every message.<|end|><|start|>user<|message|>Hi"
                "<|end|><|start|>assistant<|channel|>final<|message|>Hello!<|end|><|start|>user<|message|>Bye<|end|>"
                "<|start|>assistant");
    static const char tools_json[] =
        "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Get the weather\", "
        "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": "
        "\"The city\"}, \"days\": {\"type\": \"array\", \"items\": {\"type\": \"integer\"}, \"description\": \"Days "
        "ahead\"}, \"opts\": {\"type\": \"object\", \"additionalProperties\": {\"type\": [\"string\", \"number\"]}, "
        "\"description\": \"Options\"}}, \"required\": [\"city\"]}}}]";
    const struct {
        const char *src, *bos, *eos, *has;
    } cases[] = {
        {GPT_OSS, "<|startoftext|>", "<|return|>", "type get_weather = (_: {\n// The city\ncity: string,\n// Days "
         "ahead\ndays?: number[],\n// Options\nopts?: object,\n}) => any;"},
        {HERMES3, "<|begin_of_text|>", "<|im_end|>", "get_weather(city: str, days: list[Union[]], opts: dict[str, "
         "Union[str,float]]) - Get the weather\n\n    Args:\n        city(str): The city        days(list[Union[]]): "
         "Days ahead"},
    };
    cJSON *json = cJSON_Parse(tools_json);
    ck_assert(json);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_chat_template *ct = parse_ok(cases[i].src, cases[i].bos, cases[i].eos);
        st_jv *tools, *msgs = st_jv_new_list(), *m = st_jv_new_dict();
        ck_assert_int_eq(st_chat_template_json(json, 0, &tools), ST_OK);
        ck_assert_int_eq(st_jv_put(m, "role", st_jv_string("user", 4, 0)), ST_OK);
        ck_assert_int_eq(st_jv_put(m, "content", st_jv_string("Hi", 2, 1)), ST_OK);
        ck_assert_int_eq(st_jv_append(msgs, m), ST_OK);
        st_jinja_var vars[] = {{"messages", msgs}, {"tools", tools}};
        st_jinja_text out = {0};
        ck_assert_msg(st_chat_template_render_vars(ct, vars, 2, &out, NULL) == ST_OK, "%s", st_error_message());
        assert_has(out.s, cases[i].has);
        st_jinja_text_free(&out);
        st_jv_unref(tools), st_jv_unref(msgs);
        st_chat_template_free(ct);
    }
    cJSON_Delete(json);
    unsetenv("SOURCE_DATE_EPOCH");
}
END_TEST

/* ---- strftime_now ------------------------------------------------------------------------ */

START_TEST(test_strftime_now)
{
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1); /* 2023-11-14 22:13:20 UTC, a Tuesday */
    expect_text("{{ strftime_now('%Y-%m-%d|%d %B %Y|%d %b %Y|%A %H:%M:%S|%j|%z%Z|%f|%%|%-d|%%Y') }}", NULL, NULL,
                T1, 1, 0, "2023-11-14|14 November 2023|14 Nov 2023|Tuesday 22:13:20|318||000000|%|14|%Y");
    expect_text("{{ strftime_now is defined }}{{ strftime_now('') }}", NULL, NULL, T1, 1, 0, "True");
    /* the real templates that call it */
    st_chat_template *ct = parse_ok(MISTRAL_SMALL3, "<s>", "</s>");
    st_jinja_text out = {0};
    ck_assert_int_eq(st_chat_template_apply(ct, T2, 2, 0, &out), ST_OK);
    assert_has(out.s, "<s>[SYSTEM_PROMPT]You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI");
    assert_has(out.s, "The current date is 2023-11-14.\n");
    assert_has(out.s, "[/SYSTEM_PROMPT][INST]Hi[/INST]Hello!</s>");
    st_chat_template_free(ct);
    ct = parse_ok(SMOLLM3, NULL, "<|im_end|>");
    ck_assert_int_eq(st_chat_template_apply(ct, T2, 2, 0, &out), ST_OK);
    assert_has(out.s, "Knowledge Cutoff Date: June 2025\nToday Date: 14 November 2023\nReasoning Mode: /think\n");
    st_chat_template_free(ct);
    st_jinja_text_free(&out);
    /* a bad clock is an error, not another date */
    setenv("SOURCE_DATE_EPOCH", "12abc", 1);
    expect_render_error("{{ strftime_now('%Y') }}", T1, 1, "SOURCE_DATE_EPOCH='12abc' is not a number of seconds");
    unsetenv("SOURCE_DATE_EPOCH");
    expect_render_error("{{ strftime_now() }}", T1, 1, "strftime_now needs a string");
    expect_render_error("{{ strftime_now(5) }}", T1, 1, "strftime_now needs a string, not an integer");
    /* without it: the local time now, as transformers' datetime.now() (twice if an hour began meanwhile) */
    char want[64], got[64];
    for (int tries = 0; tries < 2; tries++) {
        time_t now = time(NULL);
        struct tm tm;
        strftime(want, sizeof want, "%Y-%m-%d %H", localtime_r(&now, &tm));
        ct = parse_ok("{{ strftime_now('%Y-%m-%d %H') }}", NULL, NULL);
        ck_assert_int_eq(st_chat_template_apply(ct, T1, 1, 0, &out), ST_OK);
        snprintf(got, sizeof got, "%s", out.s);
        st_chat_template_free(ct);
        st_jinja_text_free(&out);
        if (!strcmp(got, want)) break;
    }
    ck_assert_str_eq(got, want);
}
END_TEST

/* ---- what is not supported --------------------------------------------------------------- */

START_TEST(test_unsupported)
{
    expect_parse_error("a\n{% macro f(*args) %}{% endmacro %}", "chat template line 2", "expected a parameter name");
    expect_parse_error("{% macro f() %}{{ varargs }}{% endmacro %}", "line 1", "macros taking varargs are not supported");
    expect_parse_error("{% macro f() %}\n{{ kwargs }}{% endmacro %}", "line 2", "macros taking kwargs are not supported");
    expect_parse_error("{% macro f(a=1, b) %}{% endmacro %}", "line 1", "non-default argument follows default argument");
    expect_parse_error("{% macro f(a, a) %}{% endmacro %}", "line 1", "parameter 'a' given twice");
    expect_parse_error("a\nb\n{% macro f() %}x", "chat template line 3", "never closed ({% endmacro %} missing)");
    expect_parse_error("{% call f %}{% endcall %}", "line 1", "{% call %} needs a macro call");
    expect_parse_error("{% endmacro %}", "line 1", "unexpected {% endmacro %}");
    expect_parse_error("{% for x in y %}{% macro f() %}{% break %}{% endmacro %}{% endfor %}", "line 1",
                       "'break' outside a for loop");
    expect_parse_error("{% include 'x.j2' %}", "line 1", "'include' statement");
    expect_parse_error("{% import 'x' as y %}", "line 1", "'import' statement");
    expect_parse_error("{% extends 'base' %}", "line 1", "'extends' statement");
    expect_parse_error("{% block b %}{% endblock %}", "line 1", "'block' statement");
    expect_parse_error("{% filter upper %}x{% endfilter %}", "line 1", "'filter' statement");
    expect_parse_error("{% with a = 1 %}{% endwith %}", "line 1", "'with' statement");
    expect_parse_error("{% raw %}x{% endraw %}", "line 1", "'raw' statement");
    expect_parse_error("x\n{{ messages | xmlattr }}", "line 2", "the Jinja filter 'xmlattr' is not supported");
    expect_parse_error("{{ 1 is prime }}", "line 1", "the Jinja test 'prime' is not supported");
    expect_parse_error("{% for x in y recursive %}{% endfor %}", "line 1", "recursive for loops");
    expect_parse_error("{% frobnicate %}", "line 1", "unknown statement 'frobnicate'");
    /* malformed templates */
    expect_parse_error("ok\n{{ x", "line 2", "never closed");
    expect_parse_error("{% if x %}", "line 1", "never closed ({% endif %} missing)");
    expect_parse_error("{% for m in messages %}\n{% endif %}", "line 2", "unexpected {% endif %}");
    expect_parse_error("{# comment", "line 1", "never closed with #}");
    expect_parse_error("{{ 'abc }}", "line 1", "string literal is not closed");
    expect_parse_error("{{ (1 }}", "line 1", "unexpected '}'");
    expect_parse_error("{{ (1 ]", "line 1", "unexpected ']'");
    expect_parse_error("{% if 1 1 %}{% endif %}", "line 1", "syntax error: expected '%}', found '1'");
    expect_parse_error("{{ 1 + }}", "line 1", "expected an expression");
    expect_parse_error("{% break %}", "line 1", "'break' outside a for loop");
    expect_parse_error("{{ 99999999999999999999 }}", "line 1", "too large");
    expect_parse_error("{{ 'a' ! 'b' }}", "line 1", "unexpected character '!'");
    expect_parse_error("{{ x }}\xff", "", "not valid UTF-8");
}
END_TEST

/* ---- hostile templates: errors, never crashes or runaways ----------------------------------- */

static char *repeat(const char *a, int n, const char *mid, const char *b)
{
    size_t la = strlen(a), lm = strlen(mid), lb = strlen(b);
    char *s = malloc(la * (size_t)n + lm + lb * (size_t)n + 1), *p = s;
    for (int i = 0; i < n; i++) memcpy(p, a, la), p += la;
    memcpy(p, mid, lm), p += lm;
    for (int i = 0; i < n; i++) memcpy(p, b, lb), p += lb;
    *p = '\0';
    return s;
}

START_TEST(test_hostile)
{
    char *s = repeat("(", 5000, "1", ")");   /* deep brackets */
    char *src = NULL;
    ck_assert(asprintf(&src, "{{ %s }}", s) > 0);
    expect_parse_error(src, "line 1", "nest");
    free(s), free(src);
    s = repeat("{% if true %}", 3000, "x", "{% endif %}");   /* deep statements */
    expect_parse_error(s, "line 1", "nests more than");
    free(s);
    s = repeat("[", 3000, "", "]");
    ck_assert(asprintf(&src, "{{ %s }}", s) > 0);
    expect_parse_error(src, "line 1", "nest");
    free(s), free(src);
    s = repeat("1 + ", 100000, "1", "");   /* a long flat chain is deep too */
    ck_assert(asprintf(&src, "{{ %s }}", s) > 0);
    expect_parse_error(src, "line 1", "nests more than");
    free(s), free(src);

    clock_t t0 = clock();
    expect_render_error("{% for i in range(1000000000) %}{% endfor %}", T1, 1, "more than the 1000000 allowed");
    expect_render_error("{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}", T1, 1,
                        "runs too long");
    expect_render_error("{% set s = 'x' * 1000 %}{% set s = s * 1000 %}{% for i in range(1000000) %}{{ s }}"
                        "{% endfor %}", T1, 1, "grows beyond 64 MiB");
    expect_render_error("{% set ns = namespace(s='xy') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}"
                        "{% endfor %}", T1, 1, "grows beyond 64 MiB");
    expect_render_error("{{ 'a' * 1000000000 }}", T1, 1, "");
    expect_render_error("{{ '' * 1000000000 }}", T1, 1, "runs too long");
    expect_render_error("{{ [] * 1000000000000 }}", T1, 1, "runs too long");
    /* work on big values counts, not just the number of operations */
    static const char big[] = "{% set s = 'x' * 1000 %}{% set s = s * 50000 %}{% set t = s * 1 %}";
    static const char *const heavy[] = {
        "{% for i in range(1000000) %}{% if s == t %}{% endif %}{% endfor %}",
        "{% for i in range(1000000) %}{% if 'y' in s %}{% endif %}{% endfor %}",
        "{% for i in range(1000000) %}{% if s[-1] %}{% endif %}{% endfor %}",
        "{% for i in range(1000000) %}{% if s | length %}{% endif %}{% endfor %}",
        "{% for i in range(1000000) %}{% if s.split('y') %}{% endif %}{% endfor %}",
        "{% for i in range(1000000) %}{% if s.strip('x') %}{% endif %}{% endfor %}",
        "{{ s.strip('z' * 100000 + 'x') }}",
    };
    for (size_t i = 0; i < sizeof heavy / sizeof heavy[0]; i++) {
        char *h = NULL;
        ck_assert(asprintf(&h, "%s%s", big, heavy[i]) > 0);
        expect_render_error(h, T1, 1, "chat template line 1: the template ");
        free(h);
    }
    expect_render_error("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}{% endfor %}",
                        T1, 1, "nested more than 64 deep");
    expect_render_error("{% set ns = namespace() %}{% set ns.me = ns %}", T1, 1, "a namespace cannot hold a namespace");
    expect_render_error("{% set ns = namespace() %}{% set ns.me = [1, {'k': ns}] %}", T1, 1, "cannot hold a namespace");
    expect_render_error("{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}"
                        "{% endfor %}", T1, 1, "runs too long");
    ck_assert_msg((double)(clock() - t0) / CLOCKS_PER_SEC < 60, "hostile renders took %.1f s",
                  (double)(clock() - t0) / CLOCKS_PER_SEC);

    /* a long legitimate conversation stays well inside the limits */
    st_turn many[400];
    for (int i = 0; i < 400; i++) many[i] = (st_turn){i % 2 ? ST_ROLE_ASSISTANT : ST_ROLE_USER, "some words", 10};
    st_chat_template *ct = parse_ok(QWEN2, NULL, "<|im_end|>");
    st_jinja_text out = {0};
    ck_assert_int_eq(st_chat_template_apply(ct, many, 400, 1, &out), ST_OK);
    ck_assert_uint_gt(out.n, 400 * 10);
    st_jinja_text_free(&out);
    st_chat_template_free(ct);
}
END_TEST

/* ---- tokens and the loss mask --------------------------------------------------------------- */

START_TEST(test_mask_chatml)
{
    st_tokenizer *tok = load_tok(tokenizer_dir("tok_smol", SMOLLM2, "<|im_start|>", "<|im_end|>"));
    ck_assert_int_eq(st_tokenizer_bos(tok), IM_START);
    ck_assert_int_eq(st_tokenizer_eos(tok), IM_END);
    /* content that spells a special token stays text; the template's own is the token */
    static const st_turn chat[] = {{ST_ROLE_USER, "Hi <|im_end|> there", 19}, {ST_ROLE_ASSISTANT, "Hello!", 6},
                                   {ST_ROLE_USER, "Bye", 3}, {ST_ROLE_ASSISTANT, "See <|im_start|>you.", 20},
                                   {ST_ROLE_USER, "(left out)", 10}};
    st_tokseq s = {0};
    render_seq(&s, tok, chat, 5);
    expect_seq x = {.n = 0};
    ex_tpl(&x, SMOL_SYS "<|im_start|>user\n", 0);
    ex_bytes(&x, "Hi <|im_end|> there", 0);
    ex_tpl(&x, "<|im_end|>\n<|im_start|>assistant\n", 0);
    size_t first_resp = x.n;
    ex_bytes(&x, "Hello!", 1);
    ex_tpl(&x, "<|im_end|>\n", 1);
    ex_tpl(&x, "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", 0);
    size_t last_resp = x.n;
    ex_bytes(&x, "See <|im_start|>you.", 1);
    ex_tpl(&x, "<|im_end|>\n", 1);
    assert_seq(s.ids, s.mask, s.n, &x);
    ck_assert_uint_eq(s.resp_start, last_resp);
    ck_assert_uint_gt(last_resp, first_resp);
    /* the template writes bos_token ("<|im_start|>") itself: no second one */
    ck_assert_int_eq(s.ids[0], IM_START);
    ck_assert_int_ne(s.ids[1], IM_START);
    ck_assert_int_eq(s.has_bos, 1);
    st_tokseq_free(&s);
    st_tokenizer_free(tok);

    /* Qwen2: no bos at all */
    tok = load_tok(tokenizer_dir("tok_qwen", QWEN2, NULL, "<|im_end|>"));
    render_seq(&s, tok, T2, 2);
    expect_seq y = {.n = 0};
    ex_tpl(&y, QWEN_SYS ML_U "<|im_start|>assistant\n", 0);
    ex_bytes(&y, "Hello!", 1);
    ex_tpl(&y, "<|im_end|>\n", 1);
    assert_seq(s.ids, s.mask, s.n, &y);
    ck_assert_int_eq(s.has_bos, 0);
    st_tokseq_free(&s);
    st_tokenizer_free(tok);
}
END_TEST

START_TEST(test_mask_llama)
{
    /* Llama 3: the template writes <|begin_of_text|>; content is trimmed */
    st_tokenizer *tok = load_tok(tokenizer_dir("tok_l3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>"));
    static const st_turn chat[] = {{ST_ROLE_SYSTEM, "Be brief.", 9}, {ST_ROLE_USER, "Hi", 2},
                                   {ST_ROLE_ASSISTANT, " Hello! ", 8}};
    st_tokseq s = {0};
    render_seq(&s, tok, chat, 3);
    expect_seq x = {.n = 0};
    ex_tpl(&x, "<|begin_of_text|>" L3_H "system" L3_E "Be brief.<|eot_id|>" L3_H "user" L3_E "Hi<|eot_id|>"
               L3_H "assistant" L3_E, 0);
    ex_tpl(&x, "Hello!<|eot_id|>", 1);
    assert_seq(s.ids, s.mask, s.n, &x);
    ck_assert_int_eq(s.has_bos, 1);
    ck_assert_int_eq(s.ids[1], START_HEADER);   /* one bos */
    /* the max-length policy keeps that bos and cuts the prompt from the left */
    int cut_p, cut_r;
    size_t resp = s.n - s.resp_start;
    st_tokseq_fit(&s, resp + 5, 0, &cut_p, &cut_r);
    ck_assert_int_eq(cut_p, 1);
    ck_assert_int_eq(cut_r, 0);
    ck_assert_int_eq(s.ids[0], BEGIN_OF_TEXT);
    ck_assert_uint_eq(s.n, resp + 5);
    st_tokseq_free(&s);
    st_tokenizer_free(tok);

    /* Llama 2: bos before every [INST]; the response is " Hello! </s>" */
    tok = load_tok(tokenizer_dir("tok_l2", LLAMA2, "<s>", "</s>"));
    static const st_turn four[] = {{ST_ROLE_USER, "Hi", 2}, {ST_ROLE_ASSISTANT, "Hello!", 6},
                                   {ST_ROLE_USER, "Bye", 3}, {ST_ROLE_ASSISTANT, "Ciao", 4}};
    render_seq(&s, tok, four, 4);
    expect_seq y = {.n = 0};
    ex_tpl(&y, "<s>[INST] Hi [/INST]", 0);
    ex_tpl(&y, " Hello! </s>", 1);
    ex_tpl(&y, "<s>[INST] Bye [/INST]", 0);
    size_t last = y.n;
    ex_tpl(&y, " Ciao </s>", 1);
    assert_seq(s.ids, s.mask, s.n, &y);
    ck_assert_uint_eq(s.resp_start, last);
    ck_assert_int_eq(s.has_bos, 1);
    st_tokseq_free(&s);
    st_tokenizer_free(tok);

    /* Zephyr: the tokenizer has a distinct bos the template does not write: none, as
     * transformers' apply_chat_template(tokenize=True) (add_special_tokens=False) gives */
    tok = load_tok(tokenizer_dir("tok_zephyr", ZEPHYR, "<s>", "</s>"));
    render_seq(&s, tok, TS, 3);
    expect_seq z = {.n = 0};
    ex_tpl(&z, "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n", 0);
    ex_tpl(&z, "Hello!</s>\n", 1);
    assert_seq(s.ids, s.mask, s.n, &z);
    ck_assert_int_eq(s.has_bos, 0);
    st_tokseq_free(&s);
    st_tokenizer_free(tok);
}
END_TEST

/* The text of fixture ids (a byte, or a special token) [from, to). */
static void ids_text(const int32_t *ids, size_t from, size_t to, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = from; i < to; i++) {
        const char *t = ids[i] >= 256 ? SPECIAL[ids[i] - 256] : (const char[]){(char)ids[i], 0};
        size_t len = ids[i] >= 256 ? strlen(t) : 1;
        ck_assert(n + len < cap);
        memcpy(out + n, t, len), n += len;
    }
    out[n] = '\0';
}

/* The learned runs of s, each followed by "|". */
static void learned_runs(const st_tokseq *s, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < s->n;) {
        size_t j = i;
        while (j < s->n && s->mask[j] == s->mask[i]) j++;
        if (s->mask[i]) {
            ids_text(s->ids, i, j, out + n, cap - n - 1);
            n += strlen(out + n);
            out[n++] = '|', out[n] = '\0';
        }
        i = j;
    }
}

/* Turns through template src with the fixture tokenizer: the tokens must
 * spell render(turns) (after a bos the tokenizer adds) and the learned runs
 * must be want ("run|run|"). */
static void expect_mask(const char *src, const char *bos, const char *eos, const st_turn *t, int n, const char *want)
{
    static int dirs;
    char sub[32];
    snprintf(sub, sizeof sub, "tok_mask%d", dirs++);
    st_tokenizer *tok = load_tok(tokenizer_dir(sub, src, bos, eos));
    st_chat_template *ct = NULL;
    ck_assert_int_eq(st_chat_template_from_tokenizer(&ct, tok), ST_OK);
    st_tokseq s = {0};
    st_error_clear();
    ck_assert_msg(st_chat_template_render(&s, ct, tok, t, n) == ST_OK, "%s", st_error_message());
    st_jinja_text full = {0};
    ck_assert_int_eq(st_chat_template_apply(ct, t, n, 0, &full), ST_OK);
    static char text[65536], runs[65536];
    ids_text(s.ids, s.has_bos && !(bos && !strncmp(full.s, bos, strlen(bos))), s.n, text, sizeof text);
    ck_assert_msg(!strcmp(text, full.s), "tokens spell\n[%s]\nnot the rendering\n[%s]", text, full.s);
    learned_runs(&s, runs, sizeof runs);
    ck_assert_msg(!strcmp(runs, want), "learned\n[%s]\nexpected\n[%s]", runs, want);
    ck_assert_uint_eq(s.mask[s.resp_start], 1);
    st_jinja_text_free(&full);
    st_tokseq_free(&s);
    st_chat_template_free(ct);
    st_tokenizer_free(tok);
}

/* The rule that locates each reply in the text the whole conversation renders. */
START_TEST(test_mask_rules)
{
    static const st_turn four[] = {{ST_ROLE_USER, "Hi", 2}, {ST_ROLE_ASSISTANT, "Hello!", 6},
                                   {ST_ROLE_USER, "Bye", 3}, {ST_ROLE_ASSISTANT, "Ciao", 4}};
    /* prefix-stable: the prefix method */
    expect_mask(SMOLLM2, "<|im_start|>", "<|im_end|>", four, 4, "Hello!<|im_end|>\n|Ciao<|im_end|>\n|");
    expect_mask(LLAMA2, "<s>", "</s>", four, 4, " Hello! </s>| Ciao </s>|");
    /* Phi-3-small writes eos only after the last message: earlier turns end where the template's
     * loop over the messages ended them; the final eos, written only when not prompting, is learned */
    expect_mask(PHI3_SMALL, "<s>", "</s>", four, 4, "Hello!<|end|>\n|Ciao<|end|>\n</s>|");
    expect_mask(PHI3_SMALL, "<s>", "</s>", T2, 2, "Hello!<|end|>\n</s>|");
    /* Qwen3 keeps reasoning only after the last user message, so a turn renders unlike its prefix */
    expect_mask(QWEN3, NULL, "<|im_end|>", four, 4, "Hello!<|im_end|>\n|<think>\n\n</think>\n\nCiao<|im_end|>\n|");
    static const st_turn reasoned[] = {{ST_ROLE_USER, "Hi", 2}, {ST_ROLE_ASSISTANT, "<think>\nplan\n</think>\n\nHello!", 29},
                                       {ST_ROLE_USER, "Bye", 3}, {ST_ROLE_ASSISTANT, "<think>\nmore\n</think>\n\nCiao", 27}};
    expect_mask(QWEN3, NULL, "<|im_end|>", reasoned, 4, "Hello!<|im_end|>\n|<think>\nmore\n</think>\n\nCiao<|im_end|>\n|");
    /* the first Llama 3 template always ends with an assistant header: never learned */
    expect_mask(LLAMA3_FIRST, "<|begin_of_text|>", "<|eot_id|>", four, 4, "Hello!<|eot_id|>|Ciao<|eot_id|>|");
    expect_mask(LLAMA3_FIRST, "<|begin_of_text|>", "<|eot_id|>", T2, 2, "Hello!<|eot_id|>|");
    expect_mask(LLAMA3, "<|begin_of_text|>", "<|eot_id|>", four, 4, "Hello!<|eot_id|>|Ciao<|eot_id|>|");
    /* gpt-oss ends the last turn with <|return|>, earlier ones with <|end|> */
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    expect_mask(GPT_OSS, NULL, "<|return|>", four, 4,
                "<|channel|>final<|message|>Hello!<|end|>|<|channel|>final<|message|>Ciao<|return|>|");
    /* SmolLM3 marks the replies with {% generation %}: exactly that text, its header included */
    expect_mask(SMOLLM3, NULL, "<|im_end|>", four, 4,
                "<|im_start|>assistant\nHello!<|im_end|>\n|<|im_start|>assistant\nCiao<|im_end|>\n|");
    unsetenv("SOURCE_DATE_EPOCH");

    /* not prefix-stable and no loop over the messages themselves: refused, naming the message */
    static const char by_index[] =
        "{{ bos_token }}{% for i in range(messages | length) %}{{ '<|' + messages[i]['role'] + '|>\n' + "
        "messages[i]['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}"
        "{% else %}{{ eos_token }}{% endif %}";
    st_tokenizer *tok = load_tok(tokenizer_dir("tok_index", by_index, "<s>", "</s>"));
    st_chat_template *ct = NULL;
    ck_assert_int_eq(st_chat_template_from_tokenizer(&ct, tok), ST_OK);
    st_tokseq s = {0};
    st_error_clear();
    ck_assert_int_eq(st_chat_template_render(&s, ct, tok, four, 4), ST_ERR_FORMAT);
    assert_has(st_error_message(), "chat template is not prefix-stable at message 1");
    assert_has(st_error_message(), "use --template");
    ck_assert_int_eq(st_chat_template_render(&s, ct, tok, T2, 2), ST_OK); /* one exchange: the end of the text */
    st_chat_template_free(ct);

    /* a template that drops assistant text leaves nothing to learn */
    ck_assert_int_eq(st_chat_template_new(&ct, "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}"
                                          "{% endif %}{% endfor %}", "<s>", "</s>"), ST_OK);
    ck_assert_int_eq(st_chat_template_render(&s, ct, tok, T2, 2), ST_ERR_FORMAT);
    assert_has(st_error_message(), "renders assistant message 1 as nothing");
    st_chat_template_free(ct);
    /* generation blocks that write nothing */
    ck_assert_int_eq(st_chat_template_new(&ct, "{% for m in messages %}{{ m.content }}{% generation %}{% endgeneration %}"
                                          "{% endfor %}", "<s>", "</s>"), ST_OK);
    ck_assert_int_eq(st_chat_template_render(&s, ct, tok, T2, 2), ST_ERR_FORMAT);
    assert_has(st_error_message(), "{% generation %} blocks wrote nothing");
    st_tokseq_free(&s);
    st_chat_template_free(ct);
    st_tokenizer_free(tok);
}
END_TEST

/* Where the prefix method applies, the end of each turn's loop iteration (what
 * the final-rendering rule uses) is the prefix method's end: the two rules agree. */
START_TEST(test_rules_agree)
{
    const char *stable[] = {SMOLLM2, QWEN2, LLAMA3, LLAMA2, MISTRAL, ZEPHYR};
    static const char *const words[] = {"Hi", " spaced ", "caf\xc3\xa9", "\xe2\x98\x83 snow", "a\nb", "<|im_end|>", ""};
    uint64_t rng = 7;
    for (size_t t = 0; t < sizeof stable / sizeof stable[0]; t++) {
        st_chat_template *ct = parse_ok(stable[t], "<s>", "</s>");
        for (int trial = 0; trial < 40; trial++) {
            int n = 2 + 2 * (int)((rng = rng * 6364136223846793005ULL + 1442695040888963407ULL) >> 62);
            st_jv *msg[8], *list = st_jv_new_list();
            for (int i = 0; i < n; i++) {
                const char *w = words[((rng = rng * 6364136223846793005ULL + 1442695040888963407ULL) >> 33) % 7];
                const char *role = i % 2 ? "assistant" : "user";
                msg[i] = st_jv_new_dict();
                ck_assert_int_eq(st_jv_put(msg[i], "role", st_jv_string(role, strlen(role), 0)), ST_OK);
                ck_assert_int_eq(st_jv_put(msg[i], "content", st_jv_string(w, strlen(w), 1)), ST_OK);
                ck_assert_int_eq(st_jv_append(list, st_jv_ref(msg[i])), ST_OK);
            }
            st_jinja_span iter[8];
            st_jinja_report rep = {.track = msg, .n_track = n, .iter = iter};
            st_jinja_var vars[] = {{"messages", list}};
            st_jinja_text full = {0}, part = {0};
            ck_assert_int_eq(st_chat_template_render_vars(ct, vars, 1, &full, &rep), ST_OK);
            for (int k = 1; k < n - 1; k += 2) {
                st_jv *first = st_jv_new_list();
                for (int i = 0; i <= k; i++) ck_assert_int_eq(st_jv_append(first, st_jv_ref(msg[i])), ST_OK);
                st_jinja_var v1[] = {{"messages", first}};
                ck_assert_int_eq(st_chat_template_render_vars(ct, v1, 1, &part, NULL), ST_OK);
                ck_assert_msg(part.n <= full.n && !memcmp(part.s, full.s, part.n), "template %zu is not prefix-stable", t);
                ck_assert_msg(iter[k].b == part.n, "template %zu, message %d: loop ends at %zu, prefix at %zu", t, k,
                              iter[k].b, part.n);
                st_jv_unref(first);
            }
            st_jinja_text_free(&full), st_jinja_text_free(&part);
            st_jinja_report_free(&rep);
            st_jv_unref(list);
            for (int i = 0; i < n; i++) st_jv_unref(msg[i]);
        }
        st_chat_template_free(ct);
    }
}
END_TEST

/* ---- prepare, end to end ---------------------------------------------------------------------- */

static st_err run_prepare(const char *first, ...)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = "prepare";
    argv[argc++] = "--force"; /* the tests write their outputs again and again */
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    st_error_clear();
    return st_cmd_prepare(argc, argv, &G);
}

static char *template_attr(const char *path)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    char *s = NULL;
    ck_assert_int_eq(st_h5_attr_read_str(f, "template", 256, &s), ST_OK);
    H5Fclose(f);
    return s;
}

static void assert_doc(const st_dataset *ds, int64_t i, const expect_seq *x)
{
    int32_t *t;
    uint8_t *m;
    size_t n;
    ck_assert_int_eq(st_dataset_read_doc(ds, i, &t, &m, &n), ST_OK);
    assert_seq(t, m, n, x);
    free(t);
    free(m);
}

START_TEST(test_prepare_tokenizer_template)
{
    const char *spec = tokenizer_dir("tok_e2e", SMOLLM2, "<|im_start|>", "<|im_end|>");
    const char *in = tmp_path("chat.jsonl"), *out = tmp_path("chat.h5");
    spit(in, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi <|im_end|>\"}, "
             "{\"role\": \"assistant\", \"content\": \"Hello!\"}, {\"role\": \"user\", \"content\": \"(trailing)\"}]}\n"
             "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Q\"}, "
             "{\"role\": \"assistant\", \"content\": \"A\"}, {\"role\": \"user\", \"content\": \"Q2\"}, "
             "{\"role\": \"assistant\", \"content\": \"A2\"}]}\n");
    /* no --template: the tokenizer's own */
    ck_assert_msg(run_prepare("--input", in, "--out", out, "--tokenizer", spec, "--val-fraction", "0", NULL) == ST_OK,
                  "%s", st_error_message());
    char *name = template_attr(out);
    ck_assert_str_eq(name, "tokenizer");
    free(name);
    st_dataset *ds = NULL;
    ck_assert_int_eq(st_dataset_open(&ds, out), ST_OK);
    ck_assert_int_eq(st_dataset_num_docs(ds), 2);
    expect_seq a = {.n = 0};
    ex_tpl(&a, SMOL_SYS "<|im_start|>user\n", 0);
    ex_bytes(&a, "Hi <|im_end|>", 0);
    ex_tpl(&a, "<|im_end|>\n<|im_start|>assistant\n", 0);
    ex_tpl(&a, "Hello!<|im_end|>\n", 1);
    assert_doc(ds, 0, &a);
    expect_seq b = {.n = 0};
    ex_tpl(&b, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n", 0);
    ex_tpl(&b, "A<|im_end|>\n", 1);
    ex_tpl(&b, "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n", 0);
    ex_tpl(&b, "A2<|im_end|>\n", 1);
    assert_doc(ds, 1, &b);
    st_dataset_close(ds);

    /* sft records through the same template */
    const char *sft = tmp_path("sft.jsonl"), *sft_out = tmp_path("sft.h5");
    spit(sft, "{\"prompt\": \"2+2?\", \"response\": \"4\"}\n");
    ck_assert_int_eq(run_prepare("--input", sft, "--out", sft_out, "--tokenizer", spec, "--val-fraction", "0", NULL),
                     ST_OK);
    ck_assert_int_eq(st_dataset_open(&ds, sft_out), ST_OK);
    expect_seq c = {.n = 0};
    ex_tpl(&c, SMOL_SYS "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", 0);
    ex_tpl(&c, "4<|im_end|>\n", 1);
    assert_doc(ds, 0, &c);
    st_dataset_close(ds);

    /* an explicit built-in template still wins */
    ck_assert_int_eq(run_prepare("--input", in, "--out", out, "--tokenizer", spec, "--template", "chatml",
                                 "--val-fraction", "0", NULL), ST_OK);
    name = template_attr(out);
    ck_assert_str_eq(name, "chatml");
    free(name);
}
END_TEST

/* Multi-turn Qwen3 and Llama 3 chats prepare with --template tokenizer; the
 * mask covers each assistant turn as the whole conversation renders it. */
START_TEST(test_prepare_multi_turn)
{
    const char *in = tmp_path("multi.jsonl"), *out = tmp_path("multi.h5");
    spit(in, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": "
             "\"<think>\\nplan\\n</think>\\n\\nHello!\"}, {\"role\": \"user\", \"content\": \"Bye\"}, "
             "{\"role\": \"assistant\", \"content\": \"Ciao\"}]}\n"
             "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Q\"}, "
             "{\"role\": \"assistant\", \"content\": \"A\"}, {\"role\": \"user\", \"content\": \"Q2\"}, "
             "{\"role\": \"assistant\", \"content\": \"A2\"}, {\"role\": \"user\", \"content\": \"(left out)\"}]}\n");
    const struct {
        const char *src, *bos, *eos, *want[2];
    } cases[] = {
        {QWEN3, NULL, "<|im_end|>", {"Hello!<|im_end|>\n|<think>\n\n</think>\n\nCiao<|im_end|>\n|",
                                     "A<|im_end|>\n|<think>\n\n</think>\n\nA2<|im_end|>\n|"}},
        {LLAMA3_FIRST, "<|begin_of_text|>", "<|eot_id|>", {"<think>\nplan\n</think>\n\nHello!<|eot_id|>|Ciao<|eot_id|>|",
                                                           "A<|eot_id|>|A2<|eot_id|>|"}},
    };
    for (int c = 0; c < 2; c++) {
        char sub[32];
        snprintf(sub, sizeof sub, "tok_multi%d", c);
        const char *spec = tokenizer_dir(sub, cases[c].src, cases[c].bos, cases[c].eos);
        ck_assert_msg(run_prepare("--input", in, "--out", out, "--tokenizer", spec, "--template", "tokenizer",
                                  "--val-fraction", "0", NULL) == ST_OK, "%s", st_error_message());
        st_dataset *ds = NULL;
        ck_assert_int_eq(st_dataset_open(&ds, out), ST_OK);
        ck_assert_int_eq(st_dataset_num_docs(ds), 2);
        for (int d = 0; d < 2; d++) {
            st_tokseq s = {0};
            ck_assert_int_eq(st_dataset_read_doc(ds, d, &s.ids, &s.mask, &s.n), ST_OK);
            char runs[4096];
            learned_runs(&s, runs, sizeof runs);
            ck_assert_msg(!strcmp(runs, cases[c].want[d]), "template %d, chat %d: learned\n[%s]\nexpected\n[%s]", c, d,
                          runs, cases[c].want[d]);
            free(s.ids), free(s.mask);
        }
        st_dataset_close(ds);
    }
}
END_TEST

START_TEST(test_prepare_template_errors)
{
    const char *in = tmp_path("pairs.jsonl"), *out = tmp_path("pairs.h5");
    spit(in, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]}\n"
             "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"Hi\"}, "
             "{\"role\": \"assistant\", \"content\": \"Yo\"}]}\n");
    /* Mistral refuses a system message: in fail mode the record stops prepare ... */
    const char *spec = tokenizer_dir("tok_mistral", MISTRAL, "<s>", "</s>");
    ck_assert_int_ne(run_prepare("--input", in, "--out", out, "--tokenizer", spec, NULL), ST_OK);
    assert_has(st_error_message(), "pairs.jsonl:2");
    assert_has(st_error_message(), "Conversation roles must alternate");
    /* ... and in skip mode it is counted */
    ck_assert_msg(run_prepare("--input", in, "--out", out, "--tokenizer", spec, "--on-error", "skip",
                              "--val-fraction", "0", NULL) == ST_OK, "%s", st_error_message());
    st_dataset *ds = NULL;
    ck_assert_int_eq(st_dataset_open(&ds, out), ST_OK);
    ck_assert_int_eq(st_dataset_num_docs(ds), 1);
    expect_seq x = {.n = 0};
    ex_tpl(&x, "<s>[INST] Hi [/INST]", 0);
    ex_tpl(&x, "Yo</s>", 1);
    assert_doc(ds, 0, &x);
    st_dataset_close(ds);

    /* a template using what is not supported stops prepare before any record */
    spec = tokenizer_dir("tok_include", "{% include 'other.jinja' %}", "<s>", "</s>");
    ck_assert_int_ne(run_prepare("--input", in, "--out", out, "--tokenizer", spec, NULL), ST_OK);
    assert_has(st_error_message(), "chat template line 1: the Jinja 'include' statement is not supported; use "
               "--template default|plain|chatml");
    /* with it, the built-in templates still work */
    ck_assert_int_eq(run_prepare("--input", in, "--out", out, "--tokenizer", spec, "--template", "default", NULL), ST_OK);
    /* --template tokenizer needs a tokenizer that has one */
    ck_assert_int_ne(run_prepare("--input", in, "--out", out, "--template", "tokenizer", NULL), ST_OK);
    assert_has(st_error_message(), "has no chat template");
    ck_assert_int_ne(run_prepare("--input", in, "--out", out, "--template", "jinja", NULL), ST_OK);
    assert_has(st_error_message(), "default, plain, chatml, tokenizer");
    ck_assert_int_eq(run_prepare("--help", NULL), ST_OK);
}
END_TEST

static Suite *chat_template_suite(void)
{
    Suite *s = suite_create("chat_template");
    TCase *tl = tcase_create("jinja");
    tcase_set_timeout(tl, 300);
    tcase_add_test(tl, test_language);
    tcase_add_test(tl, test_chatml_templates);
    tcase_add_test(tl, test_llama_mistral_zephyr);
    tcase_add_test(tl, test_raise_exception);
    tcase_add_test(tl, test_macros);
    tcase_add_test(tl, test_macro_templates);
    tcase_add_test(tl, test_strftime_now);
    tcase_add_test(tl, test_unsupported);
    tcase_add_test(tl, test_hostile);
    suite_add_tcase(s, tl);
    TCase *tm = tcase_create("tokens");
    tcase_set_timeout(tm, 120);
    tcase_add_test(tm, test_mask_chatml);
    tcase_add_test(tm, test_mask_llama);
    tcase_add_test(tm, test_mask_rules);
    tcase_add_test(tm, test_rules_agree);
    tcase_add_test(tm, test_prepare_tokenizer_template);
    tcase_add_test(tm, test_prepare_template_errors);
    tcase_add_test(tm, test_prepare_multi_turn);
    suite_add_tcase(s, tm);
    return s;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    th_tmpdir(MPI_COMM_SELF, DIR_, sizeof DIR_);
    if (!DIR_[0] || st_grid_init(&G, MPI_COMM_SELF, 1)) {
        fprintf(stderr, "test_chat_template: setup failed\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    SRunner *sr = srunner_create(chat_template_suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    st_grid_free(&G);
    th_rm_rf(DIR_);
    MPI_Finalize();
    return failed ? 1 : 0;
}
