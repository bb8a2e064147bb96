/* jsonl.h: reading text files line by line, plain or gzip, and the checks
 * every outside line goes through (JSON syntax, UTF-8).
 *
 * st_lines reads any file zlib can open (gzip is detected from the content,
 * plain files pass through), one line at a time with no length limit other
 * than ST_LINE_MAX, so a hostile file cannot make us allocate without bound.
 * Line numbers start at 1 and count every line, blank ones included, so an
 * error message points at the line a text editor shows.
 */
#ifndef ST_JSONL_H
#define ST_JSONL_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "core/err.h"

/* The longest line we accept (bytes). */
#define ST_LINE_MAX ((size_t)1 << 30)

typedef struct st_lines st_lines;

st_err st_lines_open(st_lines **out, const char *path);
/* The next line without its '\n' (a '\r' before it is kept), NUL-terminated
 * at line[len]; the text may itself contain NUL bytes, so use len. The
 * pointer is valid until the next call. *eof = 1 (and no line) at the end. */
st_err st_lines_next(st_lines *r, const char **line, size_t *len, int *eof);
/* Number of the line last returned (1-based). */
int64_t st_lines_lineno(const st_lines *r);
const char *st_lines_path(const st_lines *r);
void st_lines_close(st_lines *r);

/* 1 when the line holds only spaces, tabs and '\r'. */
int st_line_blank(const char *line, size_t len);

/* Parse one JSON value that must fill the whole line (trailing whitespace
 * allowed). On failure: ST_ERR_FORMAT "PATH:LINE: malformed JSON at column C
 * (near '...')". *out is freed with cJSON_Delete. */
st_err st_json_parse_line(cJSON **out, const char *line, size_t len, const char *path,
                          int64_t lineno);

/* Whether s[0..n) is well-formed UTF-8 (no overlong forms, no surrogates,
 * nothing above U+10FFFF), checked by PCRE2. Returns 1 when valid; else 0
 * with the byte offset of the first bad sequence in *bad and PCRE2's reason
 * in why (a buffer of why_cap bytes). */
int st_utf8_valid(const char *s, size_t n, size_t *bad, char *why, size_t why_cap);
/* s[0..n) with each byte of a malformed UTF-8 sequence replaced by U+FFFD,
 * malloc'd and NUL-terminated (NULL: out of memory): for text that goes
 * into JSON but did not come from it, such as a model's answer, which can
 * stop inside a character or hold a tokenizer's lone byte tokens. */
char *st_utf8_repair(const char *s, size_t n);

/* 64-bit hash of s[0..n) under a seed (FNV-1a mixed through splitmix64). */
uint64_t st_hash_bytes(const void *s, size_t n, uint64_t seed);

#endif
