/* jinja_lex.c: template source -> tokens, with Jinja's whitespace rules as
 * transformers sets them (trim_blocks, lstrip_blocks):
 *   - "{%-", "{{-", "{#-" strip all whitespace before the tag, "-%}", "-}}",
 *     "-#}" all whitespace after it;
 *   - trim_blocks: the first newline after "%}" or "#}" is dropped ("+%}" keeps it);
 *   - lstrip_blocks: spaces and tabs from the start of a line up to "{%" or
 *     "{#" are dropped ("{%+" keeps them);
 *   - inside a tag, "}}" or "%}" ends it only outside brackets.
 * Text tokens point into the source; string literals are decoded (Python
 * escapes) into the arena. */
#include <stdlib.h>
#include <string.h>

#include "io/chat/jinja_internal.h"

typedef struct {
    jx_arena *arena;
    const char *src;
    size_t len, pos;
    int line;
    int line_starting;   /* the last tag ended with a newline (lstrip_blocks) */
    jx_tok *tok;
    size_t n, cap;
} lexer;

static st_err emit(lexer *lx, int kind, int line, const char *s, size_t n)
{
    if (lx->n == lx->cap) {
        size_t cap = lx->cap ? lx->cap * 2 : 256;
        jx_tok *t = realloc(lx->tok, cap * sizeof *t);
        if (!t) ST_FAIL(ST_ERR_MEM, "out of memory for %zu template tokens", cap);
        lx->tok = t;
        lx->cap = cap;
    }
    jx_tok *t = &lx->tok[lx->n++];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    t->line = line;
    t->s = s;
    t->n = n;
    return ST_OK;
}

/* Move to to, counting newlines. */
static void advance(lexer *lx, size_t to)
{
    for (; lx->pos < to; lx->pos++)
        if (lx->src[lx->pos] == '\n') lx->line++;
}

static void skip_space(lexer *lx)
{
    size_t k;
    while (lx->pos < lx->len && (k = jx_space_len(lx->src + lx->pos, lx->len - lx->pos))) advance(lx, lx->pos + k);
}

/* ---- text between tags ----------------------------------------------------------- */

/* Bytes of text that stay when sign ('-', '+' or 0) and lstrip_blocks apply
 * to the text before a tag of kind ('{', '%' or '#'). */
static size_t kept_text(const lexer *lx, const char *t, size_t n, char kind, char sign)
{
    if (sign == '-') {
        while (n) { /* strip trailing whitespace, character by character from the end */
            size_t back = 1;
            while (back < n && back < 4 && ((unsigned char)t[n - back] & 0xC0) == 0x80) back++;
            if (!jx_space_len(t + n - back, back)) break;
            n -= back;
        }
        return n;
    }
    if (sign == '+' || kind == '{') return n;
    size_t start = n;   /* lstrip_blocks: the line start, when only spaces/tabs follow it */
    while (start > 0 && t[start - 1] != '\n') start--;
    if (start == 0 && !lx->line_starting) return n;
    for (size_t i = start; i < n; i++)
        if (t[i] != ' ' && t[i] != '\t') return n;
    return start;
}

/* ---- inside a tag ------------------------------------------------------------------ */

static int is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int hexval(char c)
{
    return is_digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
}

static size_t put_utf8(char *o, uint32_t c)
{
    if (c < 0x80) return o[0] = (char)c, 1;
    if (c < 0x800) return o[0] = (char)(0xC0 | c >> 6), o[1] = (char)(0x80 | (c & 63)), 2;
    if (c < 0x10000)
        return o[0] = (char)(0xE0 | c >> 12), o[1] = (char)(0x80 | ((c >> 6) & 63)), o[2] = (char)(0x80 | (c & 63)), 3;
    o[0] = (char)(0xF0 | c >> 18), o[1] = (char)(0x80 | ((c >> 12) & 63));
    o[2] = (char)(0x80 | ((c >> 6) & 63)), o[3] = (char)(0x80 | (c & 63));
    return 4;
}

