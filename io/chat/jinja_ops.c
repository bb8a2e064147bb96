/* jinja_ops.c: arithmetic and comparison on Jinja values, with Python's
 * semantics (1 == 1.0 == True, // and % floor, str + str, list + list,
 * str * int, `in` on strings, lists and dicts); used by the evaluator and by
 * the builtin tests and filters. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/chat/jinja_internal.h"

#define NEW(v) do { if (!(v)) return jx_fail(cx, ST_ERR_MEM, "out of memory"); } while (0)

st_err jx_undefined_error(jx_ctx *cx, const st_jv *v, const char *doing)
{
    if (v->u.undef) return jx_fail(cx, ST_ERR_FORMAT, "'%s' is undefined (%s)", v->u.undef, doing);
    return jx_fail(cx, ST_ERR_FORMAT, "a value is undefined (%s)", doing);
}

static int int_like(const st_jv *v) { return v->type == JV_INT || v->type == JV_BOOL; }

/* Python's floor division and modulo on int64 (b != 0). */
static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

static int64_t floor_mod(int64_t a, int64_t b)
{
    int64_t m = a % b;
    if (m != 0 && ((m < 0) != (b < 0))) m += b;
    return m;
}

/* ---- arithmetic --------------------------------------------------------------------- */

static st_err concat_str(jx_ctx *cx, const st_jv *a, const st_jv *b, st_jv **out)
{
    jx_buf buf = {0};
    st_err e = jx_put_str(cx, &buf, a, 0, a->u.str.n);
    if (!e) e = jx_put_str(cx, &buf, b, 0, b->u.str.n);
    if (e) {
        st_jinja_text_free(&buf);
        return e;
    }
    return jx_buf_value(cx, &buf, out);
}

static st_err list_concat(jx_ctx *cx, const st_jv *a, const st_jv *b, int64_t times, st_jv **out)
{
    st_jv *l = jv_new(JV_LIST);
    NEW(l);
    l->u.list.tuple = a->u.list.tuple;
    st_err e = ST_OK;
    for (int64_t t = 0; t < times && !e; t++) {
        e = jx_charge(cx, 0); /* [] * 10**12 still costs steps */
        for (int half = 0; half < 2 && !e; half++) {
            const st_jv *src = half ? b : a;
            for (size_t i = 0; src && i < src->u.list.n && !e; i++) e = jv_list_push(cx, l, jv_ref(src->u.list.item[i]));
        }
    }
    if (e) {
        jv_unref(l);
        return e;
    }
    *out = l;
    return ST_OK;
}

static st_err repeat_str(jx_ctx *cx, const st_jv *s, int64_t times, st_jv **out)
{
    jx_buf buf = {0};
    for (int64_t t = 0; t < times; t++) {
        st_err e = jx_put_str(cx, &buf, s, 0, s->u.str.n);
        if (!e && !s->u.str.n) e = jx_charge(cx, 0); /* "" * 10**9 still costs steps */
        if (e) {
            st_jinja_text_free(&buf);
            return e;
        }
    }
    return jx_buf_value(cx, &buf, out);
}

static st_err int_pow(jx_ctx *cx, int64_t a, int64_t b, st_jv **out)
{
    int64_t r = 1;
    for (int64_t k = 0; k < b; k++) {
        if (__builtin_mul_overflow(r, a, &r)) return jx_fail(cx, ST_ERR_FORMAT, "integer overflow in **");
        if (r == 0 || r == 1) break;
        if (r == -1) { r = (b - k - 1) % 2 ? 1 : -1; break; }
    }
    *out = jv_int(r);
    NEW(*out);
    return ST_OK;
}

static const char *op_name(int op)
{
    return op == JO_FLOORDIV ? "//" : op == JO_POW ? "**" : op == '+' ? "+" : op == '-' ? "-" : op == '*' ? "*" :
           op == '/' ? "/" : "%";
}

st_err jx_arith(jx_ctx *cx, int op, const st_jv *a, const st_jv *b, st_jv **out)
{
    if (a->type == JV_UNDEF) return jx_undefined_error(cx, a, "used in arithmetic");
    if (b->type == JV_UNDEF) return jx_undefined_error(cx, b, "used in arithmetic");
    if (jv_is_number(a) && jv_is_number(b)) {
        int ints = int_like(a) && int_like(b);
        int64_t x = a->u.i, y = b->u.i, r = 0;
        double f = 0, p = jv_num(a), q = jv_num(b);
        if ((op == '/' || op == JO_FLOORDIV || op == '%') && (ints ? y == 0 : q == 0.0))
            return jx_fail(cx, ST_ERR_FORMAT, "division by zero");
        int overflow = 0;
        switch (op) {
        case '+': ints ? (void)(overflow = __builtin_add_overflow(x, y, &r)) : (void)(f = p + q); break;
        case '-': ints ? (void)(overflow = __builtin_sub_overflow(x, y, &r)) : (void)(f = p - q); break;
        case '*': ints ? (void)(overflow = __builtin_mul_overflow(x, y, &r)) : (void)(f = p * q); break;
        case '/': *out = jv_float(p / q); NEW(*out); return ST_OK;
        case JO_FLOORDIV:
            if (ints && x == INT64_MIN && y == -1) overflow = 1;
            else ints ? (void)(r = floor_div(x, y)) : (void)(f = floor(p / q));
            break;
        case '%':
            if (ints) r = y == -1 ? 0 : floor_mod(x, y);
            else f = fmod(p, q), f = (f != 0 && ((f < 0) != (q < 0))) ? f + q : f;
            break;
        default: /* ** */
            if (ints && y >= 0) return int_pow(cx, x, y, out);
            f = pow(p, q);
            ints = 0;
            break;
        }
        if (overflow) return jx_fail(cx, ST_ERR_FORMAT, "integer overflow in %s", op_name(op));
        *out = ints ? jv_int(r) : jv_float(f);
        NEW(*out);
        return ST_OK;
    }
    if (op == '+' && a->type == JV_STR && b->type == JV_STR) return concat_str(cx, a, b, out);
    if (op == '+' && a->type == JV_LIST && b->type == JV_LIST && a->u.list.tuple == b->u.list.tuple)
        return list_concat(cx, a, b, 1, out);
    if (op == '*' && (a->type == JV_STR || a->type == JV_LIST) && int_like(b))
        return a->type == JV_STR ? repeat_str(cx, a, b->u.i, out) : list_concat(cx, a, NULL, b->u.i, out);
    if (op == '*' && (b->type == JV_STR || b->type == JV_LIST) && int_like(a))
        return b->type == JV_STR ? repeat_str(cx, b, a->u.i, out) : list_concat(cx, b, NULL, a->u.i, out);
    if (op == '%' && a->type == JV_STR)
        return jx_fail(cx, ST_ERR_FORMAT, "string formatting with %% is not supported");
    return jx_fail(cx, ST_ERR_FORMAT, "cannot apply %s to %s and %s", op_name(op), jv_type_name(a), jv_type_name(b));
}

