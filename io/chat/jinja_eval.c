/* jinja_eval.c: running a parsed template. Expressions follow Python's
 * semantics (and/or return an operand, 1 == 1.0 == True, // and % floor,
 * str + str, list + list, str * int), Jinja's scoping (a for loop is a
 * scope: what it sets is gone after endfor; namespaces carry values out)
 * and Jinja's default Undefined. Every evaluation takes a step from the
 * render's budget and every byte made is counted (jinja_internal.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/chat/jinja_internal.h"

/* ---- scopes --------------------------------------------------------------------- */

struct jx_scope {
    const char **name;
    size_t *len;
    st_jv **val;
    int n, cap;
};

/* The innermost binding of name that the running code sees: its own frame's
 * scopes, then those of where its macro was defined (jinja_internal.h). */
static st_jv *lookup(jx_ctx *cx, const char *name, size_t n)
{
    for (int s = cx->n_scopes - 1; s >= 0; s = s == cx->frame ? cx->link - 1 : s - 1) {
        const jx_scope *sc = &cx->scopes[s];
        jx_work(cx, 8 * (size_t)sc->n);
        for (int i = sc->n - 1; i >= 0; i--)
            if (sc->len[i] == n && !memcmp(sc->name[i], name, n)) return sc->val[i];
    }
    return NULL;
}

/* Bind name in the innermost scope, taking v. */
static st_err assign(jx_ctx *cx, const char *name, size_t n, st_jv *v)
{
    jx_scope *sc = &cx->scopes[cx->n_scopes - 1];
    for (int i = 0; i < sc->n; i++)
        if (sc->len[i] == n && !memcmp(sc->name[i], name, n)) {
            jv_unref(sc->val[i]);
            sc->val[i] = v;
            return ST_OK;
        }
    if (sc->n == sc->cap) {
        int cap = sc->cap ? sc->cap * 2 : 8;
        const char **nm = realloc(sc->name, (size_t)cap * sizeof *nm);
        if (nm) sc->name = nm;
        size_t *ln = realloc(sc->len, (size_t)cap * sizeof *ln);
        if (ln) sc->len = ln;
        st_jv **vl = realloc(sc->val, (size_t)cap * sizeof *vl);
        if (vl) sc->val = vl;
        if (!nm || !ln || !vl) {
            jv_unref(v);
            return jx_fail(cx, ST_ERR_MEM, "out of memory for variables");
        }
        sc->cap = cap;
    }
    sc->name[sc->n] = name;
    sc->len[sc->n] = n;
    sc->val[sc->n++] = v;
    return ST_OK;
}

static st_err push_scope(jx_ctx *cx)
{
    if (cx->n_scopes >= JX_MAX_SCOPES)
        return jx_fail(cx, ST_ERR_FORMAT, "for loops and macro calls nested too deeply (more than %d)", JX_MAX_SCOPES);
    memset(&cx->scopes[cx->n_scopes++], 0, sizeof(jx_scope));
    return ST_OK;
}

static void pop_scope(jx_ctx *cx)
{
    jx_scope *sc = &cx->scopes[--cx->n_scopes];
    for (int i = 0; i < sc->n; i++) jv_unref(sc->val[i]);
    free(sc->name), free(sc->len), free(sc->val);
}

/* ---- small helpers ---------------------------------------------------------------- */

#define NEW(v) do { if (!(v)) return jx_fail(cx, ST_ERR_MEM, "out of memory"); } while (0)

/* "like an int": ints and bools, as in Python */
static int int_like(const st_jv *v) { return v->type == JV_INT || v->type == JV_BOOL; }

static st_err tilde(jx_ctx *cx, const st_jv *a, const st_jv *b, st_jv **out)
{
    jx_buf buf = {0};
    st_err e = jv_print(cx, &buf, a);
    if (!e) e = jv_print(cx, &buf, b);
    if (e) {
        st_jinja_text_free(&buf);
        return e;
    }
    return jx_buf_value(cx, &buf, out);
}

/* ---- comparisons ------------------------------------------------------------------- */

static st_err eval_compare(jx_ctx *cx, const jx_node *e, st_jv **out)
{
    st_jv *left, *right = NULL;
    int ok = 1;
    ST_TRY(jx_eval(cx, e->kid[0], &left));
    for (int k = 1; k < e->n_kid && ok; k++) {
        st_err err = jx_eval(cx, e->kid[k], &right);
        if (!err) err = jx_compare(cx, e->ops[k - 1], left, right, &ok);
        jv_unref(left);
        if (err) {
            jv_unref(right);
            return err;
        }
        left = right;
        right = NULL;
    }
    jv_unref(left);
    *out = jv_bool(ok);
    NEW(*out);
    return ST_OK;
}

/* ---- attributes, items, slices ------------------------------------------------------- */

