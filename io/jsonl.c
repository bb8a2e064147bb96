/* jsonl.c: a gzip-or-plain line reader, the JSON-line parser and the UTF-8
 * check used on every string that comes from outside. */
#include "io/jsonl.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/rng.h"

#define ST_READ_CHUNK (1 << 16)

struct st_lines {
    gzFile gz;
    char *path;
    unsigned char *buf;    /* (ST_READ_CHUNK) raw bytes from zlib */
    size_t pos, end;       /* unread bytes are buf[pos..end) */
    int at_eof;
    char *line;            /* (cap) the current line, NUL-terminated */
    size_t cap;
    int64_t lineno;
};

st_err st_lines_open(st_lines **out, const char *path)
{
    *out = NULL;
    st_lines *r;
    ST_ALLOC(r, 1, "line reader");
    r->path = strdup(path);
    r->buf = malloc(ST_READ_CHUNK);
    if (!r->path || !r->buf) {
        st_lines_close(r);
        ST_FAIL(ST_ERR_MEM, "out of memory opening %s", path);
    }
    errno = 0;
    r->gz = gzopen(path, "rb");
    if (!r->gz) {
        int e = errno;
        st_lines_close(r);
        ST_FAIL(ST_ERR_IO, "cannot open %s: %s", path, e ? strerror(e) : "zlib could not open it");
    }
    gzbuffer(r->gz, 1 << 17);
    *out = r;
    return ST_OK;
}

/* Append n bytes to the current line of length len, growing it. */
static st_err line_append(st_lines *r, size_t len, const unsigned char *src, size_t n)
{
    if (n > ST_LINE_MAX - len)
        ST_FAIL(ST_ERR_FORMAT, "%s:%lld: line longer than %zu bytes (is this a text file?)",
                r->path, (long long)r->lineno + 1, ST_LINE_MAX);
    if (len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 256;
        while (cap < len + n + 1) cap *= 2;
        char *p = realloc(r->line, cap);
        if (!p) ST_FAIL(ST_ERR_MEM, "out of memory reading a %zu-byte line of %s", len + n, r->path);
        r->line = p;
        r->cap = cap;
    }
    memcpy(r->line + len, src, n);
    return ST_OK;
}

/* Refill buf from zlib; sets at_eof when nothing is left. */
static st_err refill(st_lines *r)
{
    int got = gzread(r->gz, r->buf, ST_READ_CHUNK);
    if (got < 0) {
        int zerr = 0;
        const char *msg = gzerror(r->gz, &zerr);
        ST_FAIL(zerr == Z_ERRNO ? ST_ERR_IO : ST_ERR_FORMAT,
                "%s: read failed near line %lld: %s (a truncated or corrupt gzip file?)", r->path,
                (long long)r->lineno + 1, zerr == Z_ERRNO ? strerror(errno) : msg);
    }
    r->pos = 0;
    r->end = (size_t)got;
    if (got == 0) {
        /* zlib ends a stream cut short (even at a flush point, where every
         * byte so far inflates cleanly) with Z_BUF_ERROR: the trailer with
         * its CRC and length never came */
        int zerr = 0;
        gzerror(r->gz, &zerr);
        if (zerr == Z_BUF_ERROR)
            ST_FAIL(ST_ERR_FORMAT, "%s: the gzip stream ends early, after line %lld, without its trailer: the "
                    "file is truncated (copy it again)", r->path, (long long)r->lineno);
        r->at_eof = 1;
    }
    return ST_OK;
}

st_err st_lines_next(st_lines *r, const char **line, size_t *len, int *eof)
{
    size_t n = 0;
    *line = NULL;
    *len = 0;
    *eof = 0;
    for (;;) {
        if (r->pos == r->end && !r->at_eof) ST_TRY(refill(r));
        if (r->pos == r->end) { /* end of input */
            if (n == 0) {
                *eof = 1;
                return ST_OK;
            }
            break; /* a last line without '\n' */
        }
        unsigned char *start = r->buf + r->pos;
        unsigned char *nl = memchr(start, '\n', r->end - r->pos);
        size_t take = nl ? (size_t)(nl - start) : r->end - r->pos;
        ST_TRY(line_append(r, n, start, take));
        n += take;
        r->pos += take + (nl ? 1 : 0);
        if (nl) break;
    }
    if (!r->line) ST_TRY(line_append(r, 0, (const unsigned char *)"", 0)); /* empty line */
    r->line[n] = '\0';
    r->lineno++;
    *line = r->line;
    *len = n;
    return ST_OK;
}

int64_t st_lines_lineno(const st_lines *r) { return r->lineno; }
const char *st_lines_path(const st_lines *r) { return r->path; }

void st_lines_close(st_lines *r)
{
    if (!r) return;
    if (r->gz) gzclose(r->gz);
    free(r->path);
    free(r->buf);
    free(r->line);
    free(r);
}

