/* jinja_value.c: Jinja values (Python's None, bool, int, float, str, list,
 * dict, plus Undefined and namespace), strings that remember, byte by byte,
 * whether they came from message content, and how values print: str(),
 * repr() and JSON, as Python would write them. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/chat/jinja_internal.h"

/* ---- errors and budgets ------------------------------------------------------ */

static st_err fail_v(int line, st_err code, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    for (char *c = msg; *c; c++) /* the template's own text may be in it: no control characters */
        if ((unsigned char)*c < 0x20 || *c == 0x7F) *c = ' ';
    if (line > 0) return st_error_set(code, __FILE__, __LINE__, __func__, "chat template line %d: %s", line, msg);
    return st_error_set(code, __FILE__, __LINE__, __func__, "chat template: %s", msg);
}

st_err jx_fail_at(int line, st_err code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    st_err e = fail_v(line, code, fmt, ap);
    va_end(ap);
    return e;
}

st_err jx_fail(const jx_ctx *cx, st_err code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    st_err e = fail_v(cx ? cx->line : 0, code, fmt, ap);
    va_end(ap);
    return e;
}

st_err jx_charge(jx_ctx *cx, size_t n)
{
    if (!cx) return ST_OK;
    if (--cx->steps < 0)
        return jx_fail(cx, ST_ERR_FORMAT, "the template runs too long (more than %lld steps); is it looping?",
                       (long long)JX_MAX_STEPS);
    if ((int64_t)n > cx->bytes)
        return jx_fail(cx, ST_ERR_FORMAT, "the template makes more than %lld MiB of text and lists",
                       (long long)(JX_MAX_BYTES >> 20));
    cx->bytes -= (int64_t)n;
    return ST_OK;
}

/* ---- construction ------------------------------------------------------------- */

st_jv *jv_new(int type)
{
    st_jv *v = calloc(1, sizeof *v);
    if (v) v->type = type, v->refs = 1;
    return v;
}

static st_jv *scalar(int type, int64_t i)
{
    st_jv *v = jv_new(type);
    if (v) v->u.i = i;
    return v;
}

st_jv *jv_int(int64_t i) { return scalar(JV_INT, i); }
st_jv *jv_bool(int b) { return scalar(JV_BOOL, b != 0); }
st_jv *jv_none(void) { return jv_new(JV_NONE); }
st_jv *jv_func(int which) { return scalar(JV_FUNC, which); }

st_jv *jv_macro(const jx_node *def, int link)
{
    st_jv *v = jv_new(JV_MACRO);
    if (v) v->u.macro.def = def, v->u.macro.link = link;
    return v;
}

st_jv *jv_float(double f)
{
    st_jv *v = jv_new(JV_FLOAT);
    if (v) v->u.f = f;
    return v;
}

st_jv *jv_undef(const char *name, size_t n)
{
    st_jv *v = jv_new(JV_UNDEF);
    if (v && name && !(v->u.undef = strndup(name, n > 200 ? 200 : n))) {
        free(v);
        return NULL;
    }
    return v;
}

st_jv *jv_str_take(char *s, uint8_t *prov, size_t n, uint8_t all)
{
    st_jv *v = jv_new(JV_STR);
    if (!v) {
        free(s), free(prov);
        return NULL;
    }
    if (prov) { /* one provenance for every byte: no array */
        size_t i = 1;
        while (i < n && prov[i] == prov[0]) i++;
        if (i >= n) {
            all = n ? prov[0] : 0;
            free(prov);
            prov = NULL;
        }
    }
    v->u.str.s = s;
    v->u.str.prov = prov;
    v->u.str.n = n;
    v->u.str.all = all;
    return v;
}

static st_jv *str_copy(const char *s, size_t n, const uint8_t *prov, uint8_t all)
{
    char *c = malloc(n + 1);
    uint8_t *p = prov ? malloc(n ? n : 1) : NULL;
    if (!c || (prov && !p)) {
        free(c), free(p);
        return NULL;
    }
    if (n) memcpy(c, s, n);
    c[n] = '\0';
    if (p && n) memcpy(p, prov, n);
    return jv_str_take(c, p, n, all);
}