static st_err get_attr(jx_ctx *cx, const st_jv *obj, const char *name, size_t n, st_jv **out)
{
    if (obj->type == JV_UNDEF) return jx_undefined_error(cx, obj, "reading an attribute of it");
    st_jv *v = obj->type == JV_DICT || obj->type == JV_NS ? jv_dict_get(obj, name, n) : NULL;
    *out = v ? jv_ref(v) : jv_undef(name, n);
    NEW(*out);
    return ST_OK;
}

/* Code point i of a string (negative from the end), or undefined. */
static st_jv *str_char(jx_ctx *cx, const st_jv *s, int64_t i)
{
    jx_work(cx, 2 * JX_CHAR_WORK * s->u.str.n);
    size_t count = jx_utf8_count(s->u.str.s, s->u.str.n);
    if (i < 0) i += (int64_t)count;
    if (i < 0 || (uint64_t)i >= count) return jv_undef(NULL, 0);
    size_t at = 0;
    for (int64_t k = 0; k < i; k++) at += jx_utf8_len(s->u.str.s + at, s->u.str.n - at);
    return jv_str_slice(s, at, at + jx_utf8_len(s->u.str.s + at, s->u.str.n - at));
}

static st_err get_item(jx_ctx *cx, const st_jv *obj, const st_jv *key, st_jv **out)
{
    st_jv *v = NULL;
    if (obj->type == JV_UNDEF) return jx_undefined_error(cx, obj, "indexing it");
    if (obj->type == JV_LIST && int_like(key)) {
        int64_t i = key->u.i, n = (int64_t)obj->u.list.n;
        if (i < 0) i += n;
        if (i >= 0 && i < n) v = obj->u.list.item[i];
    } else if (obj->type == JV_STR && int_like(key)) {
        *out = str_char(cx, obj, key->u.i);
        NEW(*out);
        return ST_OK;
    } else if (obj->type == JV_DICT || obj->type == JV_NS) {
        v = jv_dict_find(cx, obj, key);
    }
    if (v) *out = jv_ref(v);
    else *out = key->type == JV_STR ? jv_undef(key->u.str.s, key->u.str.n) : jv_undef(NULL, 0);
    NEW(*out);
    return ST_OK;
}

/* Python's slice indices for a sequence of n: start, stop, step -> *count
 * positions start, start + step, ... */
static st_err slice_bounds(jx_ctx *cx, st_jv *const part[3], int64_t n, int64_t *start, int64_t *step,
                           int64_t *count)
{
    for (int k = 0; k < 3; k++)
        if (part[k] && part[k]->type != JV_NONE && !int_like(part[k]))
            return jx_fail(cx, ST_ERR_FORMAT, "slice indices must be integers or none, not %s", jv_type_name(part[k]));
    *step = part[2] && part[2]->type != JV_NONE ? part[2]->u.i : 1;
    if (*step == 0) return jx_fail(cx, ST_ERR_FORMAT, "slice step cannot be zero");
    if (*step == INT64_MIN) *step = -INT64_MAX;
    int64_t lo = *step < 0 ? -1 : 0, hi = *step < 0 ? n - 1 : n, b[2];
    for (int k = 0; k < 2; k++) {
        if (!part[k] || part[k]->type == JV_NONE) {
            b[k] = (k == 0) == (*step > 0) ? lo : hi;
            continue;
        }
        int64_t v = part[k]->u.i;
        if (v < 0) v = v < -n ? lo : v + n;
        b[k] = v < lo ? lo : v > hi ? hi : v;
    }
    *start = b[0];
    int64_t span = *step > 0 ? b[1] - b[0] : b[0] - b[1], st = *step > 0 ? *step : -*step;
    *count = span <= 0 ? 0 : (span + st - 1) / st;
    return ST_OK;
}

static st_err slice_str(jx_ctx *cx, const st_jv *s, st_jv *const part[3], st_jv **out)
{
    jx_work(cx, JX_CHAR_WORK * s->u.str.n);
    size_t n_cp = jx_utf8_count(s->u.str.s, s->u.str.n);
    ST_TRY(jx_charge(cx, (n_cp + 1) * sizeof(size_t)));
    size_t *at = malloc((n_cp + 1) * sizeof *at);
    if (!at) return jx_fail(cx, ST_ERR_MEM, "out of memory slicing a string");
    for (size_t i = 0, off = 0; i <= n_cp; i++) {
        at[i] = off;
        if (i < n_cp) off += jx_utf8_len(s->u.str.s + off, s->u.str.n - off);
    }
    int64_t start, step, count;
    st_err e = slice_bounds(cx, part, (int64_t)n_cp, &start, &step, &count);
    jx_buf b = {0};
    if (!e && step == 1) e = jx_put_str(cx, &b, s, at[start], at[start + count]);
    for (int64_t k = 0; !e && step != 1 && k < count; k++) {
        int64_t i = start + k * step;
        e = jx_put_str(cx, &b, s, at[i], at[i + 1]);
    }
    free(at);
    if (!e) return jx_buf_value(cx, &b, out);
    st_jinja_text_free(&b);
    return e;
}