static st_err contains(jx_ctx *cx, const st_jv *item, const st_jv *c, int *out)
{
    *out = 0;
    switch (c->type) {
    case JV_STR:
        if (item->type != JV_STR) return jx_fail(cx, ST_ERR_FORMAT, "'in <string>' needs a string, not %s", jv_type_name(item));
        jx_work(cx, c->u.str.n);
        *out = !item->u.str.n || memmem(c->u.str.s, c->u.str.n, item->u.str.s, item->u.str.n) != NULL;
        return ST_OK;
    case JV_LIST:
        for (size_t i = 0; i < c->u.list.n && !*out; i++) *out = jv_equal(cx, item, c->u.list.item[i]);
        return ST_OK;
    case JV_DICT:
    case JV_NS: *out = jv_dict_find(cx, c, item) != NULL; return ST_OK;
    case JV_UNDEF: return ST_OK; /* iterating Undefined gives nothing */
    default: return jx_fail(cx, ST_ERR_FORMAT, "'in' needs a string, list or dict, not %s", jv_type_name(c));
    }
}

/* -1, 0, 1 as Python orders a and b: numbers, strings, lists item by item. */
static st_err order3(jx_ctx *cx, const st_jv *a, const st_jv *b, int *out)
{
    int c = 0;
    if (jv_is_number(a) && jv_is_number(b)) {
        if (int_like(a) && int_like(b)) c = (a->u.i > b->u.i) - (a->u.i < b->u.i);
        else c = (jv_num(a) > jv_num(b)) - (jv_num(a) < jv_num(b));
    } else if (a->type == JV_STR && b->type == JV_STR) {
        size_t n = a->u.str.n < b->u.str.n ? a->u.str.n : b->u.str.n;
        jx_work(cx, n);
        c = n ? memcmp(a->u.str.s, b->u.str.s, n) : 0;
        c = c ? (c > 0) - (c < 0) : (a->u.str.n > b->u.str.n) - (a->u.str.n < b->u.str.n);
    } else if (a->type == JV_LIST && b->type == JV_LIST && a->u.list.tuple == b->u.list.tuple) {
        size_t i = 0;
        while (i < a->u.list.n && i < b->u.list.n && jv_equal(cx, a->u.list.item[i], b->u.list.item[i])) i++;
        if (i < a->u.list.n && i < b->u.list.n) return order3(cx, a->u.list.item[i], b->u.list.item[i], out);
        c = (a->u.list.n > b->u.list.n) - (a->u.list.n < b->u.list.n);
    } else {
        if (a->type == JV_UNDEF) return jx_undefined_error(cx, a, "compared with <, >");
        if (b->type == JV_UNDEF) return jx_undefined_error(cx, b, "compared with <, >");
        return jx_fail(cx, ST_ERR_FORMAT, "cannot order %s and %s", jv_type_name(a), jv_type_name(b));
    }
    *out = c;
    return ST_OK;
}

static st_err order(jx_ctx *cx, int op, const st_jv *a, const st_jv *b, int *out)
{
    int c = 0;
    ST_TRY(order3(cx, a, b, &c));
    *out = op == JC_LT ? c < 0 : op == JC_LE ? c <= 0 : op == JC_GT ? c > 0 : c >= 0;
    return ST_OK;
}

st_err jx_compare(jx_ctx *cx, int op, const st_jv *a, const st_jv *b, int *out)
{
    switch (op) {
    case JC_EQ: *out = jv_equal(cx, a, b); return ST_OK;
    case JC_NE: *out = !jv_equal(cx, a, b); return ST_OK;
    case JC_IN: return contains(cx, a, b, out);
    case JC_NOT_IN: ST_TRY(contains(cx, a, b, out)); *out = !*out; return ST_OK;
    default: return order(cx, op, a, b, out);
    }
}

/* a op1 b op2 c ... is (a op1 b) and (b op2 c) ..., evaluated left to right. */