st_jv *jv_str_lit(const char *s, size_t n) { return str_copy(s, n, NULL, 0); }

st_jv *jv_str_slice(const st_jv *v, size_t from, size_t to)
{
    return str_copy(v->u.str.s + from, to - from, v->u.str.prov ? v->u.str.prov + from : NULL, v->u.str.all);
}

/* Room for one more element in a list or map. */
static int grow(void **a, void **b, size_t n, size_t *cap)
{
    if (n < *cap) return 1;
    size_t c = *cap ? *cap * 2 : 4;
    void *x = realloc(*a, c * sizeof(st_jv *));
    if (!x) return 0;
    *a = x;
    if (b) {
        void *y = realloc(*b, c * sizeof(st_jv *));
        if (!y) return 0;
        *b = y;
    }
    *cap = c;
    return 1;
}

/* A container gains item: depth and the namespace mark follow. */
static st_err adopt(jx_ctx *cx, st_jv *c, const st_jv *item)
{
    int d = item->depth + 1;
    if (d > JX_MAX_VDEPTH)
        return jx_fail(cx, ST_ERR_FORMAT, "lists and dicts nested more than %d deep", JX_MAX_VDEPTH);
    if (d > c->depth) c->depth = d;
    c->has_ns |= item->has_ns || item->type == JV_NS;
    return ST_OK;
}

st_err jv_list_push(jx_ctx *cx, st_jv *list, st_jv *item)
{
    st_err e = adopt(cx, list, item);
    if (!e) e = jx_charge(cx, sizeof(st_jv *));
    if (!e && !grow((void **)&list->u.list.item, NULL, list->u.list.n, &list->u.list.cap))
        e = jx_fail(cx, ST_ERR_MEM, "out of memory for a list");
    if (e) {
        jv_unref(item);
        return e;
    }
    list->u.list.item[list->u.list.n++] = item;
    return ST_OK;
}

st_err jv_dict_set(jx_ctx *cx, st_jv *d, st_jv *key, st_jv *val)
{
    st_err e = ST_OK;
    if (d->type == JV_NS && (val->has_ns || val->type == JV_NS))
        e = jx_fail(cx, ST_ERR_FORMAT, "a namespace cannot hold a namespace");
    else if (key->type != JV_STR && key->type != JV_INT && key->type != JV_BOOL && key->type != JV_NONE &&
             key->type != JV_FLOAT)
        e = jx_fail(cx, ST_ERR_FORMAT, "a dict key cannot be %s", jv_type_name(key));
    if (!e) e = adopt(cx, d, val);
    if (!e) e = jx_charge(cx, 2 * sizeof(st_jv *));
    if (e) {
        jv_unref(key), jv_unref(val);
        return e;
    }
    for (size_t i = 0; i < d->u.map.n; i++)
        if (jv_equal(cx, d->u.map.key[i], key)) {
            jv_unref(d->u.map.val[i]);
            d->u.map.val[i] = val;
            jv_unref(key);
            return ST_OK;
        }
    if (!grow((void **)&d->u.map.key, (void **)&d->u.map.val, d->u.map.n, &d->u.map.cap)) {
        jv_unref(key), jv_unref(val);
        return jx_fail(cx, ST_ERR_MEM, "out of memory for a dict");
    }
    d->u.map.key[d->u.map.n] = key;
    d->u.map.val[d->u.map.n++] = val;
    return ST_OK;
}

st_jv *jv_dict_get(const st_jv *d, const char *key, size_t n)
{
    for (size_t i = 0; i < d->u.map.n; i++) {
        const st_jv *k = d->u.map.key[i];
        if (k->type == JV_STR && k->u.str.n == n && !memcmp(k->u.str.s, key, n)) return d->u.map.val[i];
    }
    return NULL;
}