static st_err eval_slice(jx_ctx *cx, const jx_node *e, st_jv **out)
{
    st_jv *obj, *part[3] = {NULL, NULL, NULL};
    ST_TRY(jx_eval(cx, e->kid[0], &obj));
    st_err err = ST_OK;
    for (int k = 0; k < 3 && !err; k++)
        if (e->kid[k + 1]) err = jx_eval(cx, e->kid[k + 1], &part[k]);
    cx->line = e->line;
    if (!err && obj->type == JV_UNDEF) err = jx_undefined_error(cx, obj, "slicing it");
    else if (!err && obj->type == JV_STR) err = slice_str(cx, obj, part, out);
    else if (!err && obj->type == JV_LIST) {
        int64_t start, step, count;
        err = slice_bounds(cx, part, (int64_t)obj->u.list.n, &start, &step, &count);
        st_jv *l = err ? NULL : jv_new(JV_LIST);
        if (!err && !l) err = jx_fail(cx, ST_ERR_MEM, "out of memory");
        for (int64_t k = 0; !err && k < count; k++) err = jv_list_push(cx, l, jv_ref(obj->u.list.item[start + k * step]));
        if (err) jv_unref(l);
        else *out = l;
    } else if (!err && !(*out = jv_undef(NULL, 0))) {
        err = jx_fail(cx, ST_ERR_MEM, "out of memory");
    }
    jv_unref(obj);
    for (int k = 0; k < 3; k++) jv_unref(part[k]);
    return err;
}

/* ---- calls ------------------------------------------------------------------------------ */

#define MAX_ARGS 16

static void free_args(st_jv **args, int n)
{
    for (int i = 0; i < n; i++) jv_unref(args[i]);
}

/* kid[first..] evaluated into args. */
static st_err eval_args(jx_ctx *cx, const jx_node *e, int first, st_jv **args, int *n)
{
    *n = 0;
    if (e->n_kid - first > MAX_ARGS) return jx_fail(cx, ST_ERR_FORMAT, "more than %d arguments", MAX_ARGS);
    for (int k = first; k < e->n_kid; k++) {
        st_err err = jx_eval(cx, e->kid[k], &args[*n]);
        if (err) {
            free_args(args, *n);
            return err;
        }
        (*n)++;
    }
    return ST_OK;
}

static st_err eval_call(jx_ctx *cx, const jx_node *e, st_jv **out)
{
    const jx_node *callee = e->kid[0];
    st_jv *obj, *args[MAX_ARGS];
    int n;
    if (callee->kind == JN_ATTR) { /* x.method(...) */
        ST_TRY(jx_eval(cx, callee->kid[0], &obj));
        st_err err = eval_args(cx, e, 1, args, &n);
        if (err) {
            jv_unref(obj);
            return err;
        }
        cx->line = e->line;
        if (obj->type == JV_UNDEF) err = jx_undefined_error(cx, obj, "calling a method on it");
        else err = jx_method(cx, obj, callee->s, args, e->kw + 1, n, out);
        free_args(args, n);
        jv_unref(obj);
        return err;
    }
    ST_TRY(jx_eval(cx, callee, &obj));
    st_err err = eval_args(cx, e, 1, args, &n);
    cx->line = e->line;
    if (!err) {
        if (obj->type == JV_FUNC) err = jx_call_global(cx, (int)obj->u.i, args, e->kw + 1, n, out);
        else if (obj->type == JV_MACRO) err = jx_call_macro(cx, obj, args, e->kw + 1, n, NULL, out);
        else if (obj->type == JV_UNDEF)
            err = jx_fail(cx, ST_ERR_FORMAT, "'%s' is undefined: not a macro of the template nor a function this "
                          "interpreter knows (raise_exception, namespace, range, strftime_now)",
                          obj->u.undef ? obj->u.undef : "?");
        else err = jx_fail(cx, ST_ERR_FORMAT, "%s is not callable", jv_type_name(obj));
        free_args(args, n);
    }
    jv_unref(obj);
    return err;
}

static st_err eval_name(jx_ctx *cx, const jx_node *e, st_jv **out)
{
    static const char *const globals[] = {"raise_exception", "namespace", "range", "strftime_now"};
    st_jv *v = lookup(cx, e->s, e->n);
    if (v) {
        *out = jv_ref(v);
        return ST_OK;
    }
    for (int g = 0; g < 4; g++)
        if (!strcmp(e->s, globals[g])) {
            *out = jv_func(g);
            NEW(*out);
            return ST_OK;
        }
    *out = jv_undef(e->s, e->n);
    NEW(*out);
    return ST_OK;
}

