/* jinja_parse.c: tokens -> syntax tree, with Jinja's grammar and operator
 * precedence (lowest first):
 *   x if c else y;  or;  and;  not;  == != < <= > >= in, not in (chained);
 *   + -;  ~;  * / // %;  **;  unary - +;  then postfix .attr [i] [a:b:c] (args),
 *   and the filter/test chain | f(args), is [not] t(args).
 * The tree's depth is bounded (JX_MAX_ADEPTH): a long "a + b + c ..." chain
 * is as deep as nested brackets, and evaluation recurses on the tree. */
#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "io/chat/jinja_internal.h"
#include "io/jsonl.h"

/* ---- parser state and helpers ------------------------------------------------------ */

typedef struct {
    st_jinja *t;
    const jx_tok *tok;
    size_t i;
    int depth;   /* recursion */
    int loops;   /* for loops around the statement being parsed (in the same macro) */
    int macros;  /* macro and call bodies around it */
    int caller;  /* the innermost macro body so far names caller */
} parser;

#define NO_MEM() ST_FAIL(ST_ERR_MEM, "out of memory parsing the chat template")

static const jx_tok *cur(const parser *p) { return &p->tok[p->i]; }
static const jx_tok *peek(const parser *p) { return p->tok[p->i].kind == JT_EOF ? &p->tok[p->i] : &p->tok[p->i + 1]; }
static int is_op(const jx_tok *t, int op) { return t->kind == JT_OP && t->op == op; }
static int is_name(const jx_tok *t, const char *s)
{
    return t->kind == JT_NAME && t->n == strlen(s) && !memcmp(t->s, s, t->n);
}

