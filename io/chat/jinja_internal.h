/* jinja_internal.h: the insides of the Jinja interpreter, shared by
 * io/chat/jinja_lex.c (source -> tokens), jinja_parse.c (tokens -> syntax tree),
 * jinja_value.c (values, strings with provenance, printing), jinja_eval.c
 * (running the tree) and jinja_builtins.c (filters, tests, methods). */
#ifndef ST_JINJA_INTERNAL_H
#define ST_JINJA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "io/chat/jinja.h"

/* ---- limits: a hostile template stops here -------------------------------- */

#define JX_MAX_STR     ((size_t)64 << 20)    /* bytes of one string and of the output */
#define JX_MAX_BYTES   ((int64_t)256 << 20)  /* bytes of strings and lists made per render */
#define JX_MAX_STEPS   ((int64_t)10000000)   /* evaluations, loop iterations, work (jx_work) per render */
#define JX_MAX_RANGE   1000000               /* elements of range() */
#define JX_MAX_VDEPTH  64                    /* lists/dicts nested in each other */
#define JX_MAX_ADEPTH  160                   /* syntax tree depth (parse and eval recursion) */
#define JX_MAX_SCOPES  160                   /* for loops and macro calls nested at run time */
#define JX_MAX_CALLS   64                    /* macro calls nested in each other (recursion) */

/* ---- arena: everything a parsed template owns ------------------------------ */

typedef struct jx_chunk jx_chunk;
typedef struct {
    jx_chunk *head;
} jx_arena;

void *jx_alloc(jx_arena *a, size_t n);   /* zeroed; NULL when out of memory */
void jx_arena_free(jx_arena *a);

/* ---- tokens ------------------------------------------------------------- */

enum { JT_TEXT, JT_VAR_BEGIN, JT_VAR_END, JT_BLOCK_BEGIN, JT_BLOCK_END, JT_NAME, JT_STRING,
       JT_INT, JT_FLOAT, JT_OP, JT_EOF };

/* Two-character operators get codes above 255; one-character ones are the char. */
enum { JO_FLOORDIV = 256, JO_POW, JO_EQ, JO_NE, JO_LE, JO_GE };

typedef struct {
    int kind, line;
    int op;              /* JT_OP */
    const char *s;       /* TEXT, NAME: into the source; STRING: decoded, in the arena */
    size_t n;
    int64_t i;           /* INT */
    double f;            /* FLOAT */
} jx_tok;

/* src (len bytes, newlines already "\n") -> tokens ending with JT_EOF. */
st_err jx_lex(jx_arena *a, const char *src, size_t len, jx_tok **toks, size_t *n_toks);

/* ---- values --------------------------------------------------------------- */

enum { JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT, JV_NS, JV_FUNC, JV_MACRO };
enum { JF_RAISE, JF_NAMESPACE, JF_RANGE, JF_STRFTIME_NOW };   /* JV_FUNC: which global */

struct st_jv {
    int type;
    int refs;            /* < 0: owned by a template (a literal), never freed by unref */
    int depth;           /* lists, dicts, namespaces: 1 + the deepest element */
    int has_ns;          /* a namespace is inside (namespaces may not hold one: no cycles) */
    union {
        int64_t i;       /* BOOL, INT, FUNC */
        double f;
        struct {         /* STR: prov (n) is NULL when every byte's provenance is all */
            char *s;
            uint8_t *prov;
            size_t n;
            uint8_t all;
        } str;
        struct {         /* LIST: a Python list, or a tuple (prints as (a, b)) */
            st_jv **item;
            size_t n, cap;
            int tuple;
        } list;
        struct {         /* DICT, NS: insertion order */
            st_jv **key, **val;
            size_t n, cap;
        } map;
        char *undef;     /* UNDEF: what was missing (for messages), or NULL */
        struct {         /* MACRO: a {% macro %}, or the body of a {% call %} (caller) */
            const struct jx_node *def;
            int link;    /* the scopes [0, link) its body sees besides its own */
        } macro;
    } u;
};

/* The state of one render. */
typedef struct jx_scope jx_scope;
typedef struct {
    st_jinja_text *out;  /* where output goes (a block set or a macro call swaps it) */
    st_jinja_text *root; /* the render's own output */
    st_jinja_report *rep;   /* what the caller asked to be told, or NULL */
    jx_scope *scopes;    /* [0] globals and the caller's variables, then for loops and macro calls */
    int n_scopes;
    int frame, link;     /* the running macro's scopes are [frame, n_scopes), then it sees [0, link);
                            at the top level frame = link = 0: every scope */
    int calls;           /* macro calls nested */
    int line;            /* of the node being evaluated, for messages */
    int depth;           /* recursion */
    int loop_ctl;        /* JX_BREAK / JX_CONTINUE while unwinding to the loop */
    int64_t steps, bytes;   /* what is left of the budgets */
} jx_ctx;