static st_err eval_container(jx_ctx *cx, const jx_node *e, st_jv **out)
{
    st_jv *c = jv_new(e->kind == JN_LIST ? JV_LIST : JV_DICT);
    NEW(c);
    if (e->kind == JN_LIST) c->u.list.tuple = e->op;
    st_err err = ST_OK;
    for (int k = 0; k < e->n_kid && !err; k += e->kind == JN_LIST ? 1 : 2) {
        st_jv *a, *b;
        if ((err = jx_eval(cx, e->kid[k], &a))) break;
        if (e->kind == JN_LIST) {
            err = jv_list_push(cx, c, a);
        } else if ((err = jx_eval(cx, e->kid[k + 1], &b))) {
            jv_unref(a);
        } else {
            err = jv_dict_set(cx, c, a, b);
        }
    }
    if (err) {
        jv_unref(c);
        return err;
    }
    *out = c;
    return ST_OK;
}

/* ---- expressions ------------------------------------------------------------------------- */

static st_err eval_binary(jx_ctx *cx, const jx_node *e, st_jv **out)
{
    st_jv *a, *b;
    ST_TRY(jx_eval(cx, e->kid[0], &a));
    if (e->kind == JN_AND || e->kind == JN_OR) { /* Python: the deciding operand */
        if (jv_truthy(a) == (e->kind == JN_OR)) {
            *out = a;
            return ST_OK;
        }
        jv_unref(a);
        return jx_eval(cx, e->kid[1], out);
    }
    st_err err = jx_eval(cx, e->kid[1], &b);
    if (err) {
        jv_unref(a);
        return err;
    }
    cx->line = e->line;
    err = e->op == '~' ? tilde(cx, a, b, out) : jx_arith(cx, e->op, a, b, out);
    jv_unref(a), jv_unref(b);
    return err;
}

static st_err eval_unary(jx_ctx *cx, const jx_node *e, st_jv **out)
{
    st_jv *a;
    ST_TRY(jx_eval(cx, e->kid[0], &a));
    cx->line = e->line;
    st_err err = ST_OK;
    if (e->kind == JN_NOT) *out = jv_bool(!jv_truthy(a));
    else if (a->type == JV_UNDEF) err = jx_undefined_error(cx, a, "used in arithmetic");
    else if (!jv_is_number(a)) err = jx_fail(cx, ST_ERR_FORMAT, "bad operand for unary %c: %s", e->kind == JN_NEG ? '-' : '+', jv_type_name(a));
    else if (e->kind == JN_POS) *out = a->type == JV_FLOAT ? jv_float(a->u.f) : jv_int(a->u.i);
    else if (a->type == JV_FLOAT) *out = jv_float(-a->u.f);
    else if (a->u.i == INT64_MIN) err = jx_fail(cx, ST_ERR_FORMAT, "integer overflow in unary -");
    else *out = jv_int(-a->u.i);
    jv_unref(a);
    if (!err && !*out) err = jx_fail(cx, ST_ERR_MEM, "out of memory");
    return err;
}

/* v | filter(args) and v is [not] test(args): kid[0] is v, kid[1..] the arguments */
static st_err eval_filter_test(jx_ctx *cx, const jx_node *e, st_jv **out)
{
    st_jv *v, *args[MAX_ARGS];
    int n = 0;
    ST_TRY(jx_eval(cx, e->kid[0], &v));
    st_err err = eval_args(cx, e, 1, args, &n);
    if (err) {
        jv_unref(v);
        return err;
    }
    cx->line = e->line;
    if (e->kind == JN_FILTER) {
        err = jx_filter(cx, e->fn, v, args, e->kw + 1, n, out);
    } else {
        int yes = 0;
        err = jx_test(cx, e->fn, v, args, e->kw + 1, n, &yes);
        if (!err && !(*out = jv_bool(yes != (e->op != 0)))) err = jx_fail(cx, ST_ERR_MEM, "out of memory");
    }
    free_args(args, n);
    jv_unref(v);
    return err;
}

