/* tok_norm.c: Hugging Face tokenizer.json normalizers, applied to the text
 * between added tokens before it is pre-tokenized (as the Rust library and
 * tokenizers.js do): NFC, NFD, NFKC, NFKD (Unicode forms by utf8proc),
 * Lowercase, Replace (a string or a regex), Prepend, Strip, and a Sequence
 * of them. Lowercase maps each code point by utf8proc's simple mapping
 * (Rust's full mapping differs only for U+0130, which becomes "i\u0307").
 */
#include "io/tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static const cJSON *get(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

static st_err add_step(st_tokenizer *t, st_tok_norm s, const char *name)
{
    if (t->n_norm >= ST_TOK_MAX_NORMS) ST_FAIL(ST_ERR_FORMAT, "%s: more than %d normalizers", name, ST_TOK_MAX_NORMS);
    t->norm[t->n_norm++] = s;
    return ST_OK;
}

static st_err copy_str(char **out, size_t *len, const char *s)
{
    *len = strlen(s);
    if (!(*out = strdup(s))) ST_FAIL(ST_ERR_MEM, "out of memory copying a normalizer string");
    return ST_OK;
}

/* Replace: {"pattern": {"String": s} | {"Regex": r}, "content": c}. */
static st_err parse_replace(st_tok_norm *s, const cJSON *n, const char *name)
{
    const cJSON *pat = get(n, "pattern"), *str = get(pat, "String"), *re = get(pat, "Regex"), *c = get(n, "content");
    if (!cJSON_IsString(c) || !(cJSON_IsString(str) || cJSON_IsString(re)))
        ST_FAIL(ST_ERR_FORMAT, "%s: Replace normalizer needs pattern {\"String\"|\"Regex\": ...} and a string content",
                name);
    char *p = NULL;
    size_t len = 0, cap = 0;
    st_err e = cJSON_IsString(str) ? st_tok_regex_escape(&p, &len, &cap, str->valuestring, strlen(str->valuestring))
                                   : ST_OK;
    const char *src = cJSON_IsString(str) ? p : re->valuestring;
    if (!e) e = copy_str(&s->pattern, &len, src);
    if (!e) e = st_tok_regex_compile(&s->re, s->pattern, len, name);
    if (!e) e = copy_str(&s->content, &s->content_len, c->valuestring);
    free(p);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

st_err st_tok_norm_parse(st_tokenizer *t, const cJSON *n, const char *name, int depth)
{
    if (!n || cJSON_IsNull(n)) return ST_OK;
    const cJSON *ty = get(n, "type");
    const char *type = cJSON_IsString(ty) ? ty->valuestring : "?";
    if (!strcmp(type, "Sequence")) {
        if (depth > 4) ST_FAIL(ST_ERR_FORMAT, "%s: normalizer Sequences nested too deeply", name);
        const cJSON *it;
        cJSON_ArrayForEach(it, get(n, "normalizers")) ST_TRY(st_tok_norm_parse(t, it, name, depth + 1));
        return ST_OK;
    }
    static const char *const forms[] = {"NFC", "NFD", "NFKC", "NFKD", "Lowercase"};
    for (int k = 0; k < 5; k++)
        if (!strcmp(type, forms[k])) return add_step(t, (st_tok_norm){.kind = ST_NORM_NFC + k}, name);
    st_tok_norm s = {0};
    st_err e = ST_OK;
    if (!strcmp(type, "Replace")) {
        s.kind = ST_NORM_REPLACE;
        e = parse_replace(&s, n, name);
    } else if (!strcmp(type, "Prepend")) {
        const cJSON *p = get(n, "prepend");
        if (!cJSON_IsString(p)) ST_FAIL(ST_ERR_FORMAT, "%s: Prepend normalizer needs a string \"prepend\"", name);
        s.kind = ST_NORM_PREPEND;
        e = copy_str(&s.content, &s.content_len, p->valuestring);
    } else if (!strcmp(type, "Strip")) {
        s = (st_tok_norm){.kind = ST_NORM_STRIP, .left = cJSON_IsTrue(get(n, "strip_left")),
                          .right = cJSON_IsTrue(get(n, "strip_right"))};
    } else {
        ST_FAIL(ST_ERR_FORMAT, "%s: normalizer \"%.40s\" is not supported (NFC, NFD, NFKC, NFKD, Lowercase, Replace, "
                "Prepend, Strip, Sequence)", name, type);
    }
    if (!e) e = add_step(t, s, name);
    if (e) {
        st_tok_norm_free(&s, 1);
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    return e;
}

void st_tok_norm_free(st_tok_norm *n, int count)
{
    for (int i = 0; i < count; i++) {
        pcre2_code_free(n[i].re);
        free(n[i].pattern);
        free(n[i].content);
    }
}

uint64_t st_tok_norm_hash(const st_tokenizer *t, uint64_t h)
{
    for (int i = 0; i < t->n_norm; i++) {
        const st_tok_norm *n = &t->norm[i];
        uint8_t k[3] = {(uint8_t)n->kind, (uint8_t)n->left, (uint8_t)n->right};
        h = st_tok_fnv(h, k, 3);
        if (n->pattern) h = st_tok_fnv(h, n->pattern, strlen(n->pattern) + 1);
        if (n->content) h = st_tok_fnv(h, n->content, n->content_len + 1);
    }
    return h;
}

/* ---- applying ---- */

/* Rust's char::is_whitespace (White_Space): the separators and these controls. */
static int is_space(utf8proc_int32_t c)
{
    if ((c >= 9 && c <= 13) || c == 0x85) return 1;
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

/* The Unicode form of s, malloc'd into *out. */
static st_err unicode_form(int kind, const char *s, size_t len, char **out, size_t *olen)
{
    static const int opts[] = {UTF8PROC_COMPOSE, UTF8PROC_DECOMPOSE, UTF8PROC_COMPOSE | UTF8PROC_COMPAT,
                               UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT};
    utf8proc_uint8_t *r = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &r,
                                      UTF8PROC_STABLE | opts[kind - ST_NORM_NFC]);
    if (n < 0) ST_FAIL(ST_ERR_FORMAT, "Unicode normalisation failed: %s", utf8proc_errmsg(n));
    *out = (char *)r, *olen = (size_t)n;
    return ST_OK;
}

/* Every code point through f (lowercase), or the strip of whitespace ends. */
static st_err per_char(const st_tok_norm *n, const char *s, size_t len, char **out, size_t *olen)
{
    char *o = malloc(4 * len + 1);   /* a simple case mapping never grows a character past 4 bytes */
    if (!o) ST_FAIL(ST_ERR_MEM, "out of memory normalising %zu bytes", len);
    size_t m = 0, first = 0, last = 0;   /* strip: the kept range of o */
    int seen = 0;
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &c);
        if (k <= 0) {
            free(o);
            ST_FAIL(ST_ERR_FORMAT, "invalid UTF-8 at byte %zu while normalising", i);
        }
        i += (size_t)k;
        if (n->kind == ST_NORM_LOWER) c = utf8proc_tolower(c);
        size_t at = m;
        m += (size_t)utf8proc_encode_char(c, (utf8proc_uint8_t *)o + m);
        if (!is_space(c)) {
            if (!seen) first = at, seen = 1;
            last = m;
        }
    }
    if (n->kind == ST_NORM_STRIP) {
        size_t a = n->left ? (seen ? first : m) : 0, b = n->right ? (seen ? last : a) : m;
        memmove(o, o + a, b - a);
        m = b - a;
    }
    o[m] = '\0';
    *out = o, *olen = m;
    return ST_OK;
}