/* Python's escapes in s (n bytes, between the quotes) into o; *m bytes out. */
static st_err unescape(const char *s, size_t n, char *o, size_t *m, int line)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 == n) {
            o[k++] = s[i];
            continue;
        }
        char c = s[++i];
        const char *simple = strchr("\\'\"abfnrtv", c);
        if (c && simple) {
            static const char out[] = "\\'\"\a\b\f\n\r\t\v";
            o[k++] = out[simple - "\\'\"abfnrtv"];
        } else if (c == '\n') {
            /* a backslash-newline continues the line */
        } else if (c >= '0' && c <= '7') {
            uint32_t v = 0;
            int d = 0;
            for (; d < 3 && i < n && s[i] >= '0' && s[i] <= '7'; d++, i++) v = v * 8 + (uint32_t)(s[i] - '0');
            i--;
            k += put_utf8(o + k, v);
        } else if (c == 'x' || c == 'u' || c == 'U') {
            int digits = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            uint32_t v = 0;
            for (int d = 0; d < digits; d++) {
                int h = i + 1 + (size_t)d < n ? hexval(s[i + 1 + d]) : -1;
                if (h < 0) return jx_fail_at(line, ST_ERR_FORMAT, "bad \\%c escape in a string literal", c);
                v = v * 16 + (uint32_t)h;
            }
            i += (size_t)digits;
            if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
                return jx_fail_at(line, ST_ERR_FORMAT, "the escape \\%c%0*X is not a character UTF-8 can hold", c,
                                  digits, (unsigned)v);
            k += put_utf8(o + k, v);
        } else if (c == 'N') {
            return jx_fail_at(line, ST_ERR_FORMAT, "named \\N{...} escapes are not supported");
        } else {
            o[k++] = '\\';   /* unknown escapes stay as written */
            o[k++] = c;
        }
    }
    *m = k;
    return ST_OK;
}

static st_err lex_string(lexer *lx)
{
    const char *s = lx->src;
    char q = s[lx->pos];
    size_t i = lx->pos + 1;
    int line = lx->line;
    while (i < lx->len && s[i] != q) i += s[i] == '\\' ? 2 : 1;
    if (i >= lx->len) return jx_fail_at(line, ST_ERR_FORMAT, "a string literal is not closed (%c missing)", q);
    size_t raw = i - lx->pos - 1;
    char *o = jx_alloc(lx->arena, raw + 1);
    if (!o) ST_FAIL(ST_ERR_MEM, "out of memory for a string literal");
    size_t m = 0;
    ST_TRY(unescape(s + lx->pos + 1, raw, o, &m, line));
    ST_TRY(emit(lx, JT_STRING, line, o, m));
    advance(lx, i + 1);
    return ST_OK;
}

static st_err lex_number(lexer *lx)
{
    const char *s = lx->src;
    size_t i = lx->pos;
    int line = lx->line, is_float = 0;
    char buf[64];
    size_t b = 0;
    for (; i < lx->len && (is_digit(s[i]) || (s[i] == '_' && i + 1 < lx->len && is_digit(s[i + 1]))); i++)
        if (s[i] != '_' && b < sizeof buf - 1) buf[b++] = s[i];
    if (i + 1 < lx->len && s[i] == '.' && is_digit(s[i + 1])) {
        is_float = 1;
        if (b < sizeof buf - 1) buf[b++] = '.';
        for (i++; i < lx->len && (is_digit(s[i]) || (s[i] == '_' && i + 1 < lx->len && is_digit(s[i + 1]))); i++)
            if (s[i] != '_' && b < sizeof buf - 1) buf[b++] = s[i];
    }
    if (i < lx->len && (s[i] == 'e' || s[i] == 'E')) {
        size_t j = i + 1 + (i + 1 < lx->len && (s[i + 1] == '+' || s[i + 1] == '-'));
        if (j < lx->len && is_digit(s[j])) {
            is_float = 1;
            for (; i < j && b < sizeof buf - 1; i++) buf[b++] = s[i];
            for (; i < lx->len && is_digit(s[i]); i++)
                if (b < sizeof buf - 1) buf[b++] = s[i];
        }
    }
    buf[b] = '\0';
    if (b >= sizeof buf - 1) return jx_fail_at(line, ST_ERR_FORMAT, "a number literal is too long");
    ST_TRY(emit(lx, is_float ? JT_FLOAT : JT_INT, line, s + lx->pos, i - lx->pos));
    jx_tok *t = &lx->tok[lx->n - 1];
    if (is_float) {
        t->f = strtod(buf, NULL);
    } else {
        for (const char *p = buf; *p; p++) {
            if (t->i > (INT64_MAX - (*p - '0')) / 10)
                return jx_fail_at(line, ST_ERR_FORMAT, "the integer %s is too large", buf);
            t->i = t->i * 10 + (*p - '0');
        }
    }
    advance(lx, i);
    return ST_OK;
}