static st_err eval_inner(jx_ctx *cx, const jx_node *e, st_jv **out)
{
    switch (e->kind) {
    case JN_LIT: *out = jv_ref(e->lit); return ST_OK;
    case JN_NAME: return eval_name(cx, e, out);
    case JN_LIST:
    case JN_DICT: return eval_container(cx, e, out);
    case JN_ATTR: {
        st_jv *obj;
        ST_TRY(jx_eval(cx, e->kid[0], &obj));
        cx->line = e->line;
        st_err err = get_attr(cx, obj, e->s, e->n, out);
        jv_unref(obj);
        return err;
    }
    case JN_INDEX: {
        st_jv *obj, *key;
        ST_TRY(jx_eval(cx, e->kid[0], &obj));
        st_err err = jx_eval(cx, e->kid[1], &key);
        cx->line = e->line;
        if (!err) err = get_item(cx, obj, key, out), jv_unref(key);
        jv_unref(obj);
        return err;
    }
    case JN_SLICE: return eval_slice(cx, e, out);
    case JN_CALL: return eval_call(cx, e, out);
    case JN_FILTER:
    case JN_TEST: return eval_filter_test(cx, e, out);
    case JN_NEG:
    case JN_POS:
    case JN_NOT: return eval_unary(cx, e, out);
    case JN_BINARY:
    case JN_AND:
    case JN_OR: return eval_binary(cx, e, out);
    case JN_COMPARE: return eval_compare(cx, e, out);
    case JN_COND: {
        st_jv *c;
        ST_TRY(jx_eval(cx, e->kid[1], &c));
        int yes = jv_truthy(c);
        jv_unref(c);
        if (yes) return jx_eval(cx, e->kid[0], out);
        if (e->kid[2]) return jx_eval(cx, e->kid[2], out);
        *out = jv_undef(NULL, 0);
        NEW(*out);
        return ST_OK;
    }
    default: return jx_fail(cx, ST_ERR_INTERNAL, "node %d is not an expression", e->kind);
    }
}

st_err jx_eval(jx_ctx *cx, const jx_node *e, st_jv **out)
{
    *out = NULL;
    int line = cx->line;
    cx->line = e->line;
    if (++cx->depth > 2 * JX_MAX_ADEPTH) return jx_fail(cx, ST_ERR_FORMAT, "the template recurses too deeply");
    ST_TRY(jx_charge(cx, 0));
    ST_TRY(eval_inner(cx, e, out));
    cx->depth--;
    cx->line = line;
    return ST_OK;
}

/* ---- statements --------------------------------------------------------------------------- */

/* What a for loop walks: a list's items, a dict's keys, a string's characters. */
static st_err iterable(jx_ctx *cx, st_jv *v, st_jv **list)
{
    if (v->type == JV_LIST) {
        *list = jv_ref(v);
        return ST_OK;
    }
    if (v->type != JV_DICT && v->type != JV_STR && v->type != JV_UNDEF)
        return jx_fail(cx, ST_ERR_FORMAT, "cannot loop over %s", jv_type_name(v));
    st_jv *l = jv_new(JV_LIST);
    NEW(l);
    st_err err = ST_OK;
    if (v->type == JV_DICT)
        for (size_t i = 0; i < v->u.map.n && !err; i++) err = jv_list_push(cx, l, jv_ref(v->u.map.key[i]));
    for (size_t i = 0; v->type == JV_STR && i < v->u.str.n && !err;) {
        size_t len = jx_utf8_len(v->u.str.s + i, v->u.str.n - i);
        st_jv *c = jv_str_slice(v, i, i + len);
        err = c ? jv_list_push(cx, l, c) : jx_fail(cx, ST_ERR_MEM, "out of memory");
        i += len;
    }
    if (err) {
        jv_unref(l);
        return err;
    }
    *list = l;
    return ST_OK;
}

/* Bind the loop variables to item ("for k, v in ..." unpacks a pair). */
static st_err bind_targets(jx_ctx *cx, const jx_node *s, st_jv *item)
{
    if (s->n_names == 1) return assign(cx, s->names[0], strlen(s->names[0]), jv_ref(item));
    if (item->type != JV_LIST || item->u.list.n != (size_t)s->n_names)
        return jx_fail(cx, ST_ERR_FORMAT, "cannot unpack %s into %d loop variables", jv_type_name(item), s->n_names);
    for (int k = 0; k < s->n_names; k++)
        ST_TRY(assign(cx, s->names[k], strlen(s->names[k]), jv_ref(item->u.list.item[k])));
    return ST_OK;
}

/* Items that pass the loop's "if" filter. */
static st_err filtered(jx_ctx *cx, const jx_node *s, st_jv *all, st_jv **kept)
{
    if (!s->kid[1]) {
        *kept = jv_ref(all);
        return ST_OK;
    }
    st_jv *l = jv_new(JV_LIST);
    NEW(l);
    st_err err = ST_OK;
    for (size_t i = 0; i < all->u.list.n && !err; i++) {
        st_jv *c;
        if ((err = bind_targets(cx, s, all->u.list.item[i])) || (err = jx_eval(cx, s->kid[1], &c))) break;
        if (jv_truthy(c)) err = jv_list_push(cx, l, jv_ref(all->u.list.item[i]));
        jv_unref(c);
    }
    if (err) {
        jv_unref(l);
        return err;
    }
    *kept = l;
    return ST_OK;
}

