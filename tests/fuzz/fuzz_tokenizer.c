/* fuzz_tokenizer.c: libFuzzer harness for io/tokenizer (not part of make check).
 *
 * Build and run by hand from the repo root:
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
 *     -fno-sanitize-recover=undefined -Isrc -Iio \
 *     $(pkg-config --cflags libcjson libpcre2-8) tests/fuzz/fuzz_tokenizer.c io/tok/tokenizer.c \
 *     io/tok_*.c src/core/err.c $(pkg-config --libs libcjson libpcre2-8) -lm -o /tmp/fuzz_tokenizer
 *   /tmp/fuzz_tokenizer -max_total_time=300 /tmp/fuzz_corpus
 *
 * The first input byte picks a mode:
 *   0-4  the rest is the file content of a byte / gpt2 / hf / llama2c / llmc
 *        blob (gpt2 splits it at the first 0xFF into encoder.json and
 *        vocab.bpe); a tokenizer that loads must then encode and decode
 *        without trouble
 *   5    the rest is a raw blob (framing), kind from the next byte
 *   6    the rest is text for the byte, gpt2 (data/gpt2-bpe from the
 *        repository root or $SHARDTUNE_ROOT, if present) and a small
 *        llama2c tokenizer; valid UTF-8 must round-trip exactly
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/tok/tokenizer.h"

static const char *const kinds[] = {"byte", "gpt2", "hf", "llama2c", "llmc"};

static void put(uint8_t **p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) *(*p)++ = (uint8_t)(v >> (8 * i));
}

/* A blob in st_tokenizer_to_blob's framing around up to two files. */
static uint8_t *frame(const uint8_t *f0, size_t n0, const uint8_t *f1, size_t n1, int nfiles, size_t *n)
{
    *n = 12 + 8 * (size_t)nfiles + n0 + n1;
    uint8_t *b = malloc(*n), *p = b;
    put(&p, 0x4B4F5453u, 4);
    put(&p, 1, 4);
    put(&p, (uint64_t)nfiles, 4);
    if (nfiles > 0) put(&p, n0, 8), p = n0 ? (uint8_t *)memcpy(p, f0, n0) + n0 : p;
    if (nfiles > 1) put(&p, n1, 8), p = n1 ? (uint8_t *)memcpy(p, f1, n1) + n1 : p;
    return b;
}

/* Encode then decode. check: a well-formed tokenizer, so valid UTF-8 encoded
 * without specials must come back exactly (hostile vocabularies need not). */
static void exercise(const st_tokenizer *t, const char *text, size_t len, int check)
{
    for (int allow = 0; allow < 2; allow++) {
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        st_err e = st_tokenizer_encode(t, text, len, allow, &ids, &n, &cap);
        if (e == ST_OK) {
            char *out = NULL;
            size_t m = 0;
            if (st_tokenizer_decode(t, ids, n, &out, &m) == ST_OK) {
                if (check && !allow && (m != len || memcmp(out, text, len) != 0)) {
                    fprintf(stderr, "round trip mismatch (%zu -> %zu ids -> %zu bytes)\n", len, n, m);
                    abort();
                }
                free(out);
            } else if (check) {
                fprintf(stderr, "decode of fresh ids failed: %s\n", st_error_message());
                abort();
            }
        }
        free(ids);
    }
}

static void put_piece(uint8_t **p, const char *s, float score)
{
    uint32_t u;
    memcpy(&u, &score, 4);
    put(p, u, 4);
    put(p, strlen(s), 4);
    memcpy(*p, s, strlen(s));
    *p += strlen(s);
}

static st_tokenizer *small_llama2c(void)
{
    static uint8_t buf[8192];
    uint8_t *p = buf;
    put(&p, 8, 4);
    put_piece(&p, "<unk>", 0);
    put_piece(&p, "\n<s>\n", 0);
    put_piece(&p, "\n</s>\n", 0);
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof(s), "<0x%02X>", b);
        put_piece(&p, s, 0);
    }
    static const char *const pieces[] = {" ", "a", "b", "ab", " a", " ab", "e", "th", " the", "the", "he", " t"};
    for (int i = 0; i < 12; i++) put_piece(&p, pieces[i], -(float)i);
    size_t n;
    uint8_t *blob = frame(buf, (size_t)(p - buf), NULL, 0, 1, &n);
    st_tokenizer *t = NULL;
    if (st_tokenizer_from_blob(&t, "llama2c", blob, n)) abort();
    free(blob);
    return t;
}

static st_tokenizer *gpt2(void)
{
    char spec[4200];
    const char *root = getenv("SHARDTUNE_ROOT");
    st_tokenizer *t = NULL;
    if (st_tokenizer_load(&t, "gpt2:data/gpt2-bpe") == ST_OK) return t;
    if (root) {
        snprintf(spec, sizeof(spec), "gpt2:%s/data/gpt2-bpe", root);
        if (st_tokenizer_load(&t, spec) == ST_OK) return t;
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static st_tokenizer *text_tok[3];
    static int ready;
    if (!ready) {
        if (st_tokenizer_load(&text_tok[0], "byte")) abort();
        text_tok[1] = small_llama2c();
        text_tok[2] = gpt2();   /* NULL when the data is not there */
        ready = 1;
    }
    if (size < 1) return 0;
    int mode = data[0] % 7;
    data++, size--;
    if (mode == 6) {
        for (int i = 0; i < 3; i++)
            if (text_tok[i]) exercise(text_tok[i], (const char *)data, size, 1);
        return 0;
    }
    st_tokenizer *t = NULL;
    if (mode == 5) {
        if (size < 1) return 0;
        st_tokenizer_from_blob(&t, kinds[data[0] % 5], data + 1, size - 1);
    } else {
        size_t n, split = size;
        const uint8_t *ff = mode == 1 ? memchr(data, 0xFF, size) : NULL;
        if (ff) split = (size_t)(ff - data);
        uint8_t *blob = mode == 1 ? frame(data, split, ff ? ff + 1 : data, ff ? size - split - 1 : 0, 2, &n)
                      : mode == 2 ? frame(data, size, NULL, 0, 2, &n)
                      : frame(data, size, NULL, 0, mode == 0 ? 0 : 1, &n);
        st_tokenizer_from_blob(&t, kinds[mode], blob, n);
        free(blob);
    }
    if (t) {
        static const char text[] = "Hello <|endoftext|> w\xc3\xb6rld 123  \n\xe4\xb8\xad <s>ab</s>";
        exercise(t, text, sizeof(text) - 1, 0);
        st_tokenizer_free(t);
    }
    return 0;
}