st_jv *jv_dict_find(jx_ctx *cx, const st_jv *d, const st_jv *key)
{
    for (size_t i = 0; i < d->u.map.n; i++)
        if (jv_equal(cx, d->u.map.key[i], key)) return d->u.map.val[i];
    return NULL;
}

static void free_contents(st_jv *v)
{
    switch (v->type) {
    case JV_STR: free(v->u.str.s), free(v->u.str.prov); break;
    case JV_UNDEF: free(v->u.undef); break;
    case JV_LIST:
        for (size_t i = 0; i < v->u.list.n; i++) jv_unref(v->u.list.item[i]);
        free(v->u.list.item);
        break;
    case JV_DICT:
    case JV_NS:
        for (size_t i = 0; i < v->u.map.n; i++) jv_unref(v->u.map.key[i]), jv_unref(v->u.map.val[i]);
        free(v->u.map.key), free(v->u.map.val);
        break;
    default: break;
    }
}

void jv_unref(st_jv *v)
{
    if (!v || v->refs < 0 || --v->refs > 0) return;
    free_contents(v); /* recursion bounded by JX_MAX_VDEPTH */
    free(v);
}

void jv_free_literal(st_jv *v)
{
    if (!v) return;
    free_contents(v);
    free(v);
}

/* ---- the caller's constructors (jinja.h) --------------------------------------- */

st_jv *st_jv_string(const char *s, size_t n, int is_content) { return str_copy(s, n, NULL, is_content != 0); }
st_jv *st_jv_boolean(int b) { return jv_bool(b); }
st_jv *st_jv_none(void) { return jv_none(); }
st_jv *st_jv_integer(int64_t i) { return jv_int(i); }
st_jv *st_jv_number(double f) { return jv_float(f); }
st_jv *st_jv_new_list(void) { return jv_new(JV_LIST); }
st_jv *st_jv_new_dict(void) { return jv_new(JV_DICT); }
st_jv *st_jv_ref(st_jv *v) { return jv_ref(v); }
void st_jv_unref(st_jv *v) { jv_unref(v); }

st_err st_jv_append(st_jv *list, st_jv *item)
{
    if (!item) ST_FAIL(ST_ERR_MEM, "out of memory building template variables");
    ST_TRY(jv_list_push(NULL, list, item));
    return ST_OK;
}

st_err st_jv_put(st_jv *dict, const char *key, st_jv *item)
{
    st_jv *k = jv_str_lit(key, strlen(key));
    if (!k || !item) {
        jv_unref(k), jv_unref(item);
        ST_FAIL(ST_ERR_MEM, "out of memory building template variables");
    }
    ST_TRY(jv_dict_set(NULL, dict, k, item));
    return ST_OK;
}

/* ---- questions ------------------------------------------------------------------- */

const char *jv_type_name(const st_jv *v)
{
    static const char *const names[] = {"undefined", "none", "a boolean", "an integer", "a float",
                                        "a string", "a list", "a dict", "a namespace", "a function", "a macro"};
    return names[v->type];
}

int jv_is_number(const st_jv *v) { return v->type == JV_BOOL || v->type == JV_INT || v->type == JV_FLOAT; }
double jv_num(const st_jv *v) { return v->type == JV_FLOAT ? v->u.f : (double)v->u.i; }

int jv_truthy(const st_jv *v)
{
    switch (v->type) {
    case JV_BOOL:
    case JV_INT: return v->u.i != 0;
    case JV_FLOAT: return v->u.f != 0.0;
    case JV_STR: return v->u.str.n > 0;
    case JV_LIST: return v->u.list.n > 0;
    case JV_DICT: return v->u.map.n > 0;
    case JV_NS:
    case JV_FUNC:
    case JV_MACRO: return 1;
    default: return 0;
    }
}