int st_line_blank(const char *line, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r') return 0;
    return 1;
}

/* Up to 24 bytes of s from p, printable ASCII kept, the rest as '.'. */
static void snippet(char *dst, const char *p, const char *end)
{
    size_t i = 0;
    for (; i < 24 && p + i < end; i++) {
        unsigned char c = (unsigned char)p[i];
        dst[i] = (c >= 32 && c < 127) ? (char)c : '.';
    }
    dst[i] = '\0';
}

/* Column (1-based) of a \u0000 escape in a JSON text, 0 when none: cJSON
 * would decode it into a NUL byte that silently ends the C string. An
 * escape is a backslash preceded by an even run of backslashes. */
static size_t nul_escape(const char *line, size_t len)
{
    for (size_t i = 0; i + 6 <= len; i++) {
        if (line[i] != '\\' || line[i + 1] != 'u' || memcmp(line + i + 2, "0000", 4)) continue;
        size_t run = 0;
        while (run < i && line[i - 1 - run] == '\\') run++;
        if (run % 2 == 0) return i + 1;
    }
    return 0;
}

st_err st_json_parse_line(cJSON **out, const char *line, size_t len, const char *path,
                          int64_t lineno)
{
    const char *end = NULL;
    char near[32];
    size_t nul = nul_escape(line, len);
    *out = NULL;
    if (nul)
        ST_FAIL(ST_ERR_FORMAT, "%s:%lld: a NUL character (\\u0000) at column %zu: text cannot hold NUL bytes "
                "(it would end there)", path, (long long)lineno, nul);
    *out = cJSON_ParseWithLengthOpts(line, len, &end, 0);
    if (!*out) {
        const char *at = end && end >= line && end <= line + len ? end : line;
        snippet(near, at, line + len);
        ST_FAIL(ST_ERR_FORMAT, "%s:%lld: malformed JSON at column %lld (near '%s')", path,
                (long long)lineno, (long long)(at - line) + 1, near);
    }
    /* only whitespace may follow the value */
    const char *p = end;
    while (p < line + len && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
    if (p < line + len) {
        cJSON_Delete(*out);
        *out = NULL;
        snippet(near, p, line + len);
        ST_FAIL(ST_ERR_FORMAT, "%s:%lld: malformed JSON: unexpected text after the value at "
                "column %lld (near '%s'; one JSON object per line)", path, (long long)lineno,
                (long long)(p - line) + 1, near);
    }
    return ST_OK;
}

/* The empty pattern compiled in UTF mode: matching it makes PCRE2 validate
 * the whole subject first. Compiled once per process. */
static pcre2_code *utf8_code;
static pthread_once_t utf8_once = PTHREAD_ONCE_INIT;

static void utf8_compile(void)
{
    int ecode = 0;
    PCRE2_SIZE eoff = 0;
    utf8_code = pcre2_compile((PCRE2_SPTR) "", 0, PCRE2_UTF | PCRE2_ANCHORED, &ecode, &eoff, NULL);
}

int st_utf8_valid(const char *s, size_t n, size_t *bad, char *why, size_t why_cap)
{
    *bad = 0;
    if (why_cap) why[0] = '\0';
    pthread_once(&utf8_once, utf8_compile);
    pcre2_match_data *md = utf8_code ? pcre2_match_data_create(1, NULL) : NULL;
    if (!md) {
        if (why_cap) snprintf(why, why_cap, "out of memory checking UTF-8");
        return 0;
    }
    int rc = pcre2_match(utf8_code, (PCRE2_SPTR)s, n, 0, 0, md, NULL);
    int ok = !(rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21);
    if (!ok) {
        *bad = pcre2_get_startchar(md);
        if (why_cap) pcre2_get_error_message(rc, (PCRE2_UCHAR *)why, why_cap);
    }
    pcre2_match_data_free(md);
    return ok;
}

char *st_utf8_repair(const char *s, size_t n)
{
    char *out = malloc(3 * n + 1), *w = out; /* each byte at most U+FFFD's 3 */
    if (!out) return NULL;
    size_t at = 0, bad = 0;
    while (at < n) {
        const int ok = st_utf8_valid(s + at, n - at, &bad, NULL, 0);
        const size_t good = ok ? n - at : bad;
        memcpy(w, s + at, good);
        w += good, at += good;
        if (ok) break;
        memcpy(w, "\xEF\xBF\xBD", 3);
        w += 3, at++;
    }
    *w = '\0';
    return out;
}

uint64_t st_hash_bytes(const void *s, size_t n, uint64_t seed)
{
    const unsigned char *p = s;
    uint64_t h = 1469598103934665603ULL ^ st_splitmix64(seed); /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return st_splitmix64(h);
}