/* loop.index, loop.first, ... for item i of n. */
static st_err loop_var(jx_ctx *cx, const st_jv *items, size_t i, st_jv **out)
{
    size_t n = items->u.list.n;
    st_jv *d = jv_new(JV_DICT);
    NEW(d);
    const struct { const char *k; st_jv *v; } f[] = {
        {"index", jv_int((int64_t)i + 1)}, {"index0", jv_int((int64_t)i)}, {"revindex", jv_int((int64_t)(n - i))},
        {"revindex0", jv_int((int64_t)(n - i - 1))}, {"first", jv_bool(i == 0)}, {"last", jv_bool(i + 1 == n)},
        {"length", jv_int((int64_t)n)}, {"depth", jv_int(1)}, {"depth0", jv_int(0)},
        {"previtem", i > 0 ? jv_ref(items->u.list.item[i - 1]) : NULL},
        {"nextitem", i + 1 < n ? jv_ref(items->u.list.item[i + 1]) : NULL}};
    st_err err = ST_OK;
    for (size_t k = 0; k < sizeof f / sizeof f[0]; k++) {
        int optional = k >= 9;
        if (err || (!f[k].v && optional)) {
            jv_unref(f[k].v);
            continue;
        }
        st_jv *key = jv_str_lit(f[k].k, strlen(f[k].k));
        if (!key || !f[k].v) {
            jv_unref(key), jv_unref(f[k].v);
            err = jx_fail(cx, ST_ERR_MEM, "out of memory");
            continue;
        }
        err = jv_dict_set(cx, d, key, f[k].v);
    }
    if (err) {
        jv_unref(d);
        return err;
    }
    *out = d;
    return ST_OK;
}

/* The index of item among the values the caller tracks, or -1. */
static int tracked(const jx_ctx *cx, const st_jv *item)
{
    for (int i = 0; cx->rep && i < cx->rep->n_track; i++)
        if (cx->rep->track[i] == item) return i;
    return -1;
}

/* Each iteration is a fresh scope: what one iteration sets, the next does not
 * see. An iteration over a tracked value that writes to the output is reported. */
static st_err run_loop(jx_ctx *cx, const jx_node *s, st_jv *items)
{
    for (size_t i = 0; i < items->u.list.n; i++) {
        st_jv *loop = NULL;
        ST_TRY(jx_charge(cx, 0));
        pop_scope(cx);
        ST_TRY(push_scope(cx));
        ST_TRY(bind_targets(cx, s, items->u.list.item[i]));
        ST_TRY(loop_var(cx, items, i, &loop));
        ST_TRY(assign(cx, "loop", 4, loop));
        int track = tracked(cx, items->u.list.item[i]);
        size_t from = cx->out->n;
        ST_TRY(jx_exec(cx, s->kid[2]));
        if (track >= 0 && cx->out == cx->root && cx->out->n > from)
            cx->rep->iter[track] = (st_jinja_span){from, cx->out->n};
        int ctl = cx->loop_ctl;
        cx->loop_ctl = 0;
        if (ctl == JX_BREAK) break;
    }
    if (!items->u.list.n && s->kid[3]) ST_TRY(jx_exec(cx, s->kid[3]));
    return ST_OK;
}

static st_err exec_for(jx_ctx *cx, const jx_node *s)
{
    st_jv *v, *all = NULL, *items = NULL;
    ST_TRY(jx_eval(cx, s->kid[0], &v));
    cx->line = s->line;
    st_err err = iterable(cx, v, &all);
    jv_unref(v);
    if (err) return err;
    if ((err = push_scope(cx))) {
        jv_unref(all);
        return err;
    }
    err = filtered(cx, s, all, &items);
    if (!err) err = run_loop(cx, s, items);
    pop_scope(cx);
    jv_unref(all), jv_unref(items);
    return err;
}

static st_err exec_set(jx_ctx *cx, const jx_node *s)
{
    st_jv *v;
    if (s->kind == JN_SET_BLOCK) { /* the body's output, captured */
        jx_buf buf = {0}, *saved = cx->out;
        cx->out = &buf;
        st_err err = jx_exec(cx, s->kid[0]);
        cx->out = saved;
        if (!err) err = jx_buf_value(cx, &buf, &v);
        if (err) {
            st_jinja_text_free(&buf);
            return err;
        }
    } else {
        ST_TRY(jx_eval(cx, s->kid[0], &v));
    }
    cx->line = s->line;
    if (!s->attr) return assign(cx, s->s, s->n, v);
    st_jv *ns = lookup(cx, s->s, s->n), *key;
    if (!ns || ns->type != JV_NS) {
        jv_unref(v);
        return jx_fail(cx, ST_ERR_FORMAT, "'%s' is not a namespace: cannot set '%s.%s'", s->s, s->s, s->attr);
    }
    if (!(key = jv_str_lit(s->attr, strlen(s->attr)))) {
        jv_unref(v);
        return jx_fail(cx, ST_ERR_MEM, "out of memory");
    }
    return jv_dict_set(cx, ns, key, v);
}