int jv_equal(jx_ctx *cx, const st_jv *a, const st_jv *b)
{
    jx_work(cx, 64 + (a->type == JV_STR && b->type == JV_STR ? a->u.str.n : 0));
    if (jv_is_number(a) && jv_is_number(b)) {
        if (a->type != JV_FLOAT && b->type != JV_FLOAT) return a->u.i == b->u.i;
        return jv_num(a) == jv_num(b);
    }
    if (a->type != b->type) return 0;
    switch (a->type) {
    case JV_UNDEF:
    case JV_NONE: return 1;
    case JV_STR: return a->u.str.n == b->u.str.n && !memcmp(a->u.str.s, b->u.str.s, a->u.str.n);
    case JV_LIST:
        if (a->u.list.n != b->u.list.n || a->u.list.tuple != b->u.list.tuple) return 0;
        for (size_t i = 0; i < a->u.list.n; i++)
            if (!jv_equal(cx, a->u.list.item[i], b->u.list.item[i])) return 0;
        return 1;
    case JV_DICT:
        if (a->u.map.n != b->u.map.n) return 0;
        for (size_t i = 0; i < a->u.map.n; i++) {
            const st_jv *other = jv_dict_find(cx, b, a->u.map.key[i]);
            if (!other || !jv_equal(cx, a->u.map.val[i], other)) return 0;
        }
        return 1;
    case JV_FUNC: return a->u.i == b->u.i;
    default: return a == b; /* namespaces: identity */
    }
}

/* ---- UTF-8 ------------------------------------------------------------------------ */

