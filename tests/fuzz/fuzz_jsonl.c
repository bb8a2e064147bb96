/* fuzz_jsonl.c: libFuzzer harness for the input side of `shardtune prepare`
 * (io/jsonl, io/csv, io/template). Not part of make check.
 *
 * Build and run by hand from the repo root:
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Iio \
 *     $(pkg-config --cflags libcjson libpcre2-8) tests/fuzz/fuzz_jsonl.c io/jsonl.c io/csv.c \
 *     io/chat/template.c io/tok/tokenizer.c io/tok_*.c src/core/err.c src/core/rng.c \
 *     $(pkg-config --libs libcjson libpcre2-8) -lz -lm -o /tmp/fuzz_jsonl
 *   /tmp/fuzz_jsonl -max_total_time=300 /tmp/fuzz_jsonl_corpus
 *
 * The first input byte picks the reader, the rest is the file's content
 * (plain or gzip: zlib detects the magic):
 *   even  JSONL: every line is parsed; string fields that are valid UTF-8 go
 *         through the default template and the max-length policy, whose
 *         invariants are checked (length bound, mask values, response kept)
 *   odd   CSV with a header: every record is split; a record that reads must
 *         have as many fields as the header, each inside the record buffer
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "io/chat/template.h"
#include "io/csv.h"
#include "io/jsonl.h"
#include "io/tok/tokenizer.h"

static st_tokenizer *byte_tok;

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "invariant broken: %s\n", what);
        abort();
    }
}

/* The string field name of obj if present and valid UTF-8, else NULL. */
static const char *utf8_field(const cJSON *obj, const char *name, size_t *n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!cJSON_IsString(v) || !v->valuestring) return NULL;
    size_t bad;
    char why[64];
    *n = strlen(v->valuestring);
    return st_utf8_valid(v->valuestring, *n, &bad, why, sizeof why) ? v->valuestring : NULL;
}

static void render(const cJSON *obj, size_t max_len)
{
    size_t np = 0, nr = 0;
    const char *p = utf8_field(obj, "prompt", &np), *r = utf8_field(obj, "response", &nr);
    if (!p || !r) return;
    st_turn t[2] = {{ST_ROLE_USER, p, np}, {ST_ROLE_ASSISTANT, r, nr}};
    st_tokseq s = {0};
    if (st_template_render(&s, st_template_find("default"), byte_tok, t, 2) == ST_OK) {
        size_t resp = s.n - s.resp_start;
        int cut_p, cut_r;
        st_tokseq_fit(&s, max_len, 0, &cut_p, &cut_r);
        check(s.n <= max_len, "fit exceeds max_len");
        check(s.resp_start <= s.n, "resp_start past the end");
        check(cut_r == (resp > max_len), "response cut iff it alone is too long");
        check(s.n - s.resp_start == (cut_r ? max_len : resp), "response kept whole when it fits");
        for (size_t i = 0; i < s.n; i++) check(s.mask[i] == (i >= s.resp_start), "mask is the response");
    }
    st_tokseq_free(&s);
    st_error_clear();
}

static void fuzz_jsonl(const char *path, size_t max_len)
{
    st_lines *r;
    if (st_lines_open(&r, path)) return;
    const char *line;
    size_t len;
    int eof = 0;
    while (st_lines_next(r, &line, &len, &eof) == ST_OK && !eof) {
        check(line[len] == '\0', "line not terminated");
        cJSON *obj = NULL;
        if (st_json_parse_line(&obj, line, len, path, st_lines_lineno(r)) == ST_OK) {
            if (cJSON_IsObject(obj)) render(obj, max_len);
            cJSON_Delete(obj);
        }
        st_error_clear();
    }
    st_lines_close(r);
    st_error_clear();
}

static void fuzz_csv(const char *path)
{
    st_csv *c;
    if (st_csv_open(&c, path)) {
        st_error_clear();
        return;
    }
    int eof = 0;
    for (int k = 0; k < 100000; k++) {
        st_err e = st_csv_next(c, &eof);
        if (eof || (e && e != ST_ERR_FORMAT)) break;
        if (!e) {
            size_t raw_n, n;
            st_csv_raw(c, &raw_n);
            for (int i = 0; i < st_csv_num_cols(c); i++) {
                const char *f = st_csv_field(c, i, &n);
                check(f[n] == '\0' && n <= raw_n, "field outside its record");
            }
        }
        st_error_clear();
    }
    st_csv_close(c);
    st_error_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (!byte_tok && st_tokenizer_load(&byte_tok, "byte") != ST_OK) abort();
    int fd = memfd_create("fuzz", 0);
    if (fd < 0) abort();
    if (size > 1 && write(fd, data + 1, size - 1) != (ssize_t)(size - 1)) abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (data[0] % 2 == 0) fuzz_jsonl(path, 2 + data[0] / 2);
    else fuzz_csv(path);
    close(fd);
    return 0;
}