static st_err lex_op(lexer *lx, char *stack, int *depth)
{
    static const struct { const char *s; int op; } two[] = {
        {"//", JO_FLOORDIV}, {"**", JO_POW}, {"==", JO_EQ}, {"!=", JO_NE}, {"<=", JO_LE}, {">=", JO_GE}};
    const char *s = lx->src + lx->pos;
    size_t left = lx->len - lx->pos;
    for (size_t k = 0; k < sizeof two / sizeof two[0]; k++)
        if (left >= 2 && !memcmp(s, two[k].s, 2)) {
            ST_TRY(emit(lx, JT_OP, lx->line, s, 2));
            lx->tok[lx->n - 1].op = two[k].op;
            advance(lx, lx->pos + 2);
            return ST_OK;
        }
    char c = s[0];
    if (!strchr("+-*/%~<>=()[]{},.:|", c) || c == '\0') {
        unsigned char u = (unsigned char)c;
        if (u >= 0x20 && u < 0x7F)
            return jx_fail_at(lx->line, ST_ERR_FORMAT, "unexpected character '%c' inside a tag", c);
        return jx_fail_at(lx->line, ST_ERR_FORMAT, "unexpected byte 0x%02X inside a tag", u);
    }
    if (c == '(' || c == '[' || c == '{') {
        if (*depth >= JX_MAX_ADEPTH) return jx_fail_at(lx->line, ST_ERR_FORMAT, "brackets nested too deeply");
        stack[(*depth)++] = c;
    } else if (c == ')' || c == ']' || c == '}') {
        char open = c == ')' ? '(' : c == ']' ? '[' : '{';
        if (*depth == 0 || stack[*depth - 1] != open)
            return jx_fail_at(lx->line, ST_ERR_FORMAT, "unexpected '%c'", c);
        (*depth)--;
    }
    ST_TRY(emit(lx, JT_OP, lx->line, s, 1));
    lx->tok[lx->n - 1].op = (unsigned char)c;
    advance(lx, lx->pos + 1);
    return ST_OK;
}

/* The end of a tag at pos, if it is one: its length and the whitespace sign. */
static size_t tag_end(const lexer *lx, char kind, char *sign)
{
    const char *s = lx->src + lx->pos;
    size_t left = lx->len - lx->pos;
    char close = kind == '{' ? '}' : '%';
    *sign = 0;
    if (left >= 3 && (s[0] == '-' || s[0] == '+') && s[1] == close && s[2] == '}') {
        if (kind == '{' && s[0] == '+') return 0;   /* "+}}" is not an end */
        *sign = s[0];
        return 3;
    }
    return left >= 2 && s[0] == close && s[1] == '}' ? 2 : 0;
}

/* What follows a tag's end: "-" strips all whitespace, else trim_blocks. */
static void after_tag(lexer *lx, char kind, char sign, size_t end_len)
{
    advance(lx, lx->pos + end_len);
    if (sign == '-') skip_space(lx);
    else if (sign != '+' && kind != '{' && lx->pos < lx->len && lx->src[lx->pos] == '\n') advance(lx, lx->pos + 1);
    lx->line_starting = lx->pos > 0 && lx->src[lx->pos - 1] == '\n';
}