/* The code point at s and its length (a stray byte stands for itself). */
static uint32_t utf8_cp(const char *s, size_t n, size_t *len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t want = u[0] < 0x80 ? 1 : (u[0] & 0xE0) == 0xC0 ? 2 : (u[0] & 0xF0) == 0xE0 ? 3 : (u[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (want <= 1 || want > n) {
        *len = 1;
        return u[0];
    }
    uint32_t cp = u[0] & (0xFF >> (want + 1));
    for (size_t i = 1; i < want; i++) {
        if ((u[i] & 0xC0) != 0x80) {
            *len = 1;
            return u[0];
        }
        cp = cp << 6 | (u[i] & 0x3F);
    }
    *len = want;
    return cp;
}

size_t jx_utf8_len(const char *s, size_t n)
{
    size_t len;
    utf8_cp(s, n, &len);
    return len;
}

size_t jx_utf8_count(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i += jx_utf8_len(s + i, n - i)) c++;
    return c;
}

size_t jx_space_len(const char *s, size_t n)
{
    size_t len;
    uint32_t c = utf8_cp(s, n, &len);
    int sp = (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
             (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
             c == 0x3000;
    return sp ? len : 0;
}

/* ---- text being built ----------------------------------------------------------- */

static st_err reserve(jx_ctx *cx, jx_buf *b, size_t more)
{
    if (more > JX_MAX_STR || b->n > JX_MAX_STR - more)
        return jx_fail(cx, ST_ERR_FORMAT, "a string or the output grows beyond %zu MiB", JX_MAX_STR >> 20);
    ST_TRY(jx_charge(cx, more));
    if (b->n + more + 1 <= b->cap) return ST_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + more + 1) cap *= 2;
    char *s = realloc(b->s, cap);
    if (s) b->s = s;
    uint8_t *c = realloc(b->content, cap);
    if (c) b->content = c;
    if (!s || !c) return jx_fail(cx, ST_ERR_MEM, "out of memory for %zu bytes of text", cap);
    b->cap = cap;
    return ST_OK;
}

st_err jx_put(jx_ctx *cx, jx_buf *b, const char *s, size_t n, uint8_t prov)
{
    if (!n) return ST_OK;
    ST_TRY(reserve(cx, b, n));
    memcpy(b->s + b->n, s, n);
    memset(b->content + b->n, prov, n);
    b->n += n;
    b->s[b->n] = '\0';
    return ST_OK;
}

st_err jx_put_str(jx_ctx *cx, jx_buf *b, const st_jv *str, size_t from, size_t to)
{
    if (to <= from) return ST_OK;
    size_t n = to - from;
    ST_TRY(reserve(cx, b, n));
    memcpy(b->s + b->n, str->u.str.s + from, n);
    if (str->u.str.prov) memcpy(b->content + b->n, str->u.str.prov + from, n);
    else memset(b->content + b->n, str->u.str.all, n);
    b->n += n;
    b->s[b->n] = '\0';
    return ST_OK;
}

st_err jx_buf_value(jx_ctx *cx, jx_buf *b, st_jv **out)
{
    if (!b->s) ST_TRY(reserve(cx, b, 0));
    *out = jv_str_take(b->s, b->content, b->n, 0);
    memset(b, 0, sizeof *b);
    if (!*out) return jx_fail(cx, ST_ERR_MEM, "out of memory for a string");
    return ST_OK;
}

void st_jinja_text_free(st_jinja_text *t)
{
    free(t->s);
    free(t->content);
    memset(t, 0, sizeof *t);
}

/* ---- printing --------------------------------------------------------------------- */

/* Python's repr(float): the shortest digits that read back, fixed notation
 * for exponents in [-4, 16), else d.ddde+XX. */
static void float_repr(double f, char *out, size_t cap)
{
    if (isnan(f)) { snprintf(out, cap, "nan"); return; }
    if (isinf(f)) { snprintf(out, cap, f < 0 ? "-inf" : "inf"); return; }
    char e[40];
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, f);
        if (strtod(e, NULL) == f) break;
    }
    snprintf(e, sizeof e, "%.*e", prec - 1, f);
    char digits[24];
    int nd = 0, neg = e[0] == '-';
    const char *p = e + neg;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    digits[nd] = '\0';
    int exp10 = atoi(p + 1), decpt = exp10 + 1;
    char *o = out, *end = out + cap - 1;
#define PUT(c) do { if (o < end) *o++ = (c); } while (0)
    if (neg) PUT('-');
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            PUT('0');
            PUT('.');
            for (int i = 0; i < -decpt; i++) PUT('0');
            for (int i = 0; i < nd; i++) PUT(digits[i]);
        } else {
            for (int i = 0; i < decpt; i++) PUT(i < nd ? digits[i] : '0');
            PUT('.');
            if (nd <= decpt) PUT('0');
            for (int i = decpt; i < nd; i++) PUT(digits[i]);
        }
        *o = '\0';
    } else {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (int i = 1; i < nd; i++) PUT(digits[i]);
        }
        *o = '\0';
        size_t used = (size_t)(o - out);
        snprintf(out + used, cap - used, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    }
#undef PUT
}

/* Any byte of content inside v (what a printed container is marked with). */
static int has_content(const st_jv *v)
{
    switch (v->type) {
    case JV_STR: return v->u.str.prov ? memchr(v->u.str.prov, 1, v->u.str.n) != NULL : v->u.str.all && v->u.str.n;
    case JV_LIST:
        for (size_t i = 0; i < v->u.list.n; i++)
            if (has_content(v->u.list.item[i])) return 1;
        return 0;
    case JV_DICT:
    case JV_NS:
        for (size_t i = 0; i < v->u.map.n; i++)
            if (has_content(v->u.map.key[i]) || has_content(v->u.map.val[i])) return 1;
        return 0;
    default: return 0;
    }
}

static st_err put_c(jx_ctx *cx, jx_buf *b, const char *s, uint8_t p) { return jx_put(cx, b, s, strlen(s), p); }

