/* jinja_builtins.c: the filters, tests, methods and global functions chat
 * templates call, with Jinja's (filters, tests) and Python's (methods)
 * meaning. String results keep each byte's provenance.
 *
 *   filters  trim length count upper lower capitalize title tojson string
 *            default d first last join replace list items reverse safe
 *            selectattr rejectattr map int abs
 *   tests    defined undefined none string number integer float boolean
 *            true false mapping iterable sequence callable even odd
 *            divisibleby eq equalto == ne != lt < le <= gt > ge >= in lower
 *            upper sameas
 *   methods  str: strip lstrip rstrip startswith endswith split title upper
 *            lower capitalize replace; dict: get items keys values
 *   globals  raise_exception(msg) namespace(...) range(...) strftime_now(format) */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io/chat/jinja_internal.h"

#define NEW(v) do { if (!(v)) return jx_fail(cx, ST_ERR_MEM, "out of memory"); } while (0)

/* ---- arguments -------------------------------------------------------------------- */

typedef struct {
    st_jv **v;
    const char **kw;   /* NULL entries: positional */
    int n;
} args_t;

/* Positional argument pos, or the keyword argument name. */
static st_jv *arg(const args_t *a, int pos, const char *name)
{
    int p = 0;
    for (int i = 0; i < a->n; i++) {
        if (a->kw[i]) {
            if (name && !strcmp(a->kw[i], name)) return a->v[i];
        } else if (p++ == pos) {
            return a->v[i];
        }
    }
    return NULL;
}

/* At most max_pos positional arguments, keywords only from names. */
static st_err check_args(jx_ctx *cx, const args_t *a, const char *what, int max_pos, const char *const *names)
{
    int p = 0;
    for (int i = 0; i < a->n; i++) {
        if (!a->kw[i]) {
            if (++p > max_pos) return jx_fail(cx, ST_ERR_FORMAT, "%s takes at most %d arguments", what, max_pos);
            continue;
        }
        int ok = 0;
        for (int k = 0; names && names[k] && !ok; k++) ok = !strcmp(a->kw[i], names[k]);
        if (!ok) return jx_fail(cx, ST_ERR_FORMAT, "%s has no argument '%s'", what, a->kw[i]);
    }
    return ST_OK;
}

static st_err need_str(jx_ctx *cx, const st_jv *v, const char *what)
{
    if (!v || v->type != JV_STR)
        return jx_fail(cx, ST_ERR_FORMAT, "%s needs a string, not %s", what, v ? jv_type_name(v) : "nothing");
    return ST_OK;
}

static st_err need_int(jx_ctx *cx, const st_jv *v, const char *what)
{
    if (!v || (v->type != JV_INT && v->type != JV_BOOL))
        return jx_fail(cx, ST_ERR_FORMAT, "%s needs an integer, not %s", what, v ? jv_type_name(v) : "nothing");
    return ST_OK;
}

/* ---- strings ------------------------------------------------------------------------- */

/* Does the character at p (len bytes) belong to chars (NULL: whitespace)? */
static int in_chars(const st_jv *chars, const char *p, size_t len)
{
    if (!chars) return jx_space_len(p, len) == len;
    const char *c = chars->u.str.s;
    for (size_t i = 0, l; i < chars->u.str.n; i += l) {
        l = jx_utf8_len(c + i, chars->u.str.n - i);
        if (l == len && !memcmp(c + i, p, len)) return 1;
    }
    return 0;
}

/* The byte length of the character that ends at s + n. */
static size_t last_char_len(const char *s, size_t n)
{
    size_t back = 1;
    while (back < n && back < 4 && ((unsigned char)s[n - back] & 0xC0) == 0x80) back++;
    return jx_utf8_len(s + n - back, back) == back ? back : 1;
}

/* The work of testing one character against chars (all of them, at worst),
 * counted against the budget every 64K units. */
static st_err strip_work(jx_ctx *cx, const st_jv *chars, size_t *work)
{
    *work += JX_CHAR_WORK * (chars ? chars->u.str.n + 1 : 1);
    if (*work < 65536) return ST_OK;
    jx_work(cx, *work);
    *work = 0;
    return jx_charge(cx, 0);
}

static st_err strip(jx_ctx *cx, const st_jv *s, const st_jv *chars, int left, int right, st_jv **out)
{
    if (chars && chars->type == JV_NONE) chars = NULL;
    if (chars) ST_TRY(need_str(cx, chars, "strip's characters"));
    const char *p = s->u.str.s;
    size_t from = 0, to = s->u.str.n, work = 0;
    while (left && from < to) {
        size_t l = jx_utf8_len(p + from, to - from);
        if (!in_chars(chars, p + from, l)) break;
        from += l;
        ST_TRY(strip_work(cx, chars, &work));
    }
    while (right && to > from) {
        size_t l = last_char_len(p + from, to - from);
        if (!in_chars(chars, p + to - l, l)) break;
        to -= l;
        ST_TRY(strip_work(cx, chars, &work));
    }
    jx_work(cx, work);
    ST_TRY(jx_charge(cx, to - from));
    *out = jv_str_slice(s, from, to);
    NEW(*out);
    return ST_OK;
}

/* TITLE is Python's str.title(): a word is a run of letters; TITLE_FILTER is
 * Jinja's |title: a word starts after '-', whitespace, '(', '{', '[' or '<'. */
enum { CASE_UPPER, CASE_LOWER, CASE_CAPITALIZE, CASE_TITLE, CASE_TITLE_FILTER };