static st_err lex_tag(lexer *lx, char kind, int open_line)
{
    char stack[JX_MAX_ADEPTH];
    int depth = 0;
    ST_TRY(emit(lx, kind == '{' ? JT_VAR_BEGIN : JT_BLOCK_BEGIN, open_line, NULL, 0));
    for (;;) {
        skip_space(lx);
        if (lx->pos >= lx->len)
            return jx_fail_at(open_line, ST_ERR_FORMAT, "the tag %s opened here is never closed with %s",
                              kind == '{' ? "{{" : "{%", kind == '{' ? "}}" : "%}");
        char sign;
        size_t end = depth == 0 ? tag_end(lx, kind, &sign) : 0;
        if (end) {
            ST_TRY(emit(lx, kind == '{' ? JT_VAR_END : JT_BLOCK_END, lx->line, NULL, 0));
            after_tag(lx, kind, sign, end);
            return ST_OK;
        }
        char c = lx->src[lx->pos];
        if (c == '\'' || c == '"') ST_TRY(lex_string(lx));
        else if (is_digit(c)) ST_TRY(lex_number(lx));
        else if (is_name_start(c)) {
            size_t i = lx->pos;
            while (i < lx->len && (is_name_start(lx->src[i]) || is_digit(lx->src[i]))) i++;
            ST_TRY(emit(lx, JT_NAME, lx->line, lx->src + lx->pos, i - lx->pos));
            advance(lx, i);
        } else ST_TRY(lex_op(lx, stack, &depth));
    }
}

static st_err lex_comment(lexer *lx, int open_line)
{
    const char *s = lx->src;
    size_t q = lx->pos;
    while (q + 1 < lx->len && !(s[q] == '#' && s[q + 1] == '}')) q++;
    if (q + 1 >= lx->len) return jx_fail_at(open_line, ST_ERR_FORMAT, "the comment {# opened here is never closed with #}");
    char sign = q > lx->pos && (s[q - 1] == '-' || s[q - 1] == '+') ? s[q - 1] : 0;
    advance(lx, q);
    after_tag(lx, '#', sign, 2);
    return ST_OK;
}

/* ---- the whole source ---------------------------------------------------------------- */

static st_err lex_all(lexer *lx)
{
    const char *s = lx->src;
    lx->line_starting = 1;
    while (lx->pos < lx->len) {
        size_t t = lx->pos;
        while (t + 1 < lx->len && !(s[t] == '{' && (s[t + 1] == '{' || s[t + 1] == '%' || s[t + 1] == '#'))) t++;
        if (t + 1 >= lx->len) t = lx->len;
        char kind = t < lx->len ? s[t + 1] : 0;
        char sign = t + 2 < lx->len && (s[t + 2] == '-' || s[t + 2] == '+') ? s[t + 2] : 0;
        size_t keep = kind ? kept_text(lx, s + lx->pos, t - lx->pos, kind, sign) : t - lx->pos;
        if (keep) ST_TRY(emit(lx, JT_TEXT, lx->line, s + lx->pos, keep));
        advance(lx, t);
        if (!kind) break;
        int open_line = lx->line;
        advance(lx, t + 2 + (sign != 0));
        if (kind == '#') ST_TRY(lex_comment(lx, open_line));
        else ST_TRY(lex_tag(lx, kind, open_line));
    }
    return emit(lx, JT_EOF, lx->line, NULL, 0);
}

st_err jx_lex(jx_arena *a, const char *src, size_t len, jx_tok **toks, size_t *n_toks)
{
    lexer lx = {.arena = a, .src = src, .len = len, .line = 1};
    st_err e = lex_all(&lx);
    if (e) {
        free(lx.tok);
        st_error_trace(__FILE__, __LINE__, __func__);
        return e;
    }
    *toks = lx.tok;
    *n_toks = lx.n;
    return ST_OK;
}