static st_err scalar_text(jx_ctx *cx, jx_buf *b, const st_jv *v, uint8_t p, int json)
{
    char num[64];
    switch (v->type) {
    case JV_NONE: return put_c(cx, b, json ? "null" : "None", p);
    case JV_BOOL: return put_c(cx, b, v->u.i ? (json ? "true" : "True") : (json ? "false" : "False"), p);
    case JV_INT: snprintf(num, sizeof num, "%lld", (long long)v->u.i); return put_c(cx, b, num, p);
    case JV_FLOAT:
        if (json && isnan(v->u.f)) return put_c(cx, b, "NaN", p);
        if (json && isinf(v->u.f)) return put_c(cx, b, v->u.f < 0 ? "-Infinity" : "Infinity", p);
        float_repr(v->u.f, num, sizeof num);
        return put_c(cx, b, num, p);
    case JV_FUNC: return put_c(cx, b, "<function>", p);
    case JV_MACRO: return put_c(cx, b, "<macro>", p);
    default: return put_c(cx, b, "<namespace>", p);
    }
}

/* Python's repr of a str: ' quotes unless the text has ' and no ". */
static st_err repr_str(jx_ctx *cx, jx_buf *b, const st_jv *v, uint8_t p)
{
    const char *s = v->u.str.s;
    size_t n = v->u.str.n;
    char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    ST_TRY(jx_put(cx, b, &q, 1, p));
    for (size_t i = 0; i < n;) {
        size_t len;
        uint32_t c = utf8_cp(s + i, n - i, &len);
        char esc[16] = "";
        if (c == '\\' || c == (uint32_t)q) snprintf(esc, sizeof esc, "\\%c", (char)c);
        else if (c == '\n') snprintf(esc, sizeof esc, "\\n");
        else if (c == '\r') snprintf(esc, sizeof esc, "\\r");
        else if (c == '\t') snprintf(esc, sizeof esc, "\\t");
        else if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) snprintf(esc, sizeof esc, "\\x%02x", (unsigned)c);
        else if ((c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x2064) ||
                 c == 0x3000 || c == 0xFEFF || c == 0x1680)
            snprintf(esc, sizeof esc, "\\u%04x", (unsigned)c);
        if (esc[0]) ST_TRY(put_c(cx, b, esc, p));
        else ST_TRY(jx_put(cx, b, s + i, len, p));
        i += len;
    }
    return jx_put(cx, b, &q, 1, p);
}

static st_err repr_rec(jx_ctx *cx, jx_buf *b, const st_jv *v, uint8_t p)
{
    switch (v->type) {
    case JV_UNDEF: return ST_OK;
    case JV_STR: return repr_str(cx, b, v, p);
    case JV_LIST:
        ST_TRY(put_c(cx, b, v->u.list.tuple ? "(" : "[", p));
        for (size_t i = 0; i < v->u.list.n; i++) {
            if (i) ST_TRY(put_c(cx, b, ", ", p));
            ST_TRY(repr_rec(cx, b, v->u.list.item[i], p));
        }
        return put_c(cx, b, !v->u.list.tuple ? "]" : v->u.list.n == 1 ? ",)" : ")", p);
    case JV_DICT:
        ST_TRY(put_c(cx, b, "{", p));
        for (size_t i = 0; i < v->u.map.n; i++) {
            if (i) ST_TRY(put_c(cx, b, ", ", p));
            ST_TRY(repr_rec(cx, b, v->u.map.key[i], p));
            ST_TRY(put_c(cx, b, ": ", p));
            ST_TRY(repr_rec(cx, b, v->u.map.val[i], p));
        }
        return put_c(cx, b, "}", p);
    default: return scalar_text(cx, b, v, p, 0);
    }
}

st_err jv_repr(jx_ctx *cx, jx_buf *b, const st_jv *v) { return repr_rec(cx, b, v, (uint8_t)has_content(v)); }

st_err jv_print(jx_ctx *cx, jx_buf *b, const st_jv *v)
{
    if (v->type == JV_STR) return jx_put_str(cx, b, v, 0, v->u.str.n);
    return jv_repr(cx, b, v);
}