enum { JX_BREAK = 1, JX_CONTINUE = 2 };

/* Fail with "chat template line N: ..." (line <= 0, or cx NULL: no line). */
st_err jx_fail_at(int line, st_err code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
st_err jx_fail(const jx_ctx *cx, st_err code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Take n bytes from the render's budget (n = 0 counts one step). */
st_err jx_charge(jx_ctx *cx, size_t n);
/* Count n units of work (a step per 64): a byte compared with memcmp is a
 * unit, a character walked one by one JX_CHAR_WORK. The steps may go below
 * zero; the next jx_charge stops the render. */
#define JX_CHAR_WORK 16
static inline void jx_work(jx_ctx *cx, size_t n)
{
    if (cx) cx->steps -= (int64_t)(n / 64);
}

st_jv *jv_new(int type);
st_jv *jv_int(int64_t i);
st_jv *jv_float(double f);
st_jv *jv_bool(int b);
st_jv *jv_none(void);
st_jv *jv_undef(const char *name, size_t n);
st_jv *jv_func(int which);
st_jv *jv_macro(const struct jx_node *def, int link);
/* A string taking ownership of s (n + 1 bytes, NUL-terminated) and prov (n) or NULL. */
st_jv *jv_str_take(char *s, uint8_t *prov, size_t n, uint8_t all);
st_jv *jv_str_lit(const char *s, size_t n);        /* template text (provenance 0) */
st_jv *jv_str_slice(const st_jv *v, size_t from, size_t to);
static inline uint8_t jv_prov(const st_jv *v, size_t i) { return v->u.str.prov ? v->u.str.prov[i] : v->u.str.all; }

st_err jv_list_push(jx_ctx *cx, st_jv *list, st_jv *item);     /* takes item */
st_err jv_dict_set(jx_ctx *cx, st_jv *d, st_jv *key, st_jv *val); /* takes key and val */
st_jv *jv_dict_get(const st_jv *d, const char *key, size_t n);   /* borrowed, or NULL */
st_jv *jv_dict_find(jx_ctx *cx, const st_jv *d, const st_jv *key);  /* borrowed, or NULL */

void jv_unref(st_jv *v);
static inline st_jv *jv_ref(st_jv *v)
{
    if (v->refs >= 0) v->refs++;
    return v;
}
void jv_free_literal(st_jv *v);   /* a template's own literal at template free */

const char *jv_type_name(const st_jv *v);
int jv_truthy(const st_jv *v);
int jv_equal(jx_ctx *cx, const st_jv *a, const st_jv *b);   /* Python's ==; cx (or NULL) counts the work */
int jv_is_number(const st_jv *v);   /* BOOL, INT, FLOAT */
double jv_num(const st_jv *v);

/* ---- text being built, with provenance ------------------------------------- */

typedef st_jinja_text jx_buf;
st_err jx_put(jx_ctx *cx, jx_buf *b, const char *s, size_t n, uint8_t prov);
st_err jx_put_str(jx_ctx *cx, jx_buf *b, const st_jv *str, size_t from, size_t to);
/* The buffer as a string value (b is emptied; its memory moves to the value). */
st_err jx_buf_value(jx_ctx *cx, jx_buf *b, st_jv **out);

/* str(v) (Jinja's output of {{ v }}), repr(v) (Python) and JSON (transformers'
 * tojson: ensure_ascii off, ", " and ": " separators; indent < 0: one line). */
st_err jv_print(jx_ctx *cx, jx_buf *b, const st_jv *v);
st_err jv_repr(jx_ctx *cx, jx_buf *b, const st_jv *v);
st_err jv_json(jx_ctx *cx, jx_buf *b, const st_jv *v, int indent, int level);
st_err jv_to_string(jx_ctx *cx, const st_jv *v, st_jv **out);   /* str(v) as a value */

/* UTF-8 helpers: the length of the character at s (1 for a stray byte),
 * the code point count, and Python's str.isspace on the character at s. */
size_t jx_utf8_len(const char *s, size_t n);
size_t jx_utf8_count(const char *s, size_t n);
size_t jx_space_len(const char *s, size_t n);   /* bytes of a whitespace char at s, or 0 */

/* ---- the syntax tree --------------------------------------------------------- */

enum {
    /* expressions */
    JN_LIT, JN_NAME, JN_LIST, JN_DICT, JN_ATTR, JN_INDEX, JN_SLICE, JN_CALL, JN_FILTER, JN_TEST,
    JN_NEG, JN_POS, JN_NOT, JN_BINARY, JN_AND, JN_OR, JN_COMPARE, JN_COND,
    /* statements */
    JN_TEXT, JN_OUTPUT, JN_BODY, JN_IF, JN_FOR, JN_SET, JN_SET_BLOCK, JN_BREAK, JN_CONTINUE,
    JN_MACRO, JN_CALL_BLOCK, JN_GENERATION
};

/* Comparison operators in JN_COMPARE's ops. */
enum { JC_EQ, JC_NE, JC_LT, JC_LE, JC_GT, JC_GE, JC_IN, JC_NOT_IN };

typedef struct jx_node jx_node;
struct jx_node {
    int kind, line, depth;
    int op;              /* BINARY: an operator char or JO_*; TEST: 1 when negated; LIST: 1 for a tuple;
                            MACRO: 1 when its body names caller */
    const char *s;       /* NAME, ATTR, FILTER, TEST: the name; TEXT: the data; SET: the target; MACRO: its name */
    size_t n;
    const char *attr;    /* SET: ns.attr's attribute, or NULL */
    st_jv *lit;          /* LIT */
    jx_node **kid;       /* see below */
    int n_kid;
    const char **kw;     /* CALL, FILTER, TEST: keyword of each kid (NULL: positional) */
    int *ops;            /* COMPARE: n_kid - 1 operators */
    const char **names;  /* FOR: target names; MACRO, CALL_BLOCK: parameter names (n_names) */
    int n_names;
    int fn;              /* FILTER, TEST: which builtin */
};
/* kid layout:
 *   LIST: items   DICT: key, value, key, value...   ATTR: object   INDEX: object, index
 *   SLICE: object, start, stop, step (NULL when absent)   CALL: callee, args...
 *   FILTER, TEST: subject, args...   NEG, POS, NOT: operand   BINARY, AND, OR: left, right
 *   COMPARE: operands   COND: value, condition, else-value (NULL: undefined)
 *   OUTPUT: expression   BODY: statements   IF: cond, body, cond, body, ... [else body]
 *   FOR: iterable, filter (or NULL), body, else body (or NULL)   SET: value   SET_BLOCK: body
 *   MACRO: each parameter's default (or NULL), body   GENERATION: body
 *   CALL_BLOCK: each caller parameter's default (or NULL), body, then the CALL it makes */

struct st_jinja {
    jx_arena arena;
    jx_node *root;
    int has_generation;  /* a {% generation %} block is in the template */
    st_jv **lits;        /* the literals, freed with the template */
    size_t n_lits, cap_lits;
};

/* ---- evaluation and builtins -------------------------------------------------- */

/* jinja_eval.c */
st_err jx_eval(jx_ctx *cx, const jx_node *e, st_jv **out);
st_err jx_exec(jx_ctx *cx, const jx_node *s);

/* jinja_ops.c: values in arithmetic and comparisons */
st_err jx_undefined_error(jx_ctx *cx, const st_jv *v, const char *doing);
/* a op b for + - * / // % ** (an operator char or JO_*). */
st_err jx_arith(jx_ctx *cx, int op, const st_jv *a, const st_jv *b, st_jv **out);
/* a op b for a JC_* operator (in: a in b). */
st_err jx_compare(jx_ctx *cx, int op, const st_jv *a, const st_jv *b, int *out);

/* jinja_builtins.c: filters, tests, methods and global functions, all on
 * evaluated values (the evaluator evaluates their arguments). */
/* Builtin filters and tests by name: an index, or -1. */
int jx_filter_find(const char *name, size_t n);
int jx_test_find(const char *name, size_t n);
/* Apply filter or test fn to v with evaluated args (kw[i] NULL for positional). */
st_err jx_filter(jx_ctx *cx, int fn, st_jv *v, st_jv **args, const char **kw, int n_args, st_jv **out);
st_err jx_test(jx_ctx *cx, int fn, const st_jv *v, st_jv **args, const char **kw, int n_args, int *out);
/* obj.name(args...) with evaluated args (kw[i] NULL for positional). */
st_err jx_method(jx_ctx *cx, st_jv *obj, const char *name, st_jv **args, const char **kw, int n_args,
                 st_jv **out);
/* A global function called with evaluated args. */
st_err jx_call_global(jx_ctx *cx, int which, st_jv **args, const char **kw, int n_args, st_jv **out);
/* Call a macro (or a caller) with evaluated args; caller: the body of a
 * {% call %} block (a JV_MACRO) or NULL. *out: what its body wrote. */
st_err jx_call_macro(jx_ctx *cx, const st_jv *macro, st_jv **args, const char **kw, int n_args, st_jv *caller,
                     st_jv **out);

#endif