/* The token as an error message shows it. */
static const char *describe(const jx_tok *t, char *buf, size_t cap)
{
    switch (t->kind) {
    case JT_NAME:
    case JT_OP:
    case JT_INT:
    case JT_FLOAT: snprintf(buf, cap, "'%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s); break;
    case JT_STRING: snprintf(buf, cap, "a string"); break;
    case JT_VAR_END: snprintf(buf, cap, "'}}'"); break;
    case JT_BLOCK_END: snprintf(buf, cap, "'%%}'"); break;
    case JT_EOF: snprintf(buf, cap, "the end of the template"); break;
    default: snprintf(buf, cap, "template text"); break;
    }
    return buf;
}

static st_err unexpected(const parser *p, const char *wanted)
{
    char buf[64];
    return jx_fail_at(cur(p)->line, ST_ERR_FORMAT, "syntax error: expected %s, found %s", wanted,
                      describe(cur(p), buf, sizeof buf));
}

static st_err expect_op(parser *p, int op, const char *wanted)
{
    if (!is_op(cur(p), op)) return unexpected(p, wanted);
    p->i++;
    return ST_OK;
}

static st_err enter(parser *p)
{
    if (++p->depth > JX_MAX_ADEPTH)
        return jx_fail_at(cur(p)->line, ST_ERR_FORMAT, "the template nests more than %d levels deep", JX_MAX_ADEPTH);
    return ST_OK;
}

static st_err node(parser *p, int kind, int line, int n_kid, jx_node **out)
{
    jx_node *nd = jx_alloc(&p->t->arena, sizeof *nd);
    if (!nd || (n_kid && !(nd->kid = jx_alloc(&p->t->arena, (size_t)n_kid * sizeof *nd->kid)))) NO_MEM();
    nd->kind = kind;
    nd->line = line;
    nd->n_kid = n_kid;
    *out = nd;
    return ST_OK;
}

/* Depth from the kids, checked: evaluation recurses this deep. */
static st_err seal(jx_node *nd)
{
    int d = 0;
    for (int k = 0; k < nd->n_kid; k++)
        if (nd->kid[k] && nd->kid[k]->depth > d) d = nd->kid[k]->depth;
    nd->depth = d + 1;
    if (nd->depth > JX_MAX_ADEPTH)
        return jx_fail_at(nd->line, ST_ERR_FORMAT, "the template nests more than %d levels deep (a very long "
                          "chain of operators?)", JX_MAX_ADEPTH);
    return ST_OK;
}

static st_err node2(parser *p, int kind, int line, jx_node *a, jx_node *b, jx_node **out)
{
    ST_TRY(node(p, kind, line, b ? 2 : 1, out));
    (*out)->kid[0] = a;
    if (b) (*out)->kid[1] = b;
    return seal(*out);
}

/* A growable list of kids (and keywords), in the arena. */
typedef struct {
    jx_node **kid;
    const char **kw;
    int n, cap;
} kids;

static st_err push(parser *p, kids *k, jx_node *nd, const char *kw)
{
    if (k->n == k->cap) {
        int cap = k->cap ? k->cap * 2 : 4;
        jx_node **a = jx_alloc(&p->t->arena, (size_t)cap * sizeof *a);
        const char **w = jx_alloc(&p->t->arena, (size_t)cap * sizeof *w);
        if (!a || !w) NO_MEM();
        if (k->n) memcpy(a, k->kid, (size_t)k->n * sizeof *a), memcpy(w, k->kw, (size_t)k->n * sizeof *w);
        k->kid = a, k->kw = w, k->cap = cap;
    }
    k->kid[k->n] = nd;
    k->kw[k->n++] = kw;
    return ST_OK;
}

static st_err from_kids(parser *p, int kind, int line, const kids *k, jx_node **out)
{
    ST_TRY(node(p, kind, line, 0, out));
    (*out)->kid = k->kid;
    (*out)->kw = k->kw;
    (*out)->n_kid = k->n;
    return seal(*out);
}

static st_err literal(parser *p, st_jv *v, int line, jx_node **out)
{
    st_jinja *t = p->t;
    if (!v) NO_MEM();
    if (t->n_lits == t->cap_lits) {
        size_t cap = t->cap_lits ? t->cap_lits * 2 : 16;
        st_jv **l = realloc(t->lits, cap * sizeof *l);
        if (!l) {
            jv_unref(v);
            NO_MEM();
        }
        t->lits = l;
        t->cap_lits = cap;
    }
    v->refs = -1; /* the template's own: renders share it without counting */
    t->lits[t->n_lits++] = v;
    ST_TRY(node(p, JN_LIT, line, 0, out));
    (*out)->lit = v;
    return seal(*out);
}

/* A NUL-terminated copy of a name token, in the arena. */
static st_err name_of(parser *p, const jx_tok *t, const char **out)
{
    char *s = jx_alloc(&p->t->arena, t->n + 1);
    if (!s) NO_MEM();
    memcpy(s, t->s, t->n);
    *out = s;
    return ST_OK;
}

/* ---- expressions ------------------------------------------------------------------- */

static st_err parse_expr(parser *p, int with_cond, jx_node **out);
static st_err parse_unary(parser *p, int with_filter, jx_node **out);

/* (args) after the opening parenthesis: positional and name=value. */
static st_err parse_args(parser *p, kids *k)
{
    while (!is_op(cur(p), ')')) {
        const jx_tok *t = cur(p);
        if (is_op(t, '*') || (is_op(t, JO_POW)))
            return jx_fail_at(t->line, ST_ERR_FORMAT, "*args and **kwargs in calls are not supported");
        const char *kw = NULL;
        if (t->kind == JT_NAME && is_op(peek(p), '=')) {
            ST_TRY(name_of(p, t, &kw));
            p->i += 2;
        }
        jx_node *a;
        ST_TRY(parse_expr(p, 1, &a));
        ST_TRY(push(p, k, a, kw));
        if (!is_op(cur(p), ',')) break;
        p->i++;
    }
    return expect_op(p, ')', "',' or ')'");
}

/* [ ... ] after the object: an index or a slice a:b:c. */
static st_err parse_subscript(parser *p, jx_node *obj, int line, jx_node **out)
{
    jx_node *part[3] = {NULL, NULL, NULL};
    int colons = 0;
    for (;;) {
        if (is_op(cur(p), ':')) {
            if (++colons > 2) return unexpected(p, "']'");
            p->i++;
            continue;
        }
        if (is_op(cur(p), ']')) break;
        if (part[colons]) return unexpected(p, "':' or ']'");
        ST_TRY(parse_expr(p, 1, &part[colons]));
    }
    p->i++;
    if (!colons) {
        if (!part[0]) return jx_fail_at(line, ST_ERR_FORMAT, "syntax error: empty []");
        return node2(p, JN_INDEX, line, obj, part[0], out);
    }
    ST_TRY(node(p, JN_SLICE, line, 4, out));
    (*out)->kid[0] = obj;
    for (int k = 0; k < 3; k++) (*out)->kid[k + 1] = part[k];
    return seal(*out);
}

static st_err parse_postfix(parser *p, jx_node **e)
{
    for (;;) {
        const jx_tok *t = cur(p);
        int line = t->line;
        if (is_op(t, '.')) {
            p->i++;
            const jx_tok *a = cur(p);
            if (a->kind == JT_INT) { /* x.0 is x[0] */
                jx_node *idx;
                ST_TRY(literal(p, jv_int(a->i), line, &idx));
                p->i++;
                ST_TRY(node2(p, JN_INDEX, line, *e, idx, e));
                continue;
            }
            if (a->kind != JT_NAME) return unexpected(p, "an attribute name after '.'");
            jx_node *nd;
            ST_TRY(node2(p, JN_ATTR, line, *e, NULL, &nd));
            ST_TRY(name_of(p, a, &nd->s));
            nd->n = a->n;
            p->i++;
            *e = nd;
        } else if (is_op(t, '[')) {
            p->i++;
            ST_TRY(parse_subscript(p, *e, line, e));
        } else if (is_op(t, '(')) {
            p->i++;
            kids k = {0};
            ST_TRY(push(p, &k, *e, NULL));
            ST_TRY(parse_args(p, &k));
            ST_TRY(from_kids(p, JN_CALL, line, &k, e));
        } else {
            return ST_OK;
        }
    }
}

static st_err parse_filter(parser *p, jx_node **e)
{
    const jx_tok *t = cur(p);
    int line = t->line;
    if (t->kind != JT_NAME) return unexpected(p, "a filter name after '|'");
    int fn = jx_filter_find(t->s, t->n);
    if (fn < 0)
        return jx_fail_at(line, ST_ERR_FORMAT, "the Jinja filter '%.*s' is not supported", (int)(t->n > 40 ? 40 : t->n),
                          t->s);
    kids k = {0};
    ST_TRY(push(p, &k, *e, NULL));
    const char *name;
    ST_TRY(name_of(p, t, &name));
    p->i++;
    if (is_op(cur(p), '(')) {
        p->i++;
        ST_TRY(parse_args(p, &k));
    }
    ST_TRY(from_kids(p, JN_FILTER, line, &k, e));
    (*e)->s = name;
    (*e)->n = strlen(name);
    (*e)->fn = fn;
    return ST_OK;
}

static st_err parse_test(parser *p, jx_node **e)
{
    int negate = 0, line = cur(p)->line;
    if (is_name(cur(p), "not")) negate = 1, p->i++;
    const jx_tok *t = cur(p);
    if (t->kind != JT_NAME) return unexpected(p, "a test name after 'is'");
    int fn = jx_test_find(t->s, t->n);
    if (fn < 0)
        return jx_fail_at(line, ST_ERR_FORMAT, "the Jinja test '%.*s' is not supported", (int)(t->n > 40 ? 40 : t->n),
                          t->s);
    const char *name;
    ST_TRY(name_of(p, t, &name));
    p->i++;
    kids k = {0};
    ST_TRY(push(p, &k, *e, NULL));
    const jx_tok *a = cur(p);
    if (is_op(a, '(')) {
        p->i++;
        ST_TRY(parse_args(p, &k));
    } else if ((a->kind == JT_NAME || a->kind == JT_STRING || a->kind == JT_INT || a->kind == JT_FLOAT ||
                is_op(a, '[') || is_op(a, '{')) &&
               !is_name(a, "else") && !is_name(a, "or") && !is_name(a, "and")) {
        if (is_name(a, "is")) return jx_fail_at(a->line, ST_ERR_FORMAT, "tests cannot be chained with 'is'");
        jx_node *arg; /* "x is divisibleby 3": one argument without parentheses */
        ST_TRY(parse_unary(p, 0, &arg));
        ST_TRY(push(p, &k, arg, NULL));
    }
    ST_TRY(from_kids(p, JN_TEST, line, &k, e));
    (*e)->s = name;
    (*e)->n = strlen(name);
    (*e)->fn = fn;
    (*e)->op = negate;
    return ST_OK;
}

/* [a, b], {k: v}, (a, b): list items up to close; dict when pairs. */
static st_err parse_items(parser *p, int close, int pairs, int line, jx_node **out, int *n_items)
{
    kids k = {0};
    while (!is_op(cur(p), close)) {
        jx_node *a;
        ST_TRY(parse_expr(p, 1, &a));
        ST_TRY(push(p, &k, a, NULL));
        if (pairs) {
            ST_TRY(expect_op(p, ':', "':' in a dict"));
            ST_TRY(parse_expr(p, 1, &a));
            ST_TRY(push(p, &k, a, NULL));
        }
        if (!is_op(cur(p), ',')) break;
        p->i++;
    }
    ST_TRY(expect_op(p, close, close == ']' ? "',' or ']'" : close == '}' ? "',' or '}'" : "',' or ')'"));
    *n_items = k.n;
    return from_kids(p, pairs ? JN_DICT : JN_LIST, line, &k, out);
}

static st_err parse_primary(parser *p, jx_node **out)
{
    const jx_tok *t = cur(p);
    int line = t->line;
    if (t->kind == JT_NAME) {
        p->i++;
        if (is_name(t, "true") || is_name(t, "True")) return literal(p, jv_bool(1), line, out);
        if (is_name(t, "false") || is_name(t, "False")) return literal(p, jv_bool(0), line, out);
        if (is_name(t, "none") || is_name(t, "None")) return literal(p, jv_none(), line, out);
        if (p->macros && (is_name(t, "varargs") || is_name(t, "kwargs")))
            return jx_fail_at(line, ST_ERR_FORMAT, "macros taking %.*s are not supported", (int)t->n, t->s);
        if (is_name(t, "caller")) p->caller = 1;
        ST_TRY(node(p, JN_NAME, line, 0, out));
        ST_TRY(name_of(p, t, &(*out)->s));
        (*out)->n = t->n;
        return seal(*out);
    }
    if (t->kind == JT_STRING) { /* adjacent literals join: 'a' 'b' */
        size_t n = 0, j = p->i;
        for (; p->tok[j].kind == JT_STRING; j++) n += p->tok[j].n;
        char *s = malloc(n + 1);
        if (!s) NO_MEM();
        for (n = 0; p->tok[p->i].kind == JT_STRING; p->i++) {
            memcpy(s + n, p->tok[p->i].s, p->tok[p->i].n);
            n += p->tok[p->i].n;
        }
        s[n] = '\0';
        return literal(p, jv_str_take(s, NULL, n, 0), line, out);
    }
    if (t->kind == JT_INT) return p->i++, literal(p, jv_int(t->i), line, out);
    if (t->kind == JT_FLOAT) return p->i++, literal(p, jv_float(t->f), line, out);
    int n_items;
    if (is_op(t, '[')) return p->i++, parse_items(p, ']', 0, line, out, &n_items);
    if (is_op(t, '{')) return p->i++, parse_items(p, '}', 1, line, out, &n_items);
    if (is_op(t, '(')) { /* (a) is a; (a,) (a, b) () are tuples, here lists */
        p->i++;
        if (is_op(cur(p), ')')) {
            p->i++;
            ST_TRY(parse_items(p, ')', 0, line, out, &n_items));
            (*out)->op = 1;
            return ST_OK;
        }
        jx_node *a;
        ST_TRY(parse_expr(p, 1, &a));
        if (is_op(cur(p), ')')) {
            p->i++;
            *out = a;
            return ST_OK;
        }
        ST_TRY(expect_op(p, ',', "',' or ')'"));
        jx_node *rest;
        ST_TRY(parse_items(p, ')', 0, line, &rest, &n_items));
        kids k = {0}; /* a first, then the rest */
        ST_TRY(push(p, &k, a, NULL));
        for (int i = 0; i < rest->n_kid; i++) ST_TRY(push(p, &k, rest->kid[i], NULL));
        ST_TRY(from_kids(p, JN_LIST, line, &k, out));
        (*out)->op = 1;
        return ST_OK;
    }
    return unexpected(p, "an expression");
}

static st_err parse_unary(parser *p, int with_filter, jx_node **out)
{
    ST_TRY(enter(p));
    const jx_tok *t = cur(p);
    if (is_op(t, '-') || is_op(t, '+')) {
        p->i++;
        jx_node *a;
        ST_TRY(parse_unary(p, 0, &a));
        ST_TRY(node2(p, t->op == '-' ? JN_NEG : JN_POS, t->line, a, NULL, out));
    } else {
        ST_TRY(parse_primary(p, out));
    }
    ST_TRY(parse_postfix(p, out));
    while (with_filter) {
        if (is_op(cur(p), '|')) {
            p->i++;
            ST_TRY(parse_filter(p, out));
        } else if (is_name(cur(p), "is")) {
            p->i++;
            ST_TRY(parse_test(p, out));
        } else if (is_op(cur(p), '(')) {
            int line = cur(p)->line;
            p->i++;
            kids k = {0};
            ST_TRY(push(p, &k, *out, NULL));
            ST_TRY(parse_args(p, &k));
            ST_TRY(from_kids(p, JN_CALL, line, &k, out));
        } else {
            break;
        }
    }
    p->depth--;
    return ST_OK;
}

/* Left-associative binary levels, from tightest: ** ; * / // % ; ~ ; + - */
static int level_has(int level, const jx_tok *t)
{
    if (t->kind != JT_OP) return 0;
    switch (level) {
    case 0: return t->op == JO_POW;
    case 1: return t->op == '*' || t->op == '/' || t->op == JO_FLOORDIV || t->op == '%';
    case 2: return t->op == '~';
    default: return t->op == '+' || t->op == '-';
    }
}

static st_err parse_binary(parser *p, int level, jx_node **out)
{
    if (level < 0) return parse_unary(p, 1, out);
    ST_TRY(parse_binary(p, level - 1, out));
    while (level_has(level, cur(p))) {
        const jx_tok *t = cur(p);
        p->i++;
        jx_node *right;
        ST_TRY(parse_binary(p, level - 1, &right));
        ST_TRY(node2(p, JN_BINARY, t->line, *out, right, out));
        (*out)->op = t->op;
    }
    return ST_OK;
}

static int compare_op(const parser *p, int *op, int *len)
{
    const jx_tok *t = cur(p);
    *len = 1;
    if (t->kind == JT_OP) {
        switch (t->op) {
        case JO_EQ: *op = JC_EQ; return 1;
        case JO_NE: *op = JC_NE; return 1;
        case '<': *op = JC_LT; return 1;
        case JO_LE: *op = JC_LE; return 1;
        case '>': *op = JC_GT; return 1;
        case JO_GE: *op = JC_GE; return 1;
        default: return 0;
        }
    }
    if (is_name(t, "in")) return *op = JC_IN, 1;
    if (is_name(t, "not") && is_name(peek(p), "in")) return *op = JC_NOT_IN, *len = 2, 1;
    return 0;
}

static st_err parse_compare(parser *p, jx_node **out)
{
    int line = cur(p)->line, op, len;
    jx_node *first;
    ST_TRY(parse_binary(p, 3, &first));
    if (!compare_op(p, &op, &len)) {
        *out = first;
        return ST_OK;
    }
    kids k = {0};
    int ops[64], n_ops = 0;
    ST_TRY(push(p, &k, first, NULL));
    while (compare_op(p, &op, &len)) {
        if (n_ops == 64) return jx_fail_at(line, ST_ERR_FORMAT, "more than 64 chained comparisons");
        ops[n_ops++] = op;
        p->i += (size_t)len;
        jx_node *b;
        ST_TRY(parse_binary(p, 3, &b));
        ST_TRY(push(p, &k, b, NULL));
    }
    ST_TRY(from_kids(p, JN_COMPARE, line, &k, out));
    int *o = jx_alloc(&p->t->arena, (size_t)n_ops * sizeof *o);
    if (!o) NO_MEM();
    memcpy(o, ops, (size_t)n_ops * sizeof *o);
    (*out)->ops = o;
    return ST_OK;
}

static st_err parse_not(parser *p, jx_node **out)
{
    ST_TRY(enter(p));
    if (is_name(cur(p), "not")) {
        int line = cur(p)->line;
        p->i++;
        jx_node *a;
        ST_TRY(parse_not(p, &a));
        ST_TRY(node2(p, JN_NOT, line, a, NULL, out));
    } else {
        ST_TRY(parse_compare(p, out));
    }
    p->depth--;
    return ST_OK;
}

static st_err parse_logic(parser *p, int is_or, jx_node **out)
{
    const char *word = is_or ? "or" : "and";
    if (is_or) ST_TRY(parse_logic(p, 0, out));
    else ST_TRY(parse_not(p, out));
    while (is_name(cur(p), word)) {
        int line = cur(p)->line;
        p->i++;
        jx_node *b;
        if (is_or) ST_TRY(parse_logic(p, 0, &b));
        else ST_TRY(parse_not(p, &b));
        ST_TRY(node2(p, is_or ? JN_OR : JN_AND, line, *out, b, out));
    }
    return ST_OK;
}

static st_err parse_expr(parser *p, int with_cond, jx_node **out)
{
    ST_TRY(enter(p));
    ST_TRY(parse_logic(p, 1, out));
    while (with_cond && is_name(cur(p), "if")) {
        int line = cur(p)->line;
        p->i++;
        jx_node *cond, *other = NULL, *nd;
        ST_TRY(parse_logic(p, 1, &cond));
        if (is_name(cur(p), "else")) {
            p->i++;
            ST_TRY(parse_expr(p, 1, &other));
        }
        ST_TRY(node(p, JN_COND, line, 3, &nd));
        nd->kid[0] = *out, nd->kid[1] = cond, nd->kid[2] = other;
        ST_TRY(seal(nd));
        *out = nd;
    }
    p->depth--;
    return ST_OK;
}

/* ---- statements --------------------------------------------------------------------- */

static st_err parse_body(parser *p, const char *const *ends, const char *opener, int open_line, jx_node **out,
                         int *which);

static st_err expect_block_end(parser *p)
{
    if (cur(p)->kind != JT_BLOCK_END) return unexpected(p, "'%}'");
    p->i++;
    return ST_OK;
}

static st_err parse_for(parser *p, int line, jx_node **out)
{
    const char *names[8];
    int n_names = 0;
    for (;;) {
        const jx_tok *t = cur(p);
        if (t->kind != JT_NAME) return unexpected(p, "a loop variable name");
        if (n_names == 8) return jx_fail_at(line, ST_ERR_FORMAT, "more than 8 loop variables");
        ST_TRY(name_of(p, t, &names[n_names++]));
        p->i++;
        if (!is_op(cur(p), ',')) break;
        p->i++;
    }
    if (!is_name(cur(p), "in")) return unexpected(p, "'in'");
    p->i++;
    jx_node *nd, *filter = NULL, *body, *other = NULL;
    ST_TRY(node(p, JN_FOR, line, 4, &nd));
    ST_TRY(parse_expr(p, 0, &nd->kid[0]));
    if (is_name(cur(p), "if")) {
        p->i++;
        ST_TRY(parse_expr(p, 1, &filter));
    }
    if (is_name(cur(p), "recursive"))
        return jx_fail_at(line, ST_ERR_FORMAT, "recursive for loops are not supported");
    ST_TRY(expect_block_end(p));
    static const char *const ends[] = {"else", "endfor", NULL};
    int which;
    p->loops++;
    ST_TRY(parse_body(p, ends, "for", line, &body, &which));
    p->loops--;
    if (which == 0) {
        static const char *const end[] = {"endfor", NULL};
        ST_TRY(expect_block_end(p));
        ST_TRY(parse_body(p, end, "for", line, &other, &which));
    }
    ST_TRY(expect_block_end(p));
    nd->kid[1] = filter, nd->kid[2] = body, nd->kid[3] = other;
    const char **nm = jx_alloc(&p->t->arena, (size_t)n_names * sizeof *nm);
    if (!nm) NO_MEM();
    memcpy(nm, names, (size_t)n_names * sizeof *nm);
    nd->names = nm;
    nd->n_names = n_names;
    *out = nd;
    return seal(nd);
}

static st_err parse_if(parser *p, int line, jx_node **out)
{
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    kids k = {0};
    int which = 0;
    while (which == 0) { /* if / elif: a condition and its body */
        jx_node *cond, *body;
        ST_TRY(parse_expr(p, 0, &cond));
        ST_TRY(expect_block_end(p));
        ST_TRY(parse_body(p, ends, "if", line, &body, &which));
        ST_TRY(push(p, &k, cond, NULL));
        ST_TRY(push(p, &k, body, NULL));
    }
    if (which == 1) {
        static const char *const end[] = {"endif", NULL};
        jx_node *body;
        ST_TRY(expect_block_end(p));
        ST_TRY(parse_body(p, end, "if", line, &body, &which));
        ST_TRY(push(p, &k, body, NULL));
    }
    ST_TRY(expect_block_end(p));
    return from_kids(p, JN_IF, line, &k, out);
}

static st_err parse_set(parser *p, int line, jx_node **out)
{
    const jx_tok *t = cur(p);
    if (t->kind != JT_NAME) return unexpected(p, "a variable name after 'set'");
    const char *name, *attr = NULL;
    ST_TRY(name_of(p, t, &name));
    p->i++;
    if (is_op(cur(p), '.')) {
        p->i++;
        if (cur(p)->kind != JT_NAME) return unexpected(p, "an attribute name");
        ST_TRY(name_of(p, cur(p), &attr));
        p->i++;
    }
    if (is_op(cur(p), ','))
        return jx_fail_at(line, ST_ERR_FORMAT, "unpacking in 'set' (set a, b = ...) is not supported");
    jx_node *nd;
    if (cur(p)->kind == JT_BLOCK_END) { /* {% set x %}...{% endset %} */
        if (attr) return jx_fail_at(line, ST_ERR_FORMAT, "a block set cannot assign to an attribute");
        static const char *const end[] = {"endset", NULL};
        int which;
        jx_node *body;
        p->i++;
        ST_TRY(parse_body(p, end, "set", line, &body, &which));
        ST_TRY(expect_block_end(p));
        ST_TRY(node2(p, JN_SET_BLOCK, line, body, NULL, &nd));
    } else {
        if (is_op(cur(p), '|')) return jx_fail_at(line, ST_ERR_FORMAT, "filtered block sets are not supported");
        ST_TRY(expect_op(p, '=', "'=' after the variable name"));
        jx_node *value;
        ST_TRY(parse_expr(p, 1, &value));
        ST_TRY(expect_block_end(p));
        ST_TRY(node2(p, JN_SET, line, value, NULL, &nd));
    }
    nd->s = name;
    nd->n = strlen(name);
    nd->attr = attr;
    *out = nd;
    return ST_OK;
}

/* (name, name=default, ...) after the opening parenthesis, as Jinja2's
 * parse_signature reads it: a parameter without a default may not follow
 * one with a default. The defaults go to k, the names to *names. */
static st_err parse_signature(parser *p, int line, kids *k, const char ***names, int *n_names)
{
    const char *nm[64];
    int n = 0, defaults = 0;
    while (!is_op(cur(p), ')')) {
        const jx_tok *t = cur(p);
        if (t->kind != JT_NAME) return unexpected(p, "a parameter name");
        if (n == 64) return jx_fail_at(line, ST_ERR_FORMAT, "more than 64 macro parameters");
        ST_TRY(name_of(p, t, &nm[n]));
        for (int i = 0; i < n; i++)
            if (!strcmp(nm[i], nm[n])) return jx_fail_at(line, ST_ERR_FORMAT, "parameter '%s' given twice", nm[n]);
        n++;
        p->i++;
        jx_node *dflt = NULL;
        if (is_op(cur(p), '=')) {
            p->i++;
            ST_TRY(parse_expr(p, 1, &dflt));
            defaults = 1;
        } else if (defaults) {
            return jx_fail_at(line, ST_ERR_FORMAT, "syntax error: non-default argument follows default argument");
        }
        ST_TRY(push(p, k, dflt, NULL));
        if (!is_op(cur(p), ',')) break;
        p->i++;
    }
    ST_TRY(expect_op(p, ')', "',' or ')'"));
    const char **copy = jx_alloc(&p->t->arena, (size_t)(n ? n : 1) * sizeof *copy);
    if (!copy) NO_MEM();
    memcpy(copy, nm, (size_t)n * sizeof *copy);
    *names = copy;
    *n_names = n;
    return ST_OK;
}

/* A macro or call body: loops around it do not reach into it. *uses_caller:
 * the body names caller (Jinja2 then lets a call block give it one). */
static st_err parse_macro_body(parser *p, const char *opener, const char *end, int line, jx_node **body,
                               int *uses_caller)
{
    const char *const ends[] = {end, NULL};
    int which, loops = p->loops, caller = p->caller;
    p->loops = 0;
    p->caller = 0;
    p->macros++;
    ST_TRY(parse_body(p, ends, opener, line, body, &which));
    p->macros--;
    p->loops = loops;
    *uses_caller = p->caller;
    p->caller = caller;
    return expect_block_end(p);
}

/* {% macro name(params) %}body{% endmacro %} */
static st_err parse_macro(parser *p, int line, jx_node **out)
{
    const jx_tok *t = cur(p);
    if (t->kind != JT_NAME) return unexpected(p, "a macro name");
    const char *name;
    ST_TRY(name_of(p, t, &name));
    p->i++;
    ST_TRY(expect_op(p, '(', "'(' after the macro name"));
    kids k = {0};
    const char **names;
    int n_names;
    ST_TRY(parse_signature(p, line, &k, &names, &n_names));
    ST_TRY(expect_block_end(p));
    jx_node *body;
    int uses_caller;
    ST_TRY(parse_macro_body(p, "macro", "endmacro", line, &body, &uses_caller));
    ST_TRY(push(p, &k, body, NULL));
    ST_TRY(from_kids(p, JN_MACRO, line, &k, out));
    (*out)->op = uses_caller;
    (*out)->s = name;
    (*out)->n = strlen(name);
    (*out)->names = names;
    (*out)->n_names = n_names;
    return ST_OK;
}

/* {% call(params) macro(args) %}body{% endcall %}: the macro is called with
 * caller, a macro whose body is the block's. */
static st_err parse_call_block(parser *p, int line, jx_node **out)
{
    kids k = {0};
    const char **names = NULL;
    int n_names = 0;
    if (is_op(cur(p), '(')) {
        p->i++;
        ST_TRY(parse_signature(p, line, &k, &names, &n_names));
    }
    jx_node *call;
    ST_TRY(parse_expr(p, 1, &call));
    if (call->kind != JN_CALL) return jx_fail_at(line, ST_ERR_FORMAT, "syntax error: {%% call %%} needs a macro call");
    ST_TRY(expect_block_end(p));
    jx_node *body;
    int uses_caller;
    ST_TRY(parse_macro_body(p, "call", "endcall", line, &body, &uses_caller));
    ST_TRY(push(p, &k, body, NULL));
    ST_TRY(push(p, &k, call, NULL));
    ST_TRY(from_kids(p, JN_CALL_BLOCK, line, &k, out));
    (*out)->s = "caller";
    (*out)->n = 6;
    (*out)->names = names;
    (*out)->n_names = n_names;
    return ST_OK;
}

/* Statements Jinja has that this interpreter does not. */
static const char *const unsupported[] = {"include", "import", "from", "extends", "block", "filter", "with",
                                          "autoescape", "raw", "do", "trans", "pluralize", "endblock",
                                          "endfilter", "endwith", "endautoescape", "endraw", "endtrans", NULL};

/* One {% ... %} statement: the keyword is the current token. */
static st_err parse_statement(parser *p, jx_node **out)
{
    const jx_tok *t = cur(p);
    int line = t->line;
    if (t->kind != JT_NAME) return unexpected(p, "a statement name after '{%'");
    p->i++;
    if (is_name(t, "for")) return parse_for(p, line, out);
    if (is_name(t, "if")) return parse_if(p, line, out);
    if (is_name(t, "set")) return parse_set(p, line, out);
    if (is_name(t, "macro")) return parse_macro(p, line, out);
    if (is_name(t, "call")) return parse_call_block(p, line, out);
    if (is_name(t, "break") || is_name(t, "continue")) {
        if (!p->loops)
            return jx_fail_at(line, ST_ERR_FORMAT, "'%.*s' outside a for loop", (int)t->n, t->s);
        ST_TRY(expect_block_end(p));
        ST_TRY(node(p, is_name(t, "break") ? JN_BREAK : JN_CONTINUE, line, 0, out));
        return seal(*out);
    }
    if (is_name(t, "generation")) { /* HF's marker of assistant text: its body, located */
        static const char *const end[] = {"endgeneration", NULL};
        int which;
        jx_node *body;
        ST_TRY(expect_block_end(p));
        ST_TRY(parse_body(p, end, "generation", line, &body, &which));
        ST_TRY(expect_block_end(p));
        p->t->has_generation = 1;
        return node2(p, JN_GENERATION, line, body, NULL, out);
    }
    for (int k = 0; unsupported[k]; k++)
        if (is_name(t, unsupported[k]))
            return jx_fail_at(line, ST_ERR_FORMAT, "the Jinja '%s' statement is not supported", unsupported[k]);
    return jx_fail_at(line, ST_ERR_FORMAT, "unknown statement '%.*s'", (int)(t->n > 40 ? 40 : t->n), t->s);
}

/* Statements until {% end %} for one of ends (NULL: the end of the template);
 * *which: the index of the end found, the current token its BLOCK_END. */
static st_err parse_body(parser *p, const char *const *ends, const char *opener, int open_line, jx_node **out,
                         int *which)
{
    ST_TRY(enter(p));
    kids k = {0};
    for (;;) {
        const jx_tok *t = cur(p);
        jx_node *nd = NULL;
        if (t->kind == JT_EOF) {
            if (!ends) break;
            int last = 0;
            while (ends[last + 1]) last++;
            return jx_fail_at(open_line, ST_ERR_FORMAT, "the '%s' opened here is never closed ({%% %s %%} missing)",
                              opener, ends[last]);
        }
        if (t->kind == JT_TEXT) {
            ST_TRY(node(p, JN_TEXT, t->line, 0, &nd));
            nd->s = t->s, nd->n = t->n;
            ST_TRY(seal(nd));
            p->i++;
        } else if (t->kind == JT_VAR_BEGIN) {
            p->i++;
            jx_node *e;
            ST_TRY(parse_expr(p, 1, &e));
            if (cur(p)->kind != JT_VAR_END) return unexpected(p, "'}}'");
            p->i++;
            ST_TRY(node2(p, JN_OUTPUT, t->line, e, NULL, &nd));
        } else if (t->kind == JT_BLOCK_BEGIN) {
            const jx_tok *kw = peek(p);
            for (int e = 0; ends && ends[e]; e++)
                if (is_name(kw, ends[e])) {
                    p->i += 2;
                    *which = e;
                    ST_TRY(from_kids(p, JN_BODY, open_line, &k, out));
                    p->depth--;
                    return ST_OK;
                }
            static const char *const closers[] = {"elif", "else", "endif", "endfor", "endset", "endgeneration",
                                                  "endmacro", "endcall", NULL};
            for (int e = 0; closers[e]; e++)
                if (is_name(kw, closers[e]))
                    return jx_fail_at(kw->line, ST_ERR_FORMAT, "unexpected {%% %s %%}%s%s", closers[e],
                                      ends ? " inside a " : " (nothing is open)", ends ? opener : "");
            p->i++;
            ST_TRY(parse_statement(p, &nd));
        } else {
            return unexpected(p, "template text or a tag");
        }
        ST_TRY(push(p, &k, nd, NULL));
    }
    *which = -1;
    ST_TRY(from_kids(p, JN_BODY, open_line, &k, out));
    p->depth--;
    return ST_OK;
}

/* ---- the template ---------------------------------------------------------------------- */

/* The source as Jinja reads it: every newline "\n", one trailing newline dropped. */
static char *normalize(jx_arena *a, const char *src, size_t len, size_t *n)
{
    char *s = jx_alloc(a, len + 1);
    if (!s) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[k++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[k++] = src[i];
        }
    }
    if (k && s[k - 1] == '\n') k--;
    s[k] = '\0';
    *n = k;
    return s;
}