static st_err replace_all(const st_tok_norm *n, const char *s, size_t len, char **out, size_t *olen)
{
    PCRE2_SIZE cap = 2 * len + n->content_len + 16;
    for (;;) {
        char *o = malloc(cap + 1);
        if (!o) ST_FAIL(ST_ERR_MEM, "out of memory normalising %zu bytes", len);
        PCRE2_SIZE got = cap + 1;
        int rc = pcre2_substitute(n->re, (PCRE2_SPTR)s, len, 0,
                                  PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_LITERAL | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH,
                                  NULL, NULL, (PCRE2_SPTR)n->content, n->content_len, (PCRE2_UCHAR *)o, &got);
        if (rc >= 0) {
            *out = o, *olen = got;
            return ST_OK;
        }
        free(o);
        if (rc != PCRE2_ERROR_NOMEMORY) ST_FAIL(ST_ERR_FORMAT, "Replace normalizer /%s/ failed (PCRE2 error %d)",
                                                n->pattern, rc);
        cap = got;   /* the length it needs */
    }
}

st_err st_tok_normalize(const st_tokenizer *t, const char *s, size_t len, int continues, char **out,
                        size_t *olen)
{
    char *cur = NULL;
    size_t n = len;
    for (int i = 0; i < t->n_norm; i++) {
        const st_tok_norm *st = &t->norm[i];
        const char *in = cur ? cur : s;
        char *next = NULL;
        size_t m = 0;
        st_err e = ST_OK;
        switch (st->kind) {
        case ST_NORM_LOWER: case ST_NORM_STRIP: e = per_char(st, in, n, &next, &m); break;
        case ST_NORM_REPLACE: e = replace_all(st, in, n, &next, &m); break;
        case ST_NORM_PREPEND:   /* a non-empty piece that starts text (not one continuing earlier text) */
            if (n == 0 || continues) continue;
            if (!(next = malloc(st->content_len + n + 1))) e = ST_ERR_MEM;
            else memcpy(next, st->content, st->content_len), memcpy(next + st->content_len, in, n), m = st->content_len + n;
            break;
        default: e = unicode_form(st->kind, in, n, &next, &m);
        }
        free(cur);
        if (e) {
            if (e == ST_ERR_MEM) ST_FAIL(e, "out of memory normalising %zu bytes", n);
            st_error_trace(__FILE__, __LINE__, __func__);
            return e;
        }
        cur = next, n = m;
    }
    *out = cur, *olen = n;   /* NULL: no normalizer changed anything, use s */
    return ST_OK;
}
