/* jinja.h: the subset of Jinja2 that Hugging Face chat templates use.
 *
 * A chat template is code downloaded with a model, so this interpreter is
 * written for hostile input: every limit below ends a render with an error
 * naming the template line, never with a crash or a runaway.
 *
 * Environment: what transformers' apply_chat_template uses: trim_blocks and
 * lstrip_blocks on, the loopcontrols extension (break, continue), HF's
 * {% generation %} block (rendered as its body; the render can report where
 * its text went), one trailing newline of the source dropped, and the
 * default Undefined: a missing variable or key prints as "" and is false,
 * but arithmetic, attribute access or calls on it fail.
 *
 * Supported: {{ }}, {% %}, {# #}, whitespace control (-, +); for (with
 * loop.index/index0/revindex/revindex0/first/last/length/previtem/nextitem,
 * a filter "if", tuple targets "k, v", else), if/elif/else, set (name,
 * ns.attr, block set), break, continue; macro (parameters with defaults,
 * evaluated at each call; a missing argument is undefined; recursion up to
 * JX_MAX_CALLS deep) and call blocks with caller(...), as Jinja2 scopes them:
 * a macro's body sees its arguments and the variables of where it was
 * defined, a caller's body those of its {% call %}; literals (strings with
 * Python escapes, ints, floats, True/False/None in either case, lists,
 * tuples, dicts), [] with negative indices and slices, .attr, + - * / // %
 * ~, comparisons (chained), and/or/not, in/not in, "x if c else y", tests,
 * filters and string/dict methods listed in jinja_builtins.c, and the
 * globals raise_exception, namespace, range and strftime_now.
 * strftime_now(format) is transformers' datetime.now().strftime(format):
 * local time, or, when the environment has SOURCE_DATE_EPOCH (the
 * reproducible-builds convention: seconds since 1970 UTC), that instant in
 * UTC, so renders can be repeated; %z and %Z print nothing (a naive
 * datetime), %f "000000".
 * Not supported (a parse error names the line and the construct): include,
 * import, extends, block, filter blocks, with, raw, do, recursive loops,
 * macros using varargs or kwargs, unknown filters and tests.
 * Case mapping (upper, lower, title, capitalize) is ASCII-only.
 *
 * Provenance: every byte of a string value remembers whether it came from
 * message content (text the user supplied) or from the template itself;
 * concatenation, slicing, strip, replace, join and output keep it, so the
 * rendered text says, byte by byte, which parts a user wrote.
 */
#ifndef ST_JINJA_H
#define ST_JINJA_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

typedef struct st_jinja st_jinja;   /* a parsed template, immutable */
typedef struct st_jv st_jv;         /* a value, reference counted */

/* Rendered text: s (n bytes, NUL-terminated) and content (n): 1 where the
 * byte came from a string marked as content. */
typedef struct {
    char *s;
    uint8_t *content;
    size_t n, cap;
} st_jinja_text;

void st_jinja_text_free(st_jinja_text *t);

/* Parse len bytes of template source (UTF-8). Errors: ST_ERR_FORMAT with
 * "chat template line N: ...". */
st_err st_jinja_parse(st_jinja **out, const char *src, size_t len);
void st_jinja_free(st_jinja *t);

/* A variable given to a render. */
typedef struct {
    const char *name;
    st_jv *value;   /* borrowed */
} st_jinja_var;

/* Render with vars (anything else is undefined); *out is reset first.
 * Errors: ST_ERR_FORMAT (the template failed, raise_exception, a limit),
 * ST_ERR_MEM. A template may be rendered from several threads at once, each
 * render with variables of its own. */
st_err st_jinja_render(const st_jinja *t, const st_jinja_var *vars, int n_vars, st_jinja_text *out);

/* What a render tells about where its output came from (byte ranges [a, b)
 * of the rendered text; only text written to the output itself counts, not
 * text captured by a set block or a macro and printed later). */
typedef struct {
    size_t a, b;
} st_jinja_span;

typedef struct {
    /* in: values (borrowed) whose for-loop iterations to locate */
    st_jv *const *track;
    int n_track;
    /* out: iter[i] = the text written by the last iteration, of any for loop
     * whose item was track[i] itself, that wrote text; {0, 0} when none */
    st_jinja_span *iter;   /* (n_track), the caller's */
    /* out: the text written inside {% generation %} blocks, in order */
    st_jinja_span *gen;
    size_t n_gen, cap_gen;
} st_jinja_report;

void st_jinja_report_free(st_jinja_report *r);   /* gen only */

/* st_jinja_render, also filling *rep. */
st_err st_jinja_render_report(const st_jinja *t, const st_jinja_var *vars, int n_vars, st_jinja_text *out,
                              st_jinja_report *rep);

/* Does the template have a {% generation %} block (transformers' marker of
 * the text an assistant writes)? */
int st_jinja_has_generation(const st_jinja *t);

/* Values for vars. Constructors return NULL when out of memory. */
st_jv *st_jv_string(const char *s, size_t n, int is_content);
st_jv *st_jv_boolean(int b);
st_jv *st_jv_none(void);
st_jv *st_jv_integer(int64_t i);
st_jv *st_jv_number(double f);
st_jv *st_jv_new_list(void);
st_jv *st_jv_new_dict(void);
/* Append item / set key, taking over the caller's reference to item (also on failure). */
st_err st_jv_append(st_jv *list, st_jv *item);
st_err st_jv_put(st_jv *dict, const char *key, st_jv *item);
st_jv *st_jv_ref(st_jv *v);
void st_jv_unref(st_jv *v);

#endif