/* ---- macros ----------------------------------------------------------------------------------- */

/* Bind a macro's parameters in its new scope, as Jinja2's Macro.__call__
 * does: positional arguments in order, then keywords by name; a parameter
 * left out takes its default (evaluated now, seeing the parameters before
 * it) or is undefined. */
static st_err bind_params(jx_ctx *cx, const jx_node *def, const char *name, st_jv **args, const char **kw,
                          int n_args)
{
    st_jv *given[64] = {NULL};
    int n_par = def->n_names, n_pos = 0;
    for (int i = 0; i < n_args; i++) {
        if (kw[i]) continue;
        if (n_pos == n_par)
            return jx_fail(cx, ST_ERR_FORMAT, "macro '%s' takes not more than %d argument(s)", name, n_par);
        given[n_pos++] = args[i];
    }
    for (int i = 0; i < n_args; i++) {
        int k = 0;
        if (!kw[i]) continue;
        while (k < n_par && strcmp(def->names[k], kw[i])) k++;
        if (k == n_par || given[k])
            return jx_fail(cx, ST_ERR_FORMAT, "macro '%s' takes no keyword argument '%s'", name, kw[i]);
        given[k] = args[i];
    }
    for (int k = 0; k < n_par; k++) {
        st_jv *v = NULL;
        size_t len = strlen(def->names[k]);
        if (given[k]) v = jv_ref(given[k]);
        else if (def->kid[k]) ST_TRY(jx_eval(cx, def->kid[k], &v));
        else NEW(v = jv_undef(def->names[k], len));
        ST_TRY(assign(cx, def->names[k], len, v));
    }
    return ST_OK;
}

st_err jx_call_macro(jx_ctx *cx, const st_jv *macro, st_jv **args, const char **kw, int n_args, st_jv *caller,
                     st_jv **out)
{
    const jx_node *def = macro->u.macro.def;
    const char *name = def->kind == JN_MACRO ? def->s : "caller";
    if (cx->calls >= JX_MAX_CALLS)
        return jx_fail(cx, ST_ERR_FORMAT, "macros call each other more than %d deep (endless recursion?)",
                       JX_MAX_CALLS);
    if (caller && def->kind == JN_MACRO && !def->op) /* Jinja2 refuses a caller the body never uses */
        return jx_fail(cx, ST_ERR_FORMAT, "macro '%s' does not use caller, but a call block gives it one", name);
    int frame = cx->frame, link = cx->link, base = cx->n_scopes;
    jx_buf buf = {0}, *saved = cx->out;
    ST_TRY(push_scope(cx));
    cx->calls++;
    cx->frame = base;
    cx->link = macro->u.macro.link < base ? macro->u.macro.link : base; /* a macro kept past its scope */
    st_jv *c = caller ? jv_ref(caller) : jv_undef("caller", 6);
    st_err err = c ? assign(cx, "caller", 6, c) : jx_fail(cx, ST_ERR_MEM, "out of memory");
    if (!err) err = bind_params(cx, def, name, args, kw, n_args);
    if (!err) {
        cx->out = &buf;
        err = jx_exec(cx, def->kid[def->n_names]);
        cx->out = saved;
    }
    pop_scope(cx);
    cx->calls--;
    cx->frame = frame;
    cx->link = link;
    if (!err) return jx_buf_value(cx, &buf, out);
    st_jinja_text_free(&buf);
    return err;
}

/* {% call(params) m(args) %}body{% endcall %}: m(args, caller=body), printed. */
static st_err exec_call_block(jx_ctx *cx, const jx_node *s)
{
    const jx_node *call = s->kid[s->n_names + 1];
    st_jv *callee, *args[MAX_ARGS], *result = NULL;
    int n;
    ST_TRY(jx_eval(cx, call->kid[0], &callee));
    st_err err = eval_args(cx, call, 1, args, &n);
    if (err) {
        jv_unref(callee);
        return err;
    }
    cx->line = s->line;
    st_jv *caller = jv_macro(s, cx->n_scopes);
    if (!caller) err = jx_fail(cx, ST_ERR_MEM, "out of memory");
    else if (callee->type == JV_UNDEF) err = jx_undefined_error(cx, callee, "called by a call block");
    else if (callee->type != JV_MACRO) err = jx_fail(cx, ST_ERR_FORMAT, "a call block needs a macro, not %s", jv_type_name(callee));
    else err = jx_call_macro(cx, callee, args, call->kw + 1, n, caller, &result);
    free_args(args, n);
    jv_unref(caller);
    jv_unref(callee);
    if (!err) err = jv_print(cx, cx->out, result);
    jv_unref(result);
    return err;
}