st_err jv_to_string(jx_ctx *cx, const st_jv *v, st_jv **out)
{
    if (v->type == JV_STR) {
        *out = jv_ref((st_jv *)v);
        return ST_OK;
    }
    jx_buf b = {0};
    st_err e = jv_print(cx, &b, v);
    if (e) {
        st_jinja_text_free(&b);
        return e;
    }
    return jx_buf_value(cx, &b, out);
}

/* json.dumps(str, ensure_ascii=False) */
static st_err json_str(jx_ctx *cx, jx_buf *b, const char *s, size_t n, uint8_t p)
{
    ST_TRY(put_c(cx, b, "\"", p));
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        ST_TRY(jx_put(cx, b, s + run, i - run, p));
        char esc[8];
        switch (c) {
        case '"': snprintf(esc, sizeof esc, "\\\""); break;
        case '\\': snprintf(esc, sizeof esc, "\\\\"); break;
        case '\n': snprintf(esc, sizeof esc, "\\n"); break;
        case '\r': snprintf(esc, sizeof esc, "\\r"); break;
        case '\t': snprintf(esc, sizeof esc, "\\t"); break;
        case '\b': snprintf(esc, sizeof esc, "\\b"); break;
        case '\f': snprintf(esc, sizeof esc, "\\f"); break;
        default: snprintf(esc, sizeof esc, "\\u%04x", c);
        }
        ST_TRY(put_c(cx, b, esc, p));
        run = i + 1;
    }
    ST_TRY(jx_put(cx, b, s + run, n - run, p));
    return put_c(cx, b, "\"", p);
}

/* A newline and the indent of level (indent >= 0 only). */
static st_err json_nl(jx_ctx *cx, jx_buf *b, int indent, int level, uint8_t p)
{
    ST_TRY(put_c(cx, b, "\n", p));
    for (long i = 0; i < (long)indent * level; i++) ST_TRY(put_c(cx, b, " ", p));
    return ST_OK;
}

static st_err json_rec(jx_ctx *cx, jx_buf *b, const st_jv *v, int indent, int level, uint8_t p)
{
    const char *sep = indent >= 0 ? "," : ", ";
    switch (v->type) {
    case JV_STR: return json_str(cx, b, v->u.str.s, v->u.str.n, p);
    case JV_LIST:
    case JV_DICT: {
        int list = v->type == JV_LIST;
        size_t n = list ? v->u.list.n : v->u.map.n;
        ST_TRY(put_c(cx, b, list ? "[" : "{", p));
        for (size_t i = 0; i < n; i++) {
            if (i) ST_TRY(put_c(cx, b, sep, p));
            if (indent >= 0) ST_TRY(json_nl(cx, b, indent, level + 1, p));
            if (!list) {
                const st_jv *k = v->u.map.key[i];
                if (k->type == JV_STR) {
                    ST_TRY(json_str(cx, b, k->u.str.s, k->u.str.n, p));
                } else {
                    jx_buf kb = {0};
                    st_err e = scalar_text(cx, &kb, k, p, 1);
                    if (!e) e = json_str(cx, b, kb.s ? kb.s : "", kb.n, p);
                    st_jinja_text_free(&kb);
                    ST_TRY(e);
                }
                ST_TRY(put_c(cx, b, ": ", p));
            }
            ST_TRY(json_rec(cx, b, list ? v->u.list.item[i] : v->u.map.val[i], indent, level + 1, p));
        }
        if (n && indent >= 0) ST_TRY(json_nl(cx, b, indent, level, p));
        return put_c(cx, b, list ? "]" : "}", p);
    }
    case JV_UNDEF:
    case JV_NS:
    case JV_FUNC:
    case JV_MACRO: return jx_fail(cx, ST_ERR_FORMAT, "tojson: %s is not JSON serializable", jv_type_name(v));
    default: return scalar_text(cx, b, v, p, 1);
    }
}

st_err jv_json(jx_ctx *cx, jx_buf *b, const st_jv *v, int indent, int level)
{
    return json_rec(cx, b, v, indent, level, (uint8_t)has_content(v));
}
