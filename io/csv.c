/* csv.c: RFC 4180 records on top of the line reader of jsonl.c. */
#include "io/csv.h"

#include <stdlib.h>
#include <string.h>

#include "io/jsonl.h"

/* A growable byte buffer. */
typedef struct {
    char *p;
    size_t n, cap;
} bytes;

static st_err bytes_put(bytes *b, const char *src, size_t n)
{
    if (n > ST_LINE_MAX || b->n > ST_LINE_MAX - n)
        ST_FAIL(ST_ERR_FORMAT, "CSV record longer than %zu bytes (an unclosed quote?)", ST_LINE_MAX);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) ST_FAIL(ST_ERR_MEM, "out of memory reading a %zu-byte CSV record", b->n + n);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
    b->p[b->n] = '\0';
    return ST_OK;
}

struct st_csv {
    st_lines *lines;
    bytes raw;            /* the record's text */
    bytes fields;         /* the fields, each followed by a NUL */
    size_t *start;        /* (cap_fields) offset of field i in fields.p */
    int nfields, cap_fields;
    int ncols;
    char **cols;          /* (ncols) header names */
    int64_t lineno;
};

static st_err field_begin(st_csv *c)
{
    if (c->nfields == c->cap_fields) {
        int cap = c->cap_fields ? 2 * c->cap_fields : 16;
        if (cap > (1 << 20)) ST_FAIL(ST_ERR_FORMAT, "more than %d fields in one CSV record", 1 << 20);
        size_t *p = realloc(c->start, (size_t)cap * sizeof *p);
        if (!p) ST_FAIL(ST_ERR_MEM, "out of memory for CSV fields");
        c->start = p;
        c->cap_fields = cap;
    }
    c->start[c->nfields++] = c->fields.n;
    return ST_OK;
}

/* Splits the next non-blank record into fields. On a quoting error the rest
 * of that physical line is dropped so the next call starts cleanly. */
static st_err read_record(st_csv *c, int *eof)
{
    const char *line;
    size_t len;
    const char *path = st_lines_path(c->lines);
    c->raw.n = c->fields.n = 0;
    c->nfields = 0;
    do {
        ST_TRY(st_lines_next(c->lines, &line, &len, eof));
        if (*eof) return ST_OK;
    } while (st_line_blank(line, len));
    c->lineno = st_lines_lineno(c->lines);

    int quoted = 0, in_quotes = 0, after_quote = 0;
    ST_TRY(field_begin(c));
    for (;;) {
        ST_TRY(bytes_put(&c->raw, line, len));
        for (size_t i = 0; i < len; i++) {
            char ch = line[i];
            if (!in_quotes && ch == '\r' && i + 1 == len) break; /* CRLF ends the record */
            if (in_quotes) {
                if (ch != '"') {
                    ST_TRY(bytes_put(&c->fields, &ch, 1));
                } else if (i + 1 < len && line[i + 1] == '"') {
                    ST_TRY(bytes_put(&c->fields, "\"", 1));
                    i++;
                } else {
                    in_quotes = 0;
                    after_quote = 1;
                }
            } else if (ch == ',') {
                ST_TRY(bytes_put(&c->fields, "", 1));
                ST_TRY(field_begin(c));
                quoted = after_quote = 0;
            } else if (after_quote) {
                ST_FAIL(ST_ERR_FORMAT, "%s:%lld: malformed CSV: text after the closing quote of "
                        "field %d (a quote inside a quoted field must be doubled: \"\")", path,
                        (long long)st_lines_lineno(c->lines), c->nfields);
            } else if (ch == '"') {
                if (c->fields.n != c->start[c->nfields - 1] || quoted)
                    ST_FAIL(ST_ERR_FORMAT, "%s:%lld: malformed CSV: a quote inside unquoted field %d "
                            "(quote the whole field and double inner quotes)", path,
                            (long long)st_lines_lineno(c->lines), c->nfields);
                quoted = in_quotes = 1;
            } else {
                ST_TRY(bytes_put(&c->fields, &ch, 1));
            }
        }
        if (!in_quotes) break;
        /* a line break inside quotes belongs to the field */
        ST_TRY(bytes_put(&c->fields, "\n", 1));
        ST_TRY(bytes_put(&c->raw, "\n", 1));
        ST_TRY(st_lines_next(c->lines, &line, &len, eof));
        if (*eof) {
            *eof = 0;
            ST_FAIL(ST_ERR_FORMAT, "%s:%lld: malformed CSV: the quoted field %d opened on this line "
                    "is never closed", path, (long long)c->lineno, c->nfields);
        }
    }
    ST_TRY(bytes_put(&c->fields, "", 1));
    return ST_OK;
}

st_err st_csv_open(st_csv **out, const char *path)
{
    *out = NULL;
    st_csv *c;
    ST_ALLOC(c, 1, "CSV reader");
    st_err err = ST_OK;
    int eof = 0;
    ST_TRY_GOTO(err, st_lines_open(&c->lines, path), fail);
    ST_TRY_GOTO(err, read_record(c, &eof), fail);
    if (eof) {
        err = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                           "%s: empty CSV file (expected a header row such as 'text,label')", path);
        goto fail;
    }
    c->cols = calloc((size_t)c->nfields, sizeof *c->cols);
    if (!c->cols) {
        err = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for %s", path);
        goto fail;
    }
    c->ncols = c->nfields;
    for (int i = 0; i < c->ncols; i++) {
        const char *name = c->fields.p + c->start[i];
        if (i == 0 && (unsigned char)name[0] == 0xEF && (unsigned char)name[1] == 0xBB &&
            (unsigned char)name[2] == 0xBF)
            name += 3; /* byte-order mark */
        c->cols[i] = strdup(name);
        if (!c->cols[i]) {
            err = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for %s", path);
            goto fail;
        }
    }
    *out = c;
    return ST_OK;
fail:
    st_csv_close(c);
    return err;
}

void st_csv_close(st_csv *c)
{
    if (!c) return;
    st_lines_close(c->lines);
    for (int i = 0; i < c->ncols; i++) free(c->cols[i]);
    free(c->cols);
    free(c->raw.p);
    free(c->fields.p);
    free(c->start);
    free(c);
}

int st_csv_num_cols(const st_csv *c) { return c->ncols; }
const char *st_csv_col_name(const st_csv *c, int i) { return c->cols[i]; }

int st_csv_find_col(const st_csv *c, const char *name)
{
    for (int i = 0; i < c->ncols; i++)
        if (!strcmp(c->cols[i], name)) return i;
    return -1;
}

st_err st_csv_next(st_csv *c, int *eof)
{
    ST_TRY(read_record(c, eof));
    if (!*eof && c->nfields != c->ncols)
        ST_FAIL(ST_ERR_FORMAT, "%s:%lld: malformed CSV: the record has %d fields, the header has %d "
                "(quote fields that contain commas)", st_lines_path(c->lines),
                (long long)c->lineno, c->nfields, c->ncols);
    return ST_OK;
}

const char *st_csv_field(const st_csv *c, int i, size_t *len)
{
    size_t s = c->start[i];
    size_t e = i + 1 < c->nfields ? c->start[i + 1] - 1 : c->fields.n - 1;
    *len = e - s;
    return c->fields.p + s;
}

int64_t st_csv_lineno(const st_csv *c) { return c->lineno; }

const char *st_csv_raw(const st_csv *c, size_t *len)
{
    *len = c->raw.n;
    return c->raw.p ? c->raw.p : "";
}

const char *st_csv_path(const st_csv *c) { return st_lines_path(c->lines); }