/* {% generation %}: its body, and where that went in the output. */
static st_err exec_generation(jx_ctx *cx, const jx_node *s)
{
    size_t from = cx->out->n;
    ST_TRY(jx_exec(cx, s->kid[0]));
    st_jinja_report *r = cx->rep;
    if (!r || cx->out != cx->root || cx->out->n == from) return ST_OK;
    if (r->n_gen == r->cap_gen) {
        size_t cap = r->cap_gen ? 2 * r->cap_gen : 16;
        st_jinja_span *g = realloc(r->gen, cap * sizeof *g);
        if (!g) return jx_fail(cx, ST_ERR_MEM, "out of memory");
        r->gen = g;
        r->cap_gen = cap;
    }
    r->gen[r->n_gen++] = (st_jinja_span){from, cx->out->n};
    return ST_OK;
}

static st_err exec_inner(jx_ctx *cx, const jx_node *s)
{
    switch (s->kind) {
    case JN_TEXT: return jx_put(cx, cx->out, s->s, s->n, 0);
    case JN_OUTPUT: {
        st_jv *v;
        ST_TRY(jx_eval(cx, s->kid[0], &v));
        st_err err = jv_print(cx, cx->out, v);
        jv_unref(v);
        return err;
    }
    case JN_BODY:
        for (int k = 0; k < s->n_kid && !cx->loop_ctl; k++) ST_TRY(jx_exec(cx, s->kid[k]));
        return ST_OK;
    case JN_IF:
        for (int k = 0; k + 1 < s->n_kid; k += 2) {
            st_jv *c;
            ST_TRY(jx_eval(cx, s->kid[k], &c));
            int yes = jv_truthy(c);
            jv_unref(c);
            if (yes) return jx_exec(cx, s->kid[k + 1]);
        }
        return s->n_kid % 2 ? jx_exec(cx, s->kid[s->n_kid - 1]) : ST_OK;
    case JN_FOR: return exec_for(cx, s);
    case JN_SET:
    case JN_SET_BLOCK: return exec_set(cx, s);
    case JN_MACRO: {
        st_jv *m = jv_macro(s, cx->n_scopes);
        NEW(m);
        return assign(cx, s->s, s->n, m);
    }
    case JN_CALL_BLOCK: return exec_call_block(cx, s);
    case JN_GENERATION: return exec_generation(cx, s);
    case JN_BREAK: cx->loop_ctl = JX_BREAK; return ST_OK;
    case JN_CONTINUE: cx->loop_ctl = JX_CONTINUE; return ST_OK;
    default: return jx_fail(cx, ST_ERR_INTERNAL, "node %d is not a statement", s->kind);
    }
}

st_err jx_exec(jx_ctx *cx, const jx_node *s)
{
    int line = cx->line;
    cx->line = s->line;
    if (++cx->depth > 2 * JX_MAX_ADEPTH) return jx_fail(cx, ST_ERR_FORMAT, "the template recurses too deeply");
    ST_TRY(jx_charge(cx, 0));
    ST_TRY(exec_inner(cx, s));
    cx->depth--;
    cx->line = line;
    return ST_OK;
}

void st_jinja_report_free(st_jinja_report *r)
{
    free(r->gen);
    r->gen = NULL;
    r->n_gen = r->cap_gen = 0;
}

st_err st_jinja_render(const st_jinja *t, const st_jinja_var *vars, int n_vars, st_jinja_text *out)
{
    return st_jinja_render_report(t, vars, n_vars, out, NULL);
}

st_err st_jinja_render_report(const st_jinja *t, const st_jinja_var *vars, int n_vars, st_jinja_text *out,
                              st_jinja_report *rep)
{
    jx_scope scopes[JX_MAX_SCOPES];
    jx_ctx cx = {.out = out, .root = out, .rep = rep, .scopes = scopes, .steps = JX_MAX_STEPS, .bytes = JX_MAX_BYTES};
    if (rep) {
        rep->n_gen = 0;
        for (int i = 0; i < rep->n_track; i++) rep->iter[i] = (st_jinja_span){0, 0};
    }
    out->n = 0;
    if (out->s) out->s[0] = '\0';
    st_err err = push_scope(&cx);
    for (int i = 0; i < n_vars && !err; i++) err = assign(&cx, vars[i].name, strlen(vars[i].name), jv_ref(vars[i].value));
    if (!err) err = jx_exec(&cx, t->root);
    while (cx.n_scopes) pop_scope(&cx);
    if (err) {
        out->n = 0;
        if (out->s) out->s[0] = '\0';
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    return err;
}