int st_jinja_has_generation(const st_jinja *t) { return t && t->has_generation; }

void st_jinja_free(st_jinja *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->n_lits; i++) jv_free_literal(t->lits[i]);
    free(t->lits);
    jx_arena_free(&t->arena);
    free(t);
}

st_err st_jinja_parse(st_jinja **out, const char *src, size_t len)
{
    *out = NULL;
    size_t bad;
    char why[128];
    if (!st_utf8_valid(src, len, &bad, why, sizeof why))
        ST_FAIL(ST_ERR_FORMAT, "chat template: not valid UTF-8 at byte %zu (%s)", bad, why);
    st_jinja *t = calloc(1, sizeof *t);
    if (!t) NO_MEM();
    size_t n;
    jx_tok *toks = NULL;
    size_t n_toks = 0;
    char *s = normalize(&t->arena, src, len, &n);
    st_err e = s ? jx_lex(&t->arena, s, n, &toks, &n_toks)
                 : st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for the chat template");
    if (!e) {
        parser p = {.t = t, .tok = toks};
        int which;
        e = parse_body(&p, NULL, NULL, 1, &t->root, &which);
    }
    free(toks);
    if (e) {
        st_jinja_free(t);
        st_error_trace(__FILE__, __LINE__, __func__);
        return e;
    }
    *out = t;
    return ST_OK;
}