static int is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static char up(char c) { return c >= 'a' && c <= 'z' ? (char)(c - 32) : c; }
static char down(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

/* ASCII case mapping; the length and so the provenance stay. */
static st_err case_map(jx_ctx *cx, const st_jv *s, int mode, st_jv **out)
{
    jx_buf b = {0};
    st_err e = jx_put_str(cx, &b, s, 0, s->u.str.n);
    if (e) {
        st_jinja_text_free(&b);
        return e;
    }
    int prev_alpha = 0, word_start = 1;
    for (size_t i = 0; i < b.n; i++) {
        char c = b.s[i];
        switch (mode) {
        case CASE_UPPER: c = up(c); break;
        case CASE_LOWER: c = down(c); break;
        case CASE_CAPITALIZE: c = i == 0 ? up(c) : down(c); break;
        case CASE_TITLE: c = prev_alpha ? down(c) : up(c); break;
        default: c = word_start ? up(c) : down(c); break;
        }
        prev_alpha = is_alpha(c);
        word_start = strchr("-({[< \t\n\r\f\v", c) != NULL && c != '\0';
        b.s[i] = c;
    }
    return jx_buf_value(cx, &b, out);
}

/* Byte offsets of code point boundaries, for "".replace inserting between characters. */
static st_err replace(jx_ctx *cx, const st_jv *s, const st_jv *old, const st_jv *rep, int64_t count, st_jv **out)
{
    jx_buf b = {0};
    st_err e = ST_OK;
    size_t i = 0, n = s->u.str.n, on = old->u.str.n;
    int64_t done = 0;
    if (on == 0) { /* Python inserts rep before every character and at the end */
        for (; !e && i <= n; done++) {
            if (count < 0 || done < count) e = jx_put_str(cx, &b, rep, 0, rep->u.str.n);
            if (i == n) break;
            size_t l = jx_utf8_len(s->u.str.s + i, n - i);
            if (!e) e = jx_put_str(cx, &b, s, i, i + l);
            i += l;
        }
        if (!e && i < n) e = jx_put_str(cx, &b, s, i, n);
    } else {
        while (!e && i <= n) {
            const char *hit = (count < 0 || done < count) && n - i >= on
                                  ? memmem(s->u.str.s + i, n - i, old->u.str.s, on) : NULL;
            size_t at = hit ? (size_t)(hit - s->u.str.s) : n;
            e = jx_put_str(cx, &b, s, i, at);
            if (!hit) break;
            if (!e) e = jx_put_str(cx, &b, rep, 0, rep->u.str.n);
            i = at + on;
            done++;
        }
    }
    if (e) {
        st_jinja_text_free(&b);
        return e;
    }
    return jx_buf_value(cx, &b, out);
}

static st_err push_slice(jx_ctx *cx, st_jv *list, const st_jv *s, size_t from, size_t to)
{
    ST_TRY(jx_charge(cx, to - from));
    st_jv *part = jv_str_slice(s, from, to);
    NEW(part);
    return jv_list_push(cx, list, part);
}

/* str.split(sep=None, maxsplit=-1) */
static st_err split(jx_ctx *cx, const st_jv *s, const st_jv *sep, int64_t maxsplit, st_jv **out)
{
    if (sep && sep->type == JV_NONE) sep = NULL;
    if (sep) ST_TRY(need_str(cx, sep, "split's separator"));
    if (sep && !sep->u.str.n) return jx_fail(cx, ST_ERR_FORMAT, "split: empty separator");
    st_jv *l = jv_new(JV_LIST);
    NEW(l);
    const char *p = s->u.str.s;
    size_t n = s->u.str.n, i = 0;
    int64_t splits = 0;
    st_err e = ST_OK;
    if (sep) {
        for (;;) {
            const char *hit = maxsplit < 0 || splits < maxsplit ? memmem(p + i, n - i, sep->u.str.s, sep->u.str.n) : NULL;
            size_t at = hit ? (size_t)(hit - p) : n;
            if ((e = push_slice(cx, l, s, i, at)) || !hit) break;
            i = at + sep->u.str.n;
            splits++;
        }
    } else { /* runs of non-whitespace; the rest after maxsplit splits stays whole */
        jx_work(cx, JX_CHAR_WORK * n);
        for (;;) {
            size_t k;
            while (i < n && (k = jx_space_len(p + i, n - i))) i += k;
            if (i >= n) break;
            if (maxsplit >= 0 && splits >= maxsplit) {
                e = push_slice(cx, l, s, i, n);
                break;
            }
            size_t start = i;
            while (i < n && !jx_space_len(p + i, n - i)) i += jx_utf8_len(p + i, n - i);
            if ((e = push_slice(cx, l, s, start, i))) break;
            splits++;
        }
    }
    if (e) {
        jv_unref(l);
        return e;
    }
    *out = l;
    return ST_OK;
}

/* startswith/endswith with a string or a list of strings. */
static st_err affix(jx_ctx *cx, const st_jv *s, const st_jv *x, int at_end, int *out)
{
    *out = 0;
    if (x && x->type == JV_LIST) {
        for (size_t i = 0; i < x->u.list.n && !*out; i++) ST_TRY(affix(cx, s, x->u.list.item[i], at_end, out));
        return ST_OK;
    }
    ST_TRY(need_str(cx, x, at_end ? "endswith" : "startswith"));
    size_t n = s->u.str.n, m = x->u.str.n;
    jx_work(cx, m);
    *out = m <= n && !memcmp(s->u.str.s + (at_end ? n - m : 0), x->u.str.s, m);
    return ST_OK;
}

static size_t length_of(jx_ctx *cx, const st_jv *v)
{
    switch (v->type) {
    case JV_STR: jx_work(cx, JX_CHAR_WORK * v->u.str.n); return jx_utf8_count(v->u.str.s, v->u.str.n);
    case JV_LIST: return v->u.list.n;
    case JV_DICT:
    case JV_NS: return v->u.map.n;
    default: return 0;
    }
}

/* ---- sequences ------------------------------------------------------------------------- */

/* A list of v's items: itself, a dict's keys, a string's characters, [] for undefined. */
static st_err as_list(jx_ctx *cx, const st_jv *v, st_jv **out)
{
    if (v->type == JV_LIST) {
        *out = jv_ref((st_jv *)v);
        return ST_OK;
    }
    if (v->type != JV_DICT && v->type != JV_STR && v->type != JV_UNDEF)
        return jx_fail(cx, ST_ERR_FORMAT, "%s is not iterable", jv_type_name(v));
    st_jv *l = jv_new(JV_LIST);
    NEW(l);
    st_err e = ST_OK;
    for (size_t i = 0; v->type == JV_DICT && i < v->u.map.n && !e; i++) e = jv_list_push(cx, l, jv_ref(v->u.map.key[i]));
    for (size_t i = 0; v->type == JV_STR && i < v->u.str.n && !e;) {
        size_t len = jx_utf8_len(v->u.str.s + i, v->u.str.n - i);
        e = push_slice(cx, l, v, i, i + len);
        i += len;
    }
    if (e) {
        jv_unref(l);
        return e;
    }
    *out = l;
    return ST_OK;
}

/* what 0: the keys, 1: the values, 2: (key, value) tuples, as lists */
static st_err items_of(jx_ctx *cx, const st_jv *d, int what, st_jv **out)
{
    st_jv *l = jv_new(JV_LIST);
    NEW(l);
    st_err e = ST_OK;
    for (size_t i = 0; i < d->u.map.n && !e; i++) {
        if (what != 2) {
            e = jv_list_push(cx, l, jv_ref(what == 0 ? d->u.map.key[i] : d->u.map.val[i]));
            continue;
        }
        st_jv *pair = jv_new(JV_LIST);
        if (!pair) e = jx_fail(cx, ST_ERR_MEM, "out of memory");
        else pair->u.list.tuple = 1;
        if (!e) e = jv_list_push(cx, pair, jv_ref(d->u.map.key[i]));
        if (!e) e = jv_list_push(cx, pair, jv_ref(d->u.map.val[i]));
        if (!e) e = jv_list_push(cx, l, pair);
        else jv_unref(pair);
    }
    if (e) {
        jv_unref(l);
        return e;
    }
    *out = l;
    return ST_OK;
}

/* item.attr for selectattr, map, join: dict keys and namespace attributes. */
static st_jv *attr_of(jx_ctx *cx, const st_jv *item, const st_jv *attr)
{
    st_jv *v = NULL;
    if (item->type == JV_DICT || item->type == JV_NS) v = jv_dict_find(cx, item, attr);
    return v ? jv_ref(v) : jv_undef(attr->u.str.s, attr->u.str.n);
}

/* ---- tests ------------------------------------------------------------------------------ */

static const char *const test_names[] = {
    "defined", "undefined", "none", "string", "number", "integer", "float", "boolean", "true", "false",
    "mapping", "iterable", "sequence", "callable", "even", "odd", "divisibleby", "eq", "equalto", "==",
    "ne", "!=", "lt", "<", "le", "<=", "gt", ">", "ge", ">=", "in", "lower", "upper", "sameas", NULL};
enum { T_DEFINED, T_UNDEFINED, T_NONE, T_STRING, T_NUMBER, T_INTEGER, T_FLOAT, T_BOOLEAN, T_TRUE, T_FALSE,
       T_MAPPING, T_ITERABLE, T_SEQUENCE, T_CALLABLE, T_EVEN, T_ODD, T_DIVISIBLEBY, T_EQ, T_EQUALTO, T_EQ2,
       T_NE, T_NE2, T_LT, T_LT2, T_LE, T_LE2, T_GT, T_GT2, T_GE, T_GE2, T_IN, T_LOWER, T_UPPER, T_SAMEAS };

static int find_name(const char *const *names, const char *s, size_t n)
{
    for (int i = 0; names[i]; i++)
        if (strlen(names[i]) == n && !memcmp(names[i], s, n)) return i;
    return -1;
}

int jx_test_find(const char *name, size_t n) { return find_name(test_names, name, n); }

static int all_case(jx_ctx *cx, const st_jv *s, int upper)
{
    int cased = 0;
    jx_work(cx, JX_CHAR_WORK * s->u.str.n);
    for (size_t i = 0; i < s->u.str.n; i++) {
        char c = s->u.str.s[i];
        if (!is_alpha(c)) continue;
        cased = 1;
        if ((c >= 'A' && c <= 'Z') != upper) return 0;
    }
    return cased;
}

static st_err test_apply(jx_ctx *cx, int fn, const st_jv *v, const args_t *a, int *out)
{
    const st_jv *x = arg(a, 0, NULL);
    int t = v->type;
    ST_TRY(check_args(cx, a, test_names[fn], fn >= T_DIVISIBLEBY && fn <= T_IN ? 1 : fn == T_SAMEAS ? 1 : 0, NULL));
    if ((fn >= T_DIVISIBLEBY && fn <= T_IN) || fn == T_SAMEAS)
        if (!x) return jx_fail(cx, ST_ERR_FORMAT, "the test '%s' needs an argument", test_names[fn]);
    switch (fn) {
    case T_DEFINED: *out = t != JV_UNDEF; return ST_OK;
    case T_UNDEFINED: *out = t == JV_UNDEF; return ST_OK;
    case T_NONE: *out = t == JV_NONE; return ST_OK;
    case T_STRING: *out = t == JV_STR; return ST_OK;
    case T_NUMBER: *out = jv_is_number(v); return ST_OK;
    case T_INTEGER: *out = t == JV_INT; return ST_OK;
    case T_FLOAT: *out = t == JV_FLOAT; return ST_OK;
    case T_BOOLEAN: *out = t == JV_BOOL; return ST_OK;
    case T_TRUE: *out = t == JV_BOOL && v->u.i; return ST_OK;
    case T_FALSE: *out = t == JV_BOOL && !v->u.i; return ST_OK;
    case T_MAPPING: *out = t == JV_DICT; return ST_OK;
    case T_ITERABLE: *out = t == JV_STR || t == JV_LIST || t == JV_DICT || t == JV_UNDEF; return ST_OK;
    case T_SEQUENCE: *out = t == JV_STR || t == JV_LIST || t == JV_DICT; return ST_OK;
    case T_CALLABLE: *out = t == JV_FUNC || t == JV_MACRO; return ST_OK;
    case T_LOWER:
    case T_UPPER: { /* str(value).islower() */
        st_jv *s;
        ST_TRY(jv_to_string(cx, v, &s));
        *out = all_case(cx, s, fn == T_UPPER);
        jv_unref(s);
        return ST_OK;
    }
    case T_EVEN:
    case T_ODD:
    case T_DIVISIBLEBY: { /* value % n == 0 (even), == 1 (odd), as Python computes % */
        st_jv *two = jv_int(2), *rest = NULL;
        NEW(two);
        st_err e = fn == T_DIVISIBLEBY && jv_is_number(x) && jv_num(x) == 0.0
                       ? jx_fail(cx, ST_ERR_FORMAT, "divisibleby 0")
                       : jx_arith(cx, '%', v, fn == T_DIVISIBLEBY ? x : two, &rest);
        jv_unref(two);
        if (e) return e;
        *out = jv_num(rest) == (fn == T_ODD ? 1.0 : 0.0);
        jv_unref(rest);
        return ST_OK;
    }
    case T_EQ: case T_EQUALTO: case T_EQ2: return jx_compare(cx, JC_EQ, v, x, out);
    case T_NE: case T_NE2: return jx_compare(cx, JC_NE, v, x, out);
    case T_LT: case T_LT2: return jx_compare(cx, JC_LT, v, x, out);
    case T_LE: case T_LE2: return jx_compare(cx, JC_LE, v, x, out);
    case T_GT: case T_GT2: return jx_compare(cx, JC_GT, v, x, out);
    case T_GE: case T_GE2: return jx_compare(cx, JC_GE, v, x, out);
    case T_IN: return jx_compare(cx, JC_IN, v, x, out);
    default: /* sameas: Python's "is": the same object, or the same None/bool */
        *out = v == x || (t == x->type && (t == JV_NONE || (t == JV_BOOL && v->u.i == x->u.i)));
        return ST_OK;
    }
}

st_err jx_test(jx_ctx *cx, int fn, const st_jv *v, st_jv **args, const char **kw, int n_args, int *out)
{
    args_t a = {args, kw, n_args};
    return test_apply(cx, fn, v, &a, out);
}

/* ---- filters ------------------------------------------------------------------------------ */

static const char *const filter_names[] = {
    "trim", "length", "count", "upper", "lower", "capitalize", "title", "tojson", "string", "default", "d",
    "first", "last", "join", "replace", "list", "items", "reverse", "safe", "selectattr", "rejectattr", "map",
    "int", "abs", NULL};
enum { F_TRIM, F_LENGTH, F_COUNT, F_UPPER, F_LOWER, F_CAPITALIZE, F_TITLE, F_TOJSON, F_STRING, F_DEFAULT, F_D,
       F_FIRST, F_LAST, F_JOIN, F_REPLACE, F_LIST, F_ITEMS, F_REVERSE, F_SAFE, F_SELECTATTR, F_REJECTATTR, F_MAP,
       F_INT, F_ABS };

int jx_filter_find(const char *name, size_t n) { return find_name(filter_names, name, n); }

static st_err filter_apply(jx_ctx *cx, int fn, st_jv *v, const args_t *a, st_jv **out);

/* selectattr / rejectattr (attr, [test, args...]) */
static st_err select_attr(jx_ctx *cx, st_jv *v, const args_t *a, int keep, st_jv **out)
{
    const st_jv *attr = arg(a, 0, NULL), *test = arg(a, 1, NULL);
    ST_TRY(need_str(cx, attr, "selectattr's attribute"));
    int fn = -1;
    if (test) {
        ST_TRY(need_str(cx, test, "selectattr's test"));
        if ((fn = jx_test_find(test->u.str.s, test->u.str.n)) < 0)
            return jx_fail(cx, ST_ERR_FORMAT, "the Jinja test '%.40s' is not supported", test->u.str.s);
    }
    args_t rest = {a->v + 2, a->kw + 2, a->n > 2 ? a->n - 2 : 0};
    st_jv *items = NULL, *l = jv_new(JV_LIST);
    NEW(l);
    st_err e = as_list(cx, v, &items);
    for (size_t i = 0; !e && i < items->u.list.n; i++) {
        st_jv *x = attr_of(cx, items->u.list.item[i], attr);
        int yes = 0;
        if (!x) e = jx_fail(cx, ST_ERR_MEM, "out of memory");
        else if (fn < 0) yes = jv_truthy(x);
        else e = test_apply(cx, fn, x, &rest, &yes);
        jv_unref(x);
        if (!e && yes == keep) e = jv_list_push(cx, l, jv_ref(items->u.list.item[i]));
    }
    jv_unref(items);
    if (e) {
        jv_unref(l);
        return e;
    }
    *out = l;
    return ST_OK;
}

/* map(attribute='x') or map('filter', args...) */
static st_err map(jx_ctx *cx, st_jv *v, const args_t *a, st_jv **out)
{
    const st_jv *attr = arg(a, -1, "attribute"), *name = arg(a, 0, NULL), *dflt = arg(a, -1, "default");
    int fn = -1;
    if (attr) {
        ST_TRY(need_str(cx, attr, "map's attribute"));
    } else {
        ST_TRY(need_str(cx, name, "map's filter name"));
        if ((fn = jx_filter_find(name->u.str.s, name->u.str.n)) < 0)
            return jx_fail(cx, ST_ERR_FORMAT, "the Jinja filter '%.40s' is not supported", name->u.str.s);
    }
    args_t rest = {a->v + 1, a->kw + 1, a->n > 1 ? a->n - 1 : 0};
    st_jv *items = NULL, *l = jv_new(JV_LIST);
    NEW(l);
    st_err e = as_list(cx, v, &items);
    for (size_t i = 0; !e && i < items->u.list.n; i++) {
        st_jv *x = NULL;
        if (attr) {
            x = attr_of(cx, items->u.list.item[i], attr);
            if (x && x->type == JV_UNDEF && dflt) jv_unref(x), x = jv_ref((st_jv *)dflt);
            if (!x) e = jx_fail(cx, ST_ERR_MEM, "out of memory");
        } else {
            e = filter_apply(cx, fn, items->u.list.item[i], &rest, &x);
        }
        if (!e) e = jv_list_push(cx, l, x);
    }
    jv_unref(items);
    if (e) {
        jv_unref(l);
        return e;
    }
    *out = l;
    return ST_OK;
}

static st_err join(jx_ctx *cx, st_jv *v, const args_t *a, st_jv **out)
{
    const st_jv *sep = arg(a, 0, "d"), *attr = arg(a, 1, "attribute");
    if (sep) ST_TRY(need_str(cx, sep, "join's separator"));
    if (attr) ST_TRY(need_str(cx, attr, "join's attribute"));
    st_jv *items;
    ST_TRY(as_list(cx, v, &items));
    jx_buf b = {0};
    st_err e = ST_OK;
    for (size_t i = 0; !e && i < items->u.list.n; i++) {
        if (i && sep) e = jx_put_str(cx, &b, sep, 0, sep->u.str.n);
        st_jv *x = attr ? attr_of(cx, items->u.list.item[i], attr) : jv_ref(items->u.list.item[i]);
        if (!e) e = x ? jv_print(cx, &b, x) : jx_fail(cx, ST_ERR_MEM, "out of memory");
        jv_unref(x);
    }
    jv_unref(items);
    if (!e) return jx_buf_value(cx, &b, out);
    st_jinja_text_free(&b);
    return e;
}

static st_err reverse(jx_ctx *cx, st_jv *v, st_jv **out)
{
    st_jv *items, *l;
    if (v->type == JV_STR) {
        jx_buf b = {0};
        st_err e = ST_OK;
        for (size_t to = v->u.str.n; !e && to > 0;) {
            size_t len = last_char_len(v->u.str.s, to);
            e = jx_put_str(cx, &b, v, to - len, to);
            to -= len;
        }
        if (!e) return jx_buf_value(cx, &b, out);
        st_jinja_text_free(&b);
        return e;
    }
    ST_TRY(as_list(cx, v, &items));
    l = jv_new(JV_LIST);
    st_err e = l ? ST_OK : jx_fail(cx, ST_ERR_MEM, "out of memory");
    for (size_t i = items->u.list.n; !e && i > 0; i--) e = jv_list_push(cx, l, jv_ref(items->u.list.item[i - 1]));
    jv_unref(items);
    if (e) {
        jv_unref(l);
        return e;
    }
    *out = l;
    return ST_OK;
}

/* Python's int(): ints, bools, floats truncated, decimal strings; else the default. */
static st_err to_int(jx_ctx *cx, const st_jv *v, const st_jv *dflt, st_jv **out)
{
    if (v->type == JV_INT || v->type == JV_BOOL) *out = jv_int(v->u.i);
    else if (v->type == JV_FLOAT && v->u.f > -9.2e18 && v->u.f < 9.2e18) *out = jv_int((int64_t)v->u.f);
    else if (v->type == JV_STR && v->u.str.n && v->u.str.n < 20) {
        char buf[24], *end;
        memcpy(buf, v->u.str.s, v->u.str.n);
        buf[v->u.str.n] = '\0';
        long long x = strtoll(buf, &end, 10);
        while (*end == ' ') end++;
        *out = *end ? NULL : jv_int(x);
        if (!*end) NEW(*out);
    }
    if (!*out) *out = dflt ? jv_ref((st_jv *)dflt) : jv_int(0);
    NEW(*out);
    return ST_OK;
}

static st_err filter_apply(jx_ctx *cx, int fn, st_jv *v, const args_t *a, st_jv **out)
{
    static const char *const k_chars[] = {"chars", NULL}, *const k_json[] = {"indent", NULL},
                             *const k_default[] = {"default_value", "boolean", NULL},
                             *const k_join[] = {"d", "attribute", NULL}, *const k_replace[] = {"old", "new", "count", NULL},
                             *const k_map[] = {"attribute", "default", NULL}, *const k_int[] = {"default", "base", NULL};
    const char *name = filter_names[fn];
    st_jv *s = NULL;
    st_err e = ST_OK;
    *out = NULL;
    switch (fn) {
    case F_TRIM:
    case F_UPPER:
    case F_LOWER:
    case F_CAPITALIZE:
    case F_TITLE:
    case F_REPLACE:
        ST_TRY(check_args(cx, a, name, fn == F_TRIM ? 1 : fn == F_REPLACE ? 3 : 0, fn == F_TRIM ? k_chars : k_replace));
        ST_TRY(jv_to_string(cx, v, &s)); /* Jinja's filters print non-strings first */
        if (fn == F_TRIM) e = strip(cx, s, arg(a, 0, "chars"), 1, 1, out);
        else if (fn == F_REPLACE) {
            const st_jv *old = arg(a, 0, "old"), *rep = arg(a, 1, "new"), *count = arg(a, 2, "count");
            if (!(e = need_str(cx, old, "replace")) && !(e = need_str(cx, rep, "replace")) &&
                !(e = count ? need_int(cx, count, "replace's count") : ST_OK))
                e = replace(cx, s, old, rep, count ? count->u.i : -1, out);
        } else {
            int mode = fn == F_UPPER ? CASE_UPPER : fn == F_LOWER ? CASE_LOWER : fn == F_CAPITALIZE ? CASE_CAPITALIZE
                                                                                                   : CASE_TITLE_FILTER;
            e = case_map(cx, s, mode, out);
        }
        jv_unref(s);
        return e;
    case F_LENGTH:
    case F_COUNT:
        ST_TRY(check_args(cx, a, name, 0, NULL));
        if (v->type != JV_STR && v->type != JV_LIST && v->type != JV_DICT && v->type != JV_NS && v->type != JV_UNDEF)
            return jx_fail(cx, ST_ERR_FORMAT, "%s has no length", jv_type_name(v));
        *out = jv_int((int64_t)length_of(cx, v));
        break;
    case F_TOJSON: {
        ST_TRY(check_args(cx, a, name, 1, k_json));
        const st_jv *ind = arg(a, 0, "indent");
        if (ind && ind->type != JV_NONE) ST_TRY(need_int(cx, ind, "tojson's indent"));
        int indent = ind && ind->type != JV_NONE ? (int)(ind->u.i < 0 ? 0 : ind->u.i > 64 ? 64 : ind->u.i) : -1;
        jx_buf b = {0};
        if ((e = jv_json(cx, &b, v, indent, 0))) {
            st_jinja_text_free(&b);
            return e;
        }
        return jx_buf_value(cx, &b, out);
    }
    case F_STRING: ST_TRY(check_args(cx, a, name, 0, NULL)); return jv_to_string(cx, v, out);
    case F_SAFE: ST_TRY(check_args(cx, a, name, 0, NULL)); *out = jv_ref(v); return ST_OK;
    case F_DEFAULT:
    case F_D: {
        ST_TRY(check_args(cx, a, name, 2, k_default));
        const st_jv *dv = arg(a, 0, "default_value"), *boolean = arg(a, 1, "boolean");
        int use = v->type == JV_UNDEF || (boolean && jv_truthy(boolean) && !jv_truthy(v));
        *out = use ? (dv ? jv_ref((st_jv *)dv) : jv_str_lit("", 0)) : jv_ref(v);
        break;
    }
    case F_FIRST:
    case F_LAST: {
        ST_TRY(check_args(cx, a, name, 0, NULL));
        st_jv *items;
        ST_TRY(as_list(cx, v, &items));
        size_t n = items->u.list.n;
        *out = n ? jv_ref(items->u.list.item[fn == F_FIRST ? 0 : n - 1]) : jv_undef(NULL, 0);
        jv_unref(items);
        break;
    }
    case F_JOIN: ST_TRY(check_args(cx, a, name, 2, k_join)); return join(cx, v, a, out);
    case F_LIST: ST_TRY(check_args(cx, a, name, 0, NULL)); return as_list(cx, v, out);
    case F_ITEMS:
        ST_TRY(check_args(cx, a, name, 0, NULL));
        if (v->type == JV_UNDEF) *out = jv_new(JV_LIST);
        else if (v->type != JV_DICT) return jx_fail(cx, ST_ERR_FORMAT, "items needs a dict, not %s", jv_type_name(v));
        else return items_of(cx, v, 2, out);
        break;
    case F_REVERSE: ST_TRY(check_args(cx, a, name, 0, NULL)); return reverse(cx, v, out);
    case F_SELECTATTR:
    case F_REJECTATTR: return select_attr(cx, v, a, fn == F_SELECTATTR, out);
    case F_MAP: ST_TRY(check_args(cx, a, name, 16, k_map)); return map(cx, v, a, out);
    case F_INT: ST_TRY(check_args(cx, a, name, 2, k_int)); return to_int(cx, v, arg(a, 0, "default"), out);
    default: /* abs */
        ST_TRY(check_args(cx, a, name, 0, NULL));
        if (!jv_is_number(v)) return jx_fail(cx, ST_ERR_FORMAT, "abs needs a number, not %s", jv_type_name(v));
        if (v->type == JV_FLOAT) *out = jv_float(v->u.f < 0 ? -v->u.f : v->u.f);
        else if (v->u.i == INT64_MIN) return jx_fail(cx, ST_ERR_FORMAT, "integer overflow in abs");
        else *out = jv_int(v->u.i < 0 ? -v->u.i : v->u.i);
        break;
    }
    NEW(*out);
    return ST_OK;
}

st_err jx_filter(jx_ctx *cx, int fn, st_jv *v, st_jv **args, const char **kw, int n_args, st_jv **out)
{
    args_t a = {args, kw, n_args};
    return filter_apply(cx, fn, v, &a, out);
}

/* ---- methods --------------------------------------------------------------------------------- */

static st_err str_method(jx_ctx *cx, st_jv *s, const char *name, const args_t *a, st_jv **out)
{
    static const char *const k_split[] = {"sep", "maxsplit", NULL}, *const k_chars[] = {"chars", NULL};
    if (!strcmp(name, "strip") || !strcmp(name, "lstrip") || !strcmp(name, "rstrip")) {
        ST_TRY(check_args(cx, a, name, 1, k_chars));
        return strip(cx, s, arg(a, 0, "chars"), name[0] != 'r', name[0] != 'l', out);
    }
    if (!strcmp(name, "startswith") || !strcmp(name, "endswith")) {
        ST_TRY(check_args(cx, a, name, 1, NULL));
        int yes;
        ST_TRY(affix(cx, s, arg(a, 0, NULL), name[0] == 'e', &yes));
        *out = jv_bool(yes);
        NEW(*out);
        return ST_OK;
    }
    if (!strcmp(name, "split")) {
        ST_TRY(check_args(cx, a, name, 2, k_split));
        const st_jv *max = arg(a, 1, "maxsplit");
        if (max) ST_TRY(need_int(cx, max, "split's maxsplit"));
        return split(cx, s, arg(a, 0, "sep"), max ? max->u.i : -1, out);
    }
    if (!strcmp(name, "replace")) {
        ST_TRY(check_args(cx, a, name, 3, NULL));
        const st_jv *old = arg(a, 0, NULL), *rep = arg(a, 1, NULL), *count = arg(a, 2, NULL);
        ST_TRY(need_str(cx, old, "replace"));
        ST_TRY(need_str(cx, rep, "replace"));
        if (count) ST_TRY(need_int(cx, count, "replace's count"));
        return replace(cx, s, old, rep, count ? count->u.i : -1, out);
    }
    static const char *const cases[] = {"upper", "lower", "capitalize", "title", NULL};
    for (int m = 0; cases[m]; m++)
        if (!strcmp(name, cases[m])) {
            ST_TRY(check_args(cx, a, name, 0, NULL));
            return case_map(cx, s, m, out);
        }
    return jx_fail(cx, ST_ERR_FORMAT, "the string method '%s' is not supported", name);
}

static st_err dict_method(jx_ctx *cx, st_jv *d, const char *name, const args_t *a, st_jv **out)
{
    if (!strcmp(name, "get")) {
        ST_TRY(check_args(cx, a, name, 2, NULL));
        const st_jv *key = arg(a, 0, NULL), *dflt = arg(a, 1, NULL);
        if (!key) return jx_fail(cx, ST_ERR_FORMAT, "get needs a key");
        st_jv *v = jv_dict_find(cx, d, key);
        *out = v ? jv_ref(v) : dflt ? jv_ref((st_jv *)dflt) : jv_none();
        NEW(*out);
        return ST_OK;
    }
    static const char *const views[] = {"keys", "values", "items", NULL};
    for (int m = 0; views[m]; m++)
        if (!strcmp(name, views[m])) {
            ST_TRY(check_args(cx, a, name, 0, NULL));
            return items_of(cx, d, m, out);
        }
    return jx_fail(cx, ST_ERR_FORMAT, "the dict method '%s' is not supported", name);
}

st_err jx_method(jx_ctx *cx, st_jv *obj, const char *name, st_jv **args, const char **kw, int n_args, st_jv **out)
{
    args_t a = {args, kw, n_args};
    if (obj->type == JV_STR) return str_method(cx, obj, name, &a, out);
    if (obj->type == JV_DICT) return dict_method(cx, obj, name, &a, out);
    if (obj->type == JV_LIST)
        return jx_fail(cx, ST_ERR_FORMAT, "the list method '%s' is not supported (chat templates cannot change lists)",
                       name);
    return jx_fail(cx, ST_ERR_FORMAT, "%s has no method '%s'", jv_type_name(obj), name);
}

/* ---- global functions ------------------------------------------------------------------------- */

static st_err range(jx_ctx *cx, const args_t *a, st_jv **out)
{
    ST_TRY(check_args(cx, a, "range", 3, NULL));
    int64_t b[3] = {0, 0, 1};
    if (a->n < 1) return jx_fail(cx, ST_ERR_FORMAT, "range needs at least one argument");
    for (int k = 0; k < a->n; k++) ST_TRY(need_int(cx, a->v[k], "range"));
    if (a->n == 1) b[1] = a->v[0]->u.i;
    else for (int k = 0; k < a->n; k++) b[k] = a->v[k]->u.i;
    if (b[2] == 0) return jx_fail(cx, ST_ERR_FORMAT, "range step cannot be zero");
    double span = (double)b[1] - (double)b[0], count = span / (double)b[2];
    if (count > JX_MAX_RANGE)
        return jx_fail(cx, ST_ERR_FORMAT, "range of %.0f numbers: more than the %d allowed", count, JX_MAX_RANGE);
    st_jv *l = jv_new(JV_LIST);
    NEW(l);
    st_err e = ST_OK;
    for (int64_t x = b[0]; !e && (b[2] > 0 ? x < b[1] : x > b[1]); x += b[2]) {
        st_jv *v = jv_int(x);
        e = v ? jv_list_push(cx, l, v) : jx_fail(cx, ST_ERR_MEM, "out of memory");
        if (__builtin_add_overflow(x, b[2], &(int64_t){0})) break;
    }
    if (e) {
        jv_unref(l);
        return e;
    }
    *out = l;
    return ST_OK;
}

static st_err namespace(jx_ctx *cx, const args_t *a, st_jv **out)
{
    st_jv *ns = jv_new(JV_NS);
    NEW(ns);
    st_err e = ST_OK;
    for (int i = 0; i < a->n && !e; i++) {
        if (!a->kw[i]) { /* namespace(dict) copies the dict */
            const st_jv *d = a->v[i];
            if (d->type != JV_DICT) e = jx_fail(cx, ST_ERR_FORMAT, "namespace() takes keywords or a dict");
            for (size_t k = 0; !e && k < d->u.map.n; k++)
                e = jv_dict_set(cx, ns, jv_ref(d->u.map.key[k]), jv_ref(d->u.map.val[k]));
            continue;
        }
        st_jv *key = jv_str_lit(a->kw[i], strlen(a->kw[i]));
        e = key ? jv_dict_set(cx, ns, key, jv_ref(a->v[i])) : jx_fail(cx, ST_ERR_MEM, "out of memory");
    }
    if (e) {
        jv_unref(ns);
        return e;
    }
    *out = ns;
    return ST_OK;
}

/* The time strftime_now formats: SOURCE_DATE_EPOCH in UTC when set, else
 * the local time now (jinja.h). */
static st_err clock_now(jx_ctx *cx, struct tm *tm)
{
    const char *epoch = getenv("SOURCE_DATE_EPOCH");
    if (!epoch) {
        time_t now = time(NULL);
        if (!localtime_r(&now, tm)) return jx_fail(cx, ST_ERR_FORMAT, "strftime_now: no local time");
        return ST_OK;
    }
    char *end;
    errno = 0;
    long long secs = strtoll(epoch, &end, 10);
    time_t t = (time_t)secs;
    if (!*epoch || *end || errno || secs < 0 || !gmtime_r(&t, tm))
        return jx_fail(cx, ST_ERR_FORMAT, "strftime_now: SOURCE_DATE_EPOCH='%.40s' is not a number of seconds "
                       "since 1970", epoch);
    return ST_OK;
}

/* transformers' strftime_now(format) = datetime.now().strftime(format):
 * Python formats %f, %z and %Z itself (a naive datetime: "000000", "",
 * "") and hands the rest to the C library's strftime, as here. */
static st_err strftime_now(jx_ctx *cx, const args_t *a, st_jv **out)
{
    ST_TRY(check_args(cx, a, "strftime_now", 1, NULL));
    const st_jv *f = arg(a, 0, NULL);
    ST_TRY(need_str(cx, f, "strftime_now"));
    size_t n = f->u.str.n;
    if (n > 4096) return jx_fail(cx, ST_ERR_FORMAT, "strftime_now: a format of %zu bytes (at most 4096)", n);
    if (memchr(f->u.str.s, '\0', n)) return jx_fail(cx, ST_ERR_FORMAT, "strftime_now: embedded null character");
    char fmt[6 * 4096 + 1];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *c = f->u.str.s + i;
        if (*c != '%' || i + 1 == n) {
            fmt[k++] = *c;
        } else if (c[1] == 'f') {
            memcpy(fmt + k, "000000", 6), k += 6, i++;
        } else if (c[1] == 'z' || c[1] == 'Z') {
            i++;
        } else {
            fmt[k++] = '%', fmt[k++] = c[1], i++;
        }
    }
    fmt[k] = '\0';
    struct tm tm;
    ST_TRY(clock_now(cx, &tm));
    size_t cap = 16 * k + 256;
    char *buf = malloc(cap);
    if (!buf) return jx_fail(cx, ST_ERR_MEM, "out of memory");
    size_t len = k ? strftime(buf, cap, fmt, &tm) : 0;
    if (k && !len) {
        free(buf);
        return jx_fail(cx, ST_ERR_FORMAT, "strftime_now: the format gives nothing or more than %zu bytes", cap);
    }
    *out = jv_str_lit(buf, len);
    free(buf);
    NEW(*out);
    return jx_charge(cx, len);
}

st_err jx_call_global(jx_ctx *cx, int which, st_jv **args, const char **kw, int n_args, st_jv **out)
{
    args_t a = {args, kw, n_args};
    if (which == JF_STRFTIME_NOW) return strftime_now(cx, &a, out);
    if (which == JF_NAMESPACE) return namespace(cx, &a, out);
    if (which == JF_RANGE) return range(cx, &a, out);
    jx_buf b = {0}; /* raise_exception(message) */
    const st_jv *msg = arg(&a, 0, NULL);
    st_err e = msg ? jv_print(cx, &b, msg) : ST_OK;
    if (!e) e = jx_fail(cx, ST_ERR_FORMAT, "the template raised an error: %.300s", b.s ? b.s : "");
    st_jinja_text_free(&b);
    return e;
}
