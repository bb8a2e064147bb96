/* test_tokenizer.c: io/tokenizer against independently known encodings.
 *
 * GPT-2 expected ids were computed with a separate Python implementation of
 * OpenAI's encoder.py (the rank-min merge loop) over the same encoder.json and
 * vocab.bpe, and spot-checked by hand ("Hello" = 15496 and "Ġworld" = 995 in
 * encoder.json; Ġworld from the merges "Ġ w", "o r", "l d", "Ġw or",
 * "Ġwor ld"). Fixture encodings (HF, llama2c) are worked out by hand in the
 * comments next to them.
 */
#include <check.h>
#include <cjson/cJSON.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "harness.h"
#include "io/chat/template.h"
#include "io/tok/tokenizer.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ---- */

static st_tokenizer *load_ok(const char *spec)
{
    st_tokenizer *t = NULL;
    st_err e = st_tokenizer_load(&t, spec);
    ck_assert_msg(e == ST_OK && t, "loading %s failed: %s", spec, st_error_message());
    return t;
}

static st_tokenizer *load_gpt2(void)
{
    char spec[4200];
    snprintf(spec, sizeof(spec), "gpt2:%s", th_data_path("gpt2-bpe"));
    return load_ok(spec);
}

/* Encode into a fresh array; returns the count. */
static size_t enc(const st_tokenizer *t, const char *text, size_t len, int allow, int32_t **ids)
{
    size_t n = 0, cap = 0;
    *ids = NULL;
    st_err e = st_tokenizer_encode(t, text, len, allow, ids, &n, &cap);
    ck_assert_msg(e == ST_OK, "encode \"%.40s\" failed: %s", text, st_error_message());
    ck_assert(n <= cap);
    return n;
}

static void expect_ids(const st_tokenizer *t, const char *text, int allow, const int32_t *want, size_t nwant)
{
    int32_t *ids;
    size_t n = enc(t, text, strlen(text), allow, &ids);
    ck_assert_msg(n == nwant, "\"%s\": %zu ids, expected %zu", text, n, nwant);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(ids[i] == want[i], "\"%s\": id %zu is %d, expected %d", text, i, ids[i], want[i]);
    free(ids);
}

static char *dec(const st_tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    char *out = NULL;
    st_err e = st_tokenizer_decode(t, ids, n, &out, len);
    ck_assert_msg(e == ST_OK, "decode failed: %s", st_error_message());
    ck_assert(out[*len] == '\0');
    return out;
}

static void expect_roundtrip(const st_tokenizer *t, const char *text, size_t len)
{
    int32_t *ids;
    size_t n = enc(t, text, len, 0, &ids), m;
    char *out = dec(t, ids, n, &m);
    ck_assert_msg(m == len && memcmp(out, text, len) == 0, "round trip of \"%.40s\" gave \"%.40s\"", text, out);
    free(out);
    free(ids);
}

static void expect_fail(st_err got, st_err want, const char *needle)
{
    ck_assert_msg(got == want, "expected error %d, got %d (%s)", want, got, st_error_message());
    if (needle)
        ck_assert_msg(strstr(st_error_message(), needle), "message lacks \"%s\": %s", needle, st_error_message());
}

static char *make_tmpdir(void)
{
    char *d = strdup("/tmp/st_tok_XXXXXX");
    ck_assert(d && mkdtemp(d));
    return d;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void rm_tree(char *dir)
{
    nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

static char *path_in(const char *dir, const char *name)
{
    char *p = NULL;
    ck_assert(asprintf(&p, "%s/%s", dir, name) > 0);
    return p;
}

static void write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char *p = path_in(dir, name);
    th_write_file(p, data, len);
    free(p);
}

static st_tokenizer *load_in(const char *kind, const char *dir, const char *name)
{
    char *spec = NULL;
    ck_assert(asprintf(&spec, "%s:%s/%s", kind, dir, name) > 0);
    st_tokenizer *t = load_ok(spec);
    free(spec);
    return t;
}

static st_err try_load_in(const char *kind, const char *dir, const char *name)
{
    char *spec = NULL;
    st_tokenizer *t = NULL;
    ck_assert(asprintf(&spec, "%s:%s/%s", kind, dir, name) > 0);
    st_err e = st_tokenizer_load(&t, spec);
    ck_assert(e != ST_OK || t);
    st_tokenizer_free(t);
    free(spec);
    return e;
}

static const char paragraph[] =
    "The quick brown fox jumps over the lazy dog. It's 2024; we've got 1,234,567 reasons\n\n"
    "  to   tokenize   spacing, TABS\tand \"quotes\" -- plus caf\xc3\xa9, na\xc3\xafve, \xe4\xb8\xad\xe6\x96\x87, "
    "\xd8\xa7\xd9\x84\xd8\xb9\xd8\xb1\xd8\xa8\xd9\x8a\xd8\xa9 and \xf0\x9f\x98\x80\xf0\x9f\x91\x8d!   \n";

/* ---- GPT-2 ---- */

START_TEST(gpt2_known_ids)
{
    st_tokenizer *t = load_gpt2();
    ck_assert_int_eq(st_tokenizer_vocab_size(t), 50257);
    ck_assert_int_eq(st_tokenizer_eos(t), 50256);
    ck_assert_int_eq(st_tokenizer_bos(t), 50256);
    ck_assert_int_eq(st_tokenizer_token_id(t, "Hello"), 15496);
    ck_assert_int_eq(st_tokenizer_token_id(t, "\xc4\xa0world"), 995);   /* "Ġworld" */
    ck_assert_int_eq(st_tokenizer_token_id(t, "<|endoftext|>"), 50256);
    ck_assert_int_eq(st_tokenizer_token_id(t, "no-such-token-here"), -1);
    ck_assert_ptr_null(st_tokenizer_chat_template(t));

    static const int32_t hello[] = {15496, 995};
    expect_ids(t, "Hello world", 0, hello, 2);
    static const int32_t hello2[] = {15496, 11, 995, 0};
    expect_ids(t, "Hello, world!", 0, hello2, 4);
    static const int32_t mixed[] = {40, 1101, 994, 13, 632, 338, 48609, 290, 356, 1053, 17031, 2231, 5254};
    expect_ids(t, "I'm here. It's 2024 and we've 12345 tests", 0, mixed, N_OF(mixed));
    static const int32_t spaces[] = {220, 3756, 220, 9029, 220, 220};
    expect_ids(t, "  leading  spaces  ", 0, spaces, N_OF(spaces));

    /* text need not be NUL-terminated; ids append to what is there */
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    ck_assert_int_eq(st_tokenizer_encode(t, "Hello worldXYZ", 11, 0, &ids, &n, &cap), ST_OK);
    ck_assert_int_eq(st_tokenizer_encode(t, "Hello", 5, 0, &ids, &n, &cap), ST_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert(ids[0] == 15496 && ids[1] == 995 && ids[2] == 15496);
    free(ids);
    st_tokenizer_free(t);
}
END_TEST

START_TEST(gpt2_special_tokens)
{
    st_tokenizer *t = load_gpt2();
    static const int32_t special[] = {64, 50256, 65};
    expect_ids(t, "a<|endoftext|>b", 1, special, 3);
    static const int32_t literal[] = {64, 27, 91, 437, 1659, 5239, 91, 29, 65};   /* "<", "|", "end", "of", "text", "|", ">" */
    expect_ids(t, "a<|endoftext|>b", 0, literal, N_OF(literal));
    static const int32_t only[] = {50256};
    expect_ids(t, "<|endoftext|>", 1, only, 1);
    size_t len;
    char *s = dec(t, special, 3, &len);
    ck_assert_str_eq(s, "a<|endoftext|>b");
    free(s);
    st_tokenizer_free(t);
}
END_TEST

START_TEST(gpt2_empty)
{
    st_tokenizer *t = load_gpt2();
    int32_t *ids = NULL;
    size_t n = 0, cap = 0, len;
    ck_assert_int_eq(st_tokenizer_encode(t, "", 0, 1, &ids, &n, &cap), ST_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(st_tokenizer_encode(t, NULL, 0, 0, &ids, &n, &cap), ST_OK);
    ck_assert_uint_eq(n, 0);
    char *s = dec(t, NULL, 0, &len);
    ck_assert_uint_eq(len, 0);
    ck_assert_str_eq(s, "");
    free(s);
    free(ids);
    st_tokenizer_free(t);
}
END_TEST

/* 100 KB runs: one pre-token each, must merge in O(n log n). */
START_TEST(gpt2_long_runs)
{
    st_tokenizer *t = load_gpt2();
    size_t N = 100000;
    char *s = malloc(N + 2);
    int32_t *ids;

    memset(s, ' ', N);   /* spaces then "x": 99999 x "Ġ" (220), then "Ġx" (2124) */
    s[N] = 'x';
    size_t n = enc(t, s, N + 1, 0, &ids);
    ck_assert_uint_eq(n, N);
    for (size_t i = 0; i + 1 < n; i++) ck_assert_int_eq(ids[i], 220);
    ck_assert_int_eq(ids[n - 1], 2124);
    free(ids);
    expect_roundtrip(t, s, N + 1);

    memset(s, '7', N);   /* "7" x 100000: 50000 x "77" (3324) */
    n = enc(t, s, N, 0, &ids);
    ck_assert_uint_eq(n, N / 2);
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(ids[i], 3324);
    free(ids);

    memset(s, '1', N - 1);   /* "1" x 99999: 24999 x "1111" (26259), then "111" (16243) */
    n = enc(t, s, N - 1, 0, &ids);
    ck_assert_uint_eq(n, 25000);
    for (size_t i = 0; i + 1 < n; i++) ck_assert_int_eq(ids[i], 26259);
    ck_assert_int_eq(ids[n - 1], 16243);
    free(ids);

    /* 1000 newlines then "end": "\s+(?!\S)" takes 999 (499 x "\n\n" (628) + "\n" (198)),
     * then "\n" (198) alone and "end" (437) */
    memset(s, '\n', 1000);
    memcpy(s + 1000, "end", 3);
    n = enc(t, s, 1003, 0, &ids);
    ck_assert_uint_eq(n, 502);
    for (size_t i = 0; i < 499; i++) ck_assert_int_eq(ids[i], 628);
    ck_assert(ids[499] == 198 && ids[500] == 198 && ids[501] == 437);
    free(ids);
    free(s);
    st_tokenizer_free(t);
}
END_TEST

START_TEST(gpt2_scripts)
{
    st_tokenizer *t = load_gpt2();
    static const int32_t zh[] = {40792, 23877, 229, 38184, 233, 46237, 243};
    expect_ids(t, "\xe4\xb8\xad\xe6\x96\x87\xe6\xb5\x8b\xe8\xaf\x95", 0, zh, N_OF(zh));   /* 中文测试 */
    static const int32_t ar[] = {25405, 26897, 148, 255, 39848, 12919};
    expect_ids(t, "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7", 0, ar, N_OF(ar));           /* مرحبا */
    static const int32_t emoji[] = {47249, 222, 44805};
    expect_ids(t, "\xf0\x9f\x98\x80 emoji", 0, emoji, N_OF(emoji));                        /* 😀 emoji */
    static const char *const texts[] = {
        "\xe4\xb8\xad\xe6\x96\x87\xe6\xb5\x8b\xe8\xaf\x95\xef\xbc\x8c\xe6\x98\xaf\xe7\x9a\x84\xe3\x80\x82",
        "\xd8\xa7\xd9\x84\xd8\xb3\xd9\x84\xd8\xa7\xd9\x85 \xd8\xb9\xd9\x84\xd9\x8a\xd9\x83\xd9\x85",
        "\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x92\xbb \xf0\x9f\x87\xaf\xf0\x9f\x87\xb5 \xe2\x9d\xa4\xef\xb8\x8f",
        "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82, \xce\xba\xcf\x8c\xcf\x83\xce\xbc\xce\xb5 \xe0\xa4\xa8\xe0\xa4\xae\xe0\xa4\xb8\xe0\xa5\x8d\xe0\xa4\xa4\xe0\xa5\x87",
        paragraph,
    };
    for (size_t i = 0; i < N_OF(texts); i++) expect_roundtrip(t, texts[i], strlen(texts[i]));
    st_tokenizer_free(t);
}
END_TEST

START_TEST(gpt2_invalid_utf8)
{
    st_tokenizer *t = load_gpt2();
    static const struct { const char *s; const char *where; } bad[] = {
        {"ab\xff", "byte offset 2"},               /* never valid */
        {"hello \xe4\xb8", "byte offset 6"},       /* truncated 3-byte character */
        {"\xc0\xaf", "byte offset 0"},             /* overlong '/' */
        {"x\xed\xa0\x80", "byte offset 1"},        /* UTF-16 surrogate */
        {"ok \xf4\x90\x80\x80", "byte offset 3"},  /* past U+10FFFF */
        {"abc\x80", "byte offset 3"},              /* stray continuation byte */
    };
    for (size_t i = 0; i < N_OF(bad); i++) {
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        expect_fail(st_tokenizer_encode(t, bad[i].s, strlen(bad[i].s), 0, &ids, &n, &cap), ST_ERR_FORMAT,
                    bad[i].where);
        free(ids);
    }
    st_tokenizer_free(t);
}
END_TEST

START_TEST(decode_bad_ids)
{
    st_tokenizer *t = load_gpt2();
    int32_t ids[] = {15496, 50257};
    char *out = NULL;
    size_t len;
    expect_fail(st_tokenizer_decode(t, ids, 2, &out, &len), ST_ERR_ARG, "50257");
    ids[1] = -3;
    expect_fail(st_tokenizer_decode(t, ids, 2, &out, &len), ST_ERR_ARG, "-3");
    ck_assert_ptr_null(out);
    st_tokenizer_free(t);
}
END_TEST

/* ---- byte ---- */

START_TEST(byte_roundtrip)
{
    st_tokenizer *t = load_ok("byte");
    ck_assert_int_eq(st_tokenizer_vocab_size(t), 257);
    ck_assert_int_eq(st_tokenizer_eos(t), 256);
    ck_assert_int_eq(st_tokenizer_bos(t), 256);
    ck_assert_int_eq(st_tokenizer_token_id(t, "A"), 65);
    ck_assert_int_eq(st_tokenizer_token_id(t, "<|endoftext|>"), 256);
    static const char text[] = "h\xc3\xa9llo\0w";   /* with an embedded NUL */
    int32_t *ids;
    size_t n = enc(t, text, sizeof(text) - 1, 0, &ids);
    ck_assert_uint_eq(n, sizeof(text) - 1);
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(ids[i], (unsigned char)text[i]);
    free(ids);
    expect_roundtrip(t, text, sizeof(text) - 1);
    static const int32_t sp[] = {'a', 256, 'b'};
    expect_ids(t, "a<|endoftext|>b", 1, sp, 3);
    n = enc(t, "a<|endoftext|>b", 15, 0, &ids);
    ck_assert_uint_eq(n, 15);
    free(ids);
    st_tokenizer_free(t);
}
END_TEST

/* ---- Hugging Face tokenizer.json ---- */

/* A small byte-level BPE: ids 0..255 are the bytes (id = byte value), then
 *   256 "he" (h e)   257 "ll" (l l)   258 "hell" (he ll)   259 "hello" (hell o)
 *   260 "Ġw" (Ġ w)   261 "or" (o r)   262 "Ġwor" (Ġw or)   263 "xyz" (no merge)
 *   264 "<|sep|>" special added token, 265 "<|tool|>" non-special added token.
 * Split regex: letters with an optional leading space, single digits, spaces,
 * other runs. opts: bit 0 merges as arrays, bit 1 ignore_merges, bit 2
 * ByteLevel add_prefix_space, bit 3 tokenizer_config-free chat_template. */
static char *hf_fixture(int opts)
{
    cJSON *root = cJSON_CreateObject(), *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    cJSON *merges = cJSON_CreateArray(), *added = cJSON_CreateArray();
    for (int b = 0; b < 256; b++) {
        char c[3];
        th_gpt2_stand_in(b, c);
        cJSON_AddNumberToObject(vocab, c, b);
    }
    static const char *const words[] = {"he", "ll", "hell", "hello", "\xc4\xa0w", "or", "\xc4\xa0wor", "xyz"};
    for (int i = 0; i < 8; i++) cJSON_AddNumberToObject(vocab, words[i], 256 + i);
    static const char *const pairs[][2] = {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"},
                                           {"\xc4\xa0", "w"}, {"o", "r"}, {"\xc4\xa0w", "or"}};
    for (int i = 0; i < 7; i++) {
        if (opts & 1) {
            cJSON *p = cJSON_CreateArray();
            cJSON_AddItemToArray(p, cJSON_CreateString(pairs[i][0]));
            cJSON_AddItemToArray(p, cJSON_CreateString(pairs[i][1]));
            cJSON_AddItemToArray(merges, p);
        } else {
            char m[32];
            snprintf(m, sizeof(m), "%s %s", pairs[i][0], pairs[i][1]);
            cJSON_AddItemToArray(merges, cJSON_CreateString(m));
        }
    }
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddBoolToObject(model, "byte_fallback", 0);
    cJSON_AddBoolToObject(model, "ignore_merges", (opts & 2) != 0);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    static const char *const at[] = {"<|sep|>", "<|tool|>"};
    for (int i = 0; i < 2; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", 264 + i);
        cJSON_AddStringToObject(a, "content", at[i]);
        cJSON_AddBoolToObject(a, "single_word", 0);
        cJSON_AddBoolToObject(a, "lstrip", 0);
        cJSON_AddBoolToObject(a, "rstrip", 0);
        cJSON_AddBoolToObject(a, "normalized", 0);
        cJSON_AddBoolToObject(a, "special", i == 0);
        cJSON_AddItemToArray(added, a);
    }
    cJSON *split = cJSON_CreateObject(), *pat = cJSON_CreateObject(), *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(pat, "Regex", " ?\\p{L}+|\\p{N}|\\s+|[^\\s\\p{L}\\p{N}]+");
    cJSON_AddItemToObject(split, "pattern", pat);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddBoolToObject(split, "invert", 0);
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", (opts & 4) != 0);
    cJSON_AddBoolToObject(bl, "trim_offsets", 1);
    cJSON_AddBoolToObject(bl, "use_regex", 0);
    cJSON *seq = cJSON_CreateObject(), *list = cJSON_CreateArray();
    cJSON_AddStringToObject(seq, "type", "Sequence");
    cJSON_AddItemToArray(list, split);
    cJSON_AddItemToArray(list, bl);
    cJSON_AddItemToObject(seq, "pretokenizers", list);
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", seq);
    cJSON_AddNullToObject(root, "post_processor");
    cJSON_AddItemToObject(root, "model", model);
    if (opts & 8) cJSON_AddStringToObject(root, "chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

static st_tokenizer *load_hf_fixture(int opts)
{
    char *dir = make_tmpdir(), *json = hf_fixture(opts);
    write_file(dir, "tokenizer.json", json, strlen(json));
    st_tokenizer *t = load_in("hf", dir, "tokenizer.json");
    free(json);
    rm_tree(dir);
    return t;
}

START_TEST(hf_fixture_encodes)
{
    st_tokenizer *t = load_hf_fixture(0);
    ck_assert_int_eq(st_tokenizer_vocab_size(t), 266);
    ck_assert_int_eq(st_tokenizer_eos(t), -1);
    ck_assert_int_eq(st_tokenizer_bos(t), -1);
    ck_assert_int_eq(st_tokenizer_token_id(t, "<|sep|>"), 264);
    ck_assert_int_eq(st_tokenizer_token_id(t, "hello"), 259);
    /* "hello" -> he, ll, hell, hello; " world" -> Ġ w o r l d -> Ġw, or, Ġwor + l + d */
    static const int32_t hw[] = {259, 262, 'l', 'd'};
    expect_ids(t, "hello world", 0, hw, 4);
    /* digits split one by one; " 1" has no merge: Ġ (byte 32) + 1 */
    static const int32_t dg[] = {259, 32, '1', '2', '3'};
    expect_ids(t, "hello 123", 0, dg, 5);
    /* special token only with allow_special */
    static const int32_t sp[] = {'h', 'i', 264, 259};
    expect_ids(t, "hi<|sep|>hello", 1, sp, 4);
    static const int32_t lit[] = {'h', 'i', '<', '|', 's', 'e', 'p', '|', '>', 259};
    expect_ids(t, "hi<|sep|>hello", 0, lit, N_OF(lit));
    /* a non-special added token is always matched */
    static const int32_t tool[] = {'x', 265, 'y'};
    expect_ids(t, "x<|tool|>y", 0, tool, 3);
    /* "xyz" is in the vocabulary but no merge makes it */
    static const int32_t xyz[] = {'x', 'y', 'z'};
    expect_ids(t, "xyz", 0, xyz, 3);
    size_t len;
    char *s = dec(t, hw, 4, &len);
    ck_assert_str_eq(s, "hello world");
    free(s);
    expect_roundtrip(t, paragraph, strlen(paragraph));
    ck_assert_ptr_null(st_tokenizer_chat_template(t));
    st_tokenizer_free(t);
}
END_TEST

START_TEST(hf_fixture_variants)
{
    st_tokenizer *base = load_hf_fixture(0), *arr = load_hf_fixture(1);
    static const int32_t hw[] = {259, 262, 'l', 'd'};
    expect_ids(arr, "hello world", 0, hw, 4);   /* [a, b] merges: same model, same hash */
    ck_assert_uint_eq(st_tokenizer_hash(arr), st_tokenizer_hash(base));
    st_tokenizer_free(arr);

    st_tokenizer *ign = load_hf_fixture(2);   /* ignore_merges: a whole word in the vocabulary wins */
    static const int32_t xyz[] = {263};
    expect_ids(ign, "xyz", 0, xyz, 1);
    expect_ids(ign, "hello world", 0, hw, 4);
    ck_assert_uint_ne(st_tokenizer_hash(ign), st_tokenizer_hash(base));
    st_tokenizer_free(ign);

    st_tokenizer *pre = load_hf_fixture(4);   /* add_prefix_space: "hello" is encoded as " hello" */
    static const int32_t ph[] = {32, 259};
    expect_ids(pre, "hello", 0, ph, 2);
    static const int32_t ph2[] = {32, 259, 262, 'l', 'd'};
    expect_ids(pre, "hello world", 0, ph2, 5);
    st_tokenizer_free(pre);

    st_tokenizer *tpl = load_hf_fixture(8);
    ck_assert_str_eq(st_tokenizer_chat_template(tpl), "{% for m in messages %}{{ m.content }}{% endfor %}");
    st_tokenizer_free(tpl);
    st_tokenizer_free(base);
}
END_TEST

START_TEST(hf_config_file)
{
    char *dir = make_tmpdir(), *json = hf_fixture(0);
    write_file(dir, "tokenizer.json", json, strlen(json));
    static const char cfg[] = "{\"bos_token\": {\"content\": \"<|sep|>\", \"special\": true}, \"eos_token\": \"<|tool|>\","
                              " \"chat_template\": \"{{ bos_token }}{{ messages }}\"}";
    write_file(dir, "tokenizer_config.json", cfg, strlen(cfg));
    st_tokenizer *t = load_in("hf", dir, "tokenizer.json");
    ck_assert_int_eq(st_tokenizer_bos(t), 264);
    ck_assert_int_eq(st_tokenizer_eos(t), 265);
    ck_assert_str_eq(st_tokenizer_chat_template(t), "{{ bos_token }}{{ messages }}");

    const char *kind;   /* the blob carries the config too */
    uint8_t *blob;
    size_t n;
    ck_assert_int_eq(st_tokenizer_to_blob(t, &kind, &blob, &n), ST_OK);
    st_tokenizer *u = NULL;
    ck_assert_int_eq(st_tokenizer_from_blob(&u, kind, blob, n), ST_OK);
    ck_assert_int_eq(st_tokenizer_bos(u), 264);
    ck_assert_int_eq(st_tokenizer_eos(u), 265);
    ck_assert_str_eq(st_tokenizer_chat_template(u), "{{ bos_token }}{{ messages }}");
    free(blob);
    st_tokenizer_free(u);
    st_tokenizer_free(t);

    static const char bad[] = "{\"eos_token\": \"<|nope|>\"}";   /* names a token that does not exist */
    write_file(dir, "tokenizer_config.json", bad, strlen(bad));
    expect_fail(try_load_in("hf", dir, "tokenizer.json"), ST_ERR_FORMAT, "<|nope|>");
    free(json);
    rm_tree(dir);
}
END_TEST

/* tokenizer.json equivalent of GPT-2, built from encoder.json + vocab.bpe.
 * pre: NULL for GPT-2's own ByteLevel regex, or a Split regex before a
 * regex-free ByteLevel (Llama 3 style). */
static char *hf_from_gpt2(const char *pre)
{
    char *p = NULL;
    size_t n;
    ck_assert(asprintf(&p, "%s/encoder.json", th_data_path("gpt2-bpe")) > 0);
    char *encj = th_read_file(p, &n);
    free(p);
    ck_assert(asprintf(&p, "%s/vocab.bpe", th_data_path("gpt2-bpe")) > 0);
    char *bpe = th_read_file(p, &n);
    free(p);
    cJSON *root = cJSON_CreateObject(), *model = cJSON_CreateObject(), *merges = cJSON_CreateArray();
    cJSON *vocab = cJSON_Parse(encj);
    ck_assert(vocab);
    for (char *line = strtok(bpe, "\n"); line; line = strtok(NULL, "\n"))
        if (strncmp(line, "#version", 8) != 0) cJSON_AddItemToArray(merges, cJSON_CreateString(line));
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    cJSON *added = cJSON_CreateArray(), *eot = cJSON_CreateObject();
    cJSON_AddNumberToObject(eot, "id", 50256);
    cJSON_AddStringToObject(eot, "content", "<|endoftext|>");
    cJSON_AddBoolToObject(eot, "special", 1);
    cJSON_AddItemToArray(added, eot);
    cJSON *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", 0);
    cJSON_AddBoolToObject(bl, "use_regex", pre == NULL);
    if (pre) {
        cJSON *seq = cJSON_CreateObject(), *list = cJSON_CreateArray(), *split = cJSON_CreateObject();
        cJSON *pat = cJSON_CreateObject();
        cJSON_AddStringToObject(split, "type", "Split");
        cJSON_AddStringToObject(pat, "Regex", pre);
        cJSON_AddItemToObject(split, "pattern", pat);
        cJSON_AddStringToObject(split, "behavior", "Isolated");
        cJSON_AddBoolToObject(split, "invert", 0);
        cJSON_AddStringToObject(seq, "type", "Sequence");
        cJSON_AddItemToArray(list, split);
        cJSON_AddItemToArray(list, bl);
        cJSON_AddItemToObject(seq, "pretokenizers", list);
        bl = seq;
    }
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", bl);
    cJSON_AddItemToObject(root, "model", model);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    free(encj);
    free(bpe);
    return s;
}

START_TEST(hf_matches_gpt2)
{
    st_tokenizer *g = load_gpt2();
    char *dir = make_tmpdir(), *json = hf_from_gpt2(NULL);
    write_file(dir, "tokenizer.json", json, strlen(json));
    st_tokenizer *h = load_in("hf", dir, "tokenizer.json");
    ck_assert_int_eq(st_tokenizer_vocab_size(h), 50257);
    ck_assert_int_eq(st_tokenizer_eos(h), 50256);
    ck_assert_int_eq(st_tokenizer_bos(h), 50256);
    ck_assert_uint_eq(st_tokenizer_hash(h), st_tokenizer_hash(g));
    for (int allow = 0; allow < 2; allow++) {
        static const char text[] = "<|endoftext|>Once upon a time... <|endoftext|>";
        int32_t *a, *b;
        size_t na = enc(g, paragraph, strlen(paragraph), allow, &a);
        size_t nb = enc(h, paragraph, strlen(paragraph), allow, &b);
        ck_assert_uint_eq(na, nb);
        ck_assert(memcmp(a, b, na * sizeof(int32_t)) == 0);
        free(a), free(b);
        na = enc(g, text, strlen(text), allow, &a);
        nb = enc(h, text, strlen(text), allow, &b);
        ck_assert_uint_eq(na, nb);
        ck_assert(memcmp(a, b, na * sizeof(int32_t)) == 0);
        free(a), free(b);
    }
    st_tokenizer_free(h);
    free(json);
    rm_tree(dir);
    st_tokenizer_free(g);
}
END_TEST

/* Llama 3's pre-tokenizer regex (Split inside a Sequence) over GPT-2's
 * vocabulary; expected ids from the Python reference with that regex. */
START_TEST(hf_llama3_split)
{
    static const char l3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    char *dir = make_tmpdir(), *json = hf_from_gpt2(l3);
    write_file(dir, "tokenizer.json", json, strlen(json));
    st_tokenizer *h = load_in("hf", dir, "tokenizer.json");
    /* digits go in threes: " " (220), "123" (10163), "45" (2231); GPT-2's own regex gives " 123"+"45" */
    static const int32_t want[] = {40, 6, 44, 994, 25, 220, 10163, 2231, 22514, 11, 628, 220, 290, 3336, 6, 50,
                                   220, 22, 279, 4127, 0};
    expect_ids(h, "I'M here: 12345 apples,\n\n  and THE'S 7 pears!", 0, want, N_OF(want));
    st_tokenizer *g = load_gpt2();
    ck_assert_uint_ne(st_tokenizer_hash(h), st_tokenizer_hash(g));
    st_tokenizer_free(g);
    st_tokenizer_free(h);
    free(json);
    rm_tree(dir);
}
END_TEST

/* GPT-2's vocabulary with the normalizer given as JSON. */
static st_tokenizer *hf_gpt2_normalized(const char *dir, const char *normalizer)
{
    char *json = hf_from_gpt2(NULL), *at = strstr(json, "\"normalizer\":null"), *m = NULL;
    ck_assert(at);
    ck_assert(asprintf(&m, "%.*s\"normalizer\":%s%s", (int)(at - json), json, normalizer,
                       at + strlen("\"normalizer\":null")) > 0);
    write_file(dir, "tokenizer.json", m, strlen(m));
    free(json), free(m);
    return load_in("hf", dir, "tokenizer.json");
}

/* h's ids for raw equal g's for want (continuing: encode_more for h). */
static void expect_normalized(const st_tokenizer *h, const st_tokenizer *g, const char *raw, const char *want,
                              int continuing)
{
    int32_t *a = NULL, *b;
    size_t na = 0, cap = 0;
    st_err e = continuing ? st_tokenizer_encode_more(h, raw, strlen(raw), 0, &a, &na, &cap)
                          : st_tokenizer_encode(h, raw, strlen(raw), 0, &a, &na, &cap);
    ck_assert_msg(e == ST_OK, "%s", st_error_message());
    size_t nb = enc(g, want, strlen(want), 0, &b);
    ck_assert_msg(na == nb && (!na || !memcmp(a, b, na * sizeof *a)), "\"%s\": %zu ids, \"%s\" %zu", raw, na, want, nb);
    free(a), free(b);
}

/* tokenizer.json normalizers run on the text before pre-tokenization, as
 * Hugging Face's do: the ids equal GPT-2's for the text normalized by hand
 * (NFC joins e + U+0301; Lowercase; Replace of a string, left to right;
 * Strip; NFKC unfolds the ligature; Prepend starts a text, not its
 * continuation). Before, NFC was accepted but not applied, the rest refused. */
START_TEST(hf_normalizers)
{
    st_tokenizer *g = load_gpt2();
    char *dir = make_tmpdir();
    st_tokenizer *h = hf_gpt2_normalized(dir, "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
        "{\"type\":\"Lowercase\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\"  \"},\"content\":\" \"},"
        "{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":true}]}");
    expect_normalized(h, g, "  Cafe\xcc\x81  AND   T\xc3\x89" "A \t", "caf\xc3\xa9 and  t\xc3\xa9" "a", 0);
    ck_assert_uint_ne(st_tokenizer_hash(h), st_tokenizer_hash(g));
    st_tokenizer_free(h);
    h = hf_gpt2_normalized(dir, "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"},"
        "{\"type\":\"Prepend\",\"prepend\":\"Q\"},{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"[0-9]+\"},\"content\":\"#\"}]}");
    expect_normalized(h, g, "\xef\xac\x81ne 2024 \xef\xbc\xa1", "Qfine # A", 0);
    expect_normalized(h, g, "\xef\xac\x81ne 7", "fine #", 1);
    expect_normalized(h, g, "", "", 0);   /* nothing to prepend to */
    st_tokenizer_free(h);
    rm_tree(dir);
    st_tokenizer_free(g);
}
END_TEST

/* The ids of the pieces, each encoded alone by GPT-2, one after another. */
static void expect_pieces(const st_tokenizer *h, const st_tokenizer *g, const char *text, const char *const *pieces,
                          int n)
{
    int32_t want[256], *ids;
    size_t nw = 0;
    for (int i = 0; i < n; i++) {
        size_t k = enc(g, pieces[i], strlen(pieces[i]), 0, &ids);
        memcpy(want + nw, ids, k * sizeof *ids);
        nw += k;
        free(ids);
    }
    expect_ids(h, text, 0, want, nw);
}

/* Falcon's pre-tokenizer over GPT-2's vocabulary: Punctuation (contiguous)
 * splits before ByteLevel, and a Split after ByteLevel sees its characters
 * (digits in threes). Before, Punctuation was refused and nothing could
 * follow ByteLevel. */
START_TEST(hf_falcon_pretokenizer)
{
    st_tokenizer *g = load_gpt2();
    char *dir = make_tmpdir(), *json = hf_from_gpt2(NULL);
    cJSON *root = cJSON_Parse(json), *pre = cJSON_Parse("{\"type\":\"Sequence\",\"pretokenizers\":["
        "{\"type\":\"Punctuation\",\"behavior\":\"Contiguous\"},"
        "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true},"
        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[0-9][0-9][0-9]\"},\"behavior\":\"Isolated\",\"invert\":false}]}");
    ck_assert(root && pre);
    cJSON_ReplaceItemInObject(root, "pre_tokenizer", pre);
    char *fj = cJSON_PrintUnformatted(root);
    write_file(dir, "tokenizer.json", fj, strlen(fj));
    st_tokenizer *h = load_in("hf", dir, "tokenizer.json");
    static const char *const p1[] = {"x", "--", "y", "'", "s", " and", " ", "123", "45"};   /* "\u0120" is no digit */
    expect_pieces(h, g, "x--y's and 12345", p1, N_OF(p1));
    ck_assert_uint_ne(st_tokenizer_hash(h), st_tokenizer_hash(g));
    st_tokenizer_free(h);
    cJSON_Delete(root);
    free(fj), free(json);
    rm_tree(dir);
    st_tokenizer_free(g);
}
END_TEST

/* A sentencepiece-style tokenizer.json (Llama 2, Mistral, TinyLlama, Phi-3):
 * BPE over characters with byte fallback; the ' ' -> U+2581 and its prefix
 * come from the normalizer (legacy) or a Metaspace pre-tokenizer (pre). */
static char *sp_fixture(const char *normalizer, const char *pre)
{
    static const char *const pieces[] = {"\xe2\x96\x81", "h", "e", "l", "o", "\xe2\x96\x81h", "ll",
                                         "\xe2\x96\x81he", "llo", "\xe2\x96\x81hello", "w"};
    cJSON *vocab = cJSON_CreateObject();
    cJSON_AddNumberToObject(vocab, "<unk>", 0);
    cJSON_AddNumberToObject(vocab, "<s>", 1);
    cJSON_AddNumberToObject(vocab, "</s>", 2);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        cJSON_AddNumberToObject(vocab, name, 3 + b);
    }
    for (int i = 0; i < 11; i++) cJSON_AddNumberToObject(vocab, pieces[i], 259 + i);
    char *v = cJSON_PrintUnformatted(vocab), *json = NULL;
    cJSON_Delete(vocab);
    ck_assert(asprintf(&json, "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
        "{\"id\":1,\"content\":\"<s>\",\"special\":true},{\"id\":2,\"content\":\"</s>\",\"special\":true}],"
        "\"normalizer\":%s,\"pre_tokenizer\":%s,\"post_processor\":{\"type\":\"TemplateProcessing\","
        "\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}]},"
        "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\xe2\x96\x81\"},"
        "\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \","
        "\"start\":1,\"stop\":0}]},\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"byte_fallback\":true,"
        "\"fuse_unk\":true,\"vocab\":%s,\"merges\":[\"\xe2\x96\x81 h\",\"l l\",\"\xe2\x96\x81h e\",\"ll o\","
        "\"\xe2\x96\x81he llo\"]}}", normalizer, pre, v) > 0);
    free(v);
    return json;
}

/* Ids worked out by hand from the merge ranks: "hello" is "\u2581hello"
 * (268) after the prefix; "w\u00e9": 'w', and the absent e-acute as its bytes'
 * <0xC3> <0xA9> (3 + 0xC3, 3 + 0xA9); a continuation gets no prefix. Both
 * forms agree, decode drops the prefix space after bos, and bos is the
 * post-processor's rule. Before, byte_fallback and Metaspace were refused. */
START_TEST(hf_sentencepiece_style)
{
    static const char *const forms[2][2] = {
        {"{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\xe2\x96\x81\"},"
         "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xe2\x96\x81\"}]}", "null"},
        {"null", "{\"type\":\"Metaspace\",\"replacement\":\"\xe2\x96\x81\",\"prepend_scheme\":\"first\",\"split\":false}"}};
    for (int f = 0; f < 2; f++) {
        char *dir = make_tmpdir(), *json = sp_fixture(forms[f][0], forms[f][1]);
        write_file(dir, "tokenizer.json", json, strlen(json));
        st_tokenizer *t = load_in("hf", dir, "tokenizer.json");
        static const int32_t hello[] = {268}, two[] = {268, 259, 269, 3 + 0xC3, 3 + 0xA9};
        expect_ids(t, "hello", 0, hello, N_OF(hello));
        expect_ids(t, "hello w\xc3\xa9", 0, two, N_OF(two));
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        ck_assert_int_eq(st_tokenizer_encode_more(t, "hello", 5, 0, &ids, &n, &cap), ST_OK);
        ck_assert_msg(n == 3 && ids[0] == 260 && ids[1] == 261 && ids[2] == 267, "continuation: %zu ids", n);
        free(ids);
        ck_assert(st_tokenizer_adds_bos(t) && st_tokenizer_bos(t) == 1 && !st_tokenizer_adds_eos(t));
        static const int32_t with_bos[] = {1, 268, 259, 269, 3 + 0xC3, 3 + 0xA9};
        size_t len;
        char *s = dec(t, with_bos, N_OF(with_bos), &len);
        ck_assert_str_eq(s, "<s>hello w\xc3\xa9");
        free(s);
        expect_roundtrip(t, "hello w\xc3\xa9", strlen("hello w\xc3\xa9"));
        st_tokenizer_free(t);
        free(json);
        rm_tree(dir);
    }
}
END_TEST

/* ---- llama2.c tokenizer.bin ---- */

typedef struct { const char *s; float score; } piece;

/* ids 0..2 <unk> <s> </s>, 3..258 <0xNN>, then the pieces below. */
static const piece l2c_pieces[] = {
    {" ", -5}, {"a", -6}, {"b", -7}, {"c", -8},                       /* 259 .. 262 */
    {"ab", -1}, {" a", -2}, {" ab", -0.5f}, {"bc", -3}, {"cb", -3},   /* 263 .. 267 */
};

static void put32(uint8_t **p, uint32_t v)
{
    for (int i = 0; i < 4; i++) *(*p)++ = (uint8_t)(v >> (8 * i));
}

static void put_piece(uint8_t **p, const char *s, float score)
{
    uint32_t u;
    memcpy(&u, &score, 4);
    put32(p, u);
    put32(p, (uint32_t)strlen(s));
    memcpy(*p, s, strlen(s));
    *p += strlen(s);
}

static size_t l2c_fixture(uint8_t *buf)
{
    uint8_t *p = buf;
    put32(&p, 8);   /* max_token_length */
    put_piece(&p, "<unk>", 0);
    put_piece(&p, "\n<s>\n", 0);
    put_piece(&p, "\n</s>\n", 0);
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof(s), "<0x%02X>", b);
        put_piece(&p, s, 0);
    }
    for (size_t i = 0; i < N_OF(l2c_pieces); i++) put_piece(&p, l2c_pieces[i].s, l2c_pieces[i].score);
    return (size_t)(p - buf);
}

static st_tokenizer *load_l2c(void)
{
    uint8_t buf[8192];
    size_t n = l2c_fixture(buf);
    char *dir = make_tmpdir();
    write_file(dir, "tokenizer.bin", buf, n);
    st_tokenizer *t = load_in("llama2c", dir, "tokenizer.bin");
    rm_tree(dir);
    return t;
}

START_TEST(llama2c_fixture)
{
    st_tokenizer *t = load_l2c();
    ck_assert_int_eq(st_tokenizer_vocab_size(t), 268);
    ck_assert_int_eq(st_tokenizer_bos(t), 1);
    ck_assert_int_eq(st_tokenizer_eos(t), 2);
    ck_assert_int_eq(st_tokenizer_token_id(t, "<s>"), 1);
    ck_assert_int_eq(st_tokenizer_token_id(t, " ab"), 265);
    /* " " a b: best pair "ab" (-1) -> " " ab: " ab" (-0.5) */
    static const int32_t ab[] = {265};
    expect_ids(t, "ab", 0, ab, 1);
    /* " " a b c: "ab" (-1) beats " a" (-2) and "bc" (-3); then " ab"; "abc" is absent */
    static const int32_t abc[] = {265, 262};
    expect_ids(t, "abc", 0, abc, 2);
    /* " " c a b: only "ab" merges */
    static const int32_t cab[] = {259, 262, 263};
    expect_ids(t, "cab", 0, cab, 3);
    /* " " b c b: "bc" and "cb" tie at -3: the leftmost merges */
    static const int32_t bcb[] = {259, 266, 261};
    expect_ids(t, "bcb", 0, bcb, 3);
    /* é is not a piece: its bytes C3 A9 become <0xC3> (3 + 0xC3) and <0xA9> */
    static const int32_t fb[] = {264, 3 + 0xC3, 3 + 0xA9};
    expect_ids(t, "a\xc3\xa9", 0, fb, 3);
    size_t len;
    char *s = dec(t, fb, 3, &len);
    ck_assert_str_eq(s, "a\xc3\xa9");   /* the dummy-prefix space is dropped at the start */
    free(s);
    expect_roundtrip(t, "ab cab \xe4\xb8\xad bcb", strlen("ab cab \xe4\xb8\xad bcb"));
    /* specials: "<s>" only with allow_special; no dummy prefix after it */
    static const int32_t sp[] = {1, 263};
    expect_ids(t, "<s>ab", 1, sp, 2);
    static const int32_t lit[] = {259, 3 + '<', 3 + 's', 3 + '>', 263};
    expect_ids(t, "<s>ab", 0, lit, N_OF(lit));
    static const int32_t bos_ab[] = {1, 265, 2};
    s = dec(t, bos_ab, 3, &len);
    ck_assert_str_eq(s, "<s>ab</s>");
    free(s);
    const char *pc;   /* streaming: the space stays unless the previous token is bos */
    ck_assert_int_eq(st_tokenizer_decode_piece(t, 263, 265, &pc, &len), ST_OK);
    ck_assert(len == 3 && memcmp(pc, " ab", 3) == 0);
    ck_assert_int_eq(st_tokenizer_decode_piece(t, 1, 265, &pc, &len), ST_OK);
    ck_assert(len == 2 && memcmp(pc, "ab", 2) == 0);
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    ck_assert_int_eq(st_tokenizer_encode(t, "", 0, 0, &ids, &n, &cap), ST_OK);
    ck_assert_uint_eq(n, 0);
    /* continuing text gets no dummy prefix: "ab" alone is 265 (" ab"), more is 263 */
    ck_assert_int_eq(st_tokenizer_encode_more(t, "ab", 2, 0, &ids, &n, &cap), ST_OK);
    ck_assert(n == 1 && ids[0] == 263);
    free(ids);
    /* a template's pieces form one text: " " only before the first piece.
     * plain sft "c" + "ab" + eos = " c" "ab" </s>, not " c" " ab" </s> */
    st_tokseq seq = {0};
    st_turn turns[] = {{ST_ROLE_USER, "c", 1}, {ST_ROLE_ASSISTANT, "ab", 2}};
    ck_assert_int_eq(st_template_render(&seq, st_template_find("plain"), t, turns, 2), ST_OK);
    static const int32_t want[] = {1, 259, 262, 263, 2};
    ck_assert_uint_eq(seq.n, N_OF(want));
    for (size_t i = 0; i < seq.n; i++) ck_assert_int_eq(seq.ids[i], want[i]);
    s = dec(t, seq.ids, seq.n, &len);
    ck_assert_str_eq(s, "<s>cab</s>");
    free(s);
    st_tokseq_free(&seq);
    st_tokenizer_free(t);
}
END_TEST

/* ---- blobs ---- */

static void blob_roundtrip_one(st_tokenizer *t)
{
    const char *kind;
    uint8_t *blob;
    size_t n;
    ck_assert_int_eq(st_tokenizer_to_blob(t, &kind, &blob, &n), ST_OK);
    st_tokenizer *u = NULL;
    st_err e = st_tokenizer_from_blob(&u, kind, blob, n);
    ck_assert_msg(e == ST_OK, "from_blob(%s) failed: %s", kind, st_error_message());
    ck_assert_uint_eq(st_tokenizer_hash(u), st_tokenizer_hash(t));
    ck_assert_int_eq(st_tokenizer_vocab_size(u), st_tokenizer_vocab_size(t));
    ck_assert_int_eq(st_tokenizer_bos(u), st_tokenizer_bos(t));
    ck_assert_int_eq(st_tokenizer_eos(u), st_tokenizer_eos(t));
    for (int allow = 0; allow < 2; allow++) {
        int32_t *a, *b;
        size_t na = enc(t, paragraph, strlen(paragraph), allow, &a);
        size_t nb = enc(u, paragraph, strlen(paragraph), allow, &b);
        ck_assert_uint_eq(na, nb);
        ck_assert(memcmp(a, b, na * sizeof(int32_t)) == 0);
        free(a), free(b);
    }
    /* every truncation fails cleanly, as do bad kinds and a trailing byte */
    for (size_t cut = 0; cut < n; cut += (n < 4096 ? 1 : n / 97 + 1)) {
        st_tokenizer *v = NULL;
        ck_assert_int_eq(st_tokenizer_from_blob(&v, kind, blob, cut), ST_ERR_FORMAT);
        ck_assert_ptr_null(v);
    }
    st_tokenizer *v = NULL;
    ck_assert_int_eq(st_tokenizer_from_blob(&v, "sentencepiece", blob, n), ST_ERR_FORMAT);
    uint8_t *longer = malloc(n + 1);
    memcpy(longer, blob, n);
    longer[n] = 0;
    expect_fail(st_tokenizer_from_blob(&v, kind, longer, n + 1), ST_ERR_FORMAT, "trailing");
    free(longer);
    free(blob);
    st_tokenizer_free(u);
}

START_TEST(blob_roundtrip)
{
    st_tokenizer *t = load_ok("byte");
    blob_roundtrip_one(t);
    st_tokenizer_free(t);
    t = load_gpt2();
    blob_roundtrip_one(t);
    st_tokenizer_free(t);
    t = load_hf_fixture(0);
    blob_roundtrip_one(t);
    st_tokenizer_free(t);
    t = load_l2c();
    blob_roundtrip_one(t);
    st_tokenizer_free(t);
}
END_TEST

/* Blob framing around hostile file contents. */
static st_err blob_of(const char *kind, const void *f0, size_t n0, const void *f1, size_t n1, int nfiles)
{
    size_t n = 12 + 8 * (size_t)nfiles + n0 + n1;
    uint8_t *b = calloc(1, n), *p = b;
    put32(&p, 0x4B4F5453u);
    put32(&p, 1);
    put32(&p, (uint32_t)nfiles);
    const void *f[2] = {f0, f1};
    size_t len[2] = {n0, n1};
    for (int i = 0; i < nfiles; i++) {
        put32(&p, (uint32_t)len[i]);
        put32(&p, 0);
        memcpy(p, f[i], len[i]);
        p += len[i];
    }
    st_tokenizer *t = NULL;
    st_err e = st_tokenizer_from_blob(&t, kind, b, n);
    ck_assert(e != ST_OK || t);
    st_tokenizer_free(t);
    free(b);
    return e;
}

START_TEST(blob_garbage)
{
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    uint8_t junk[3000];
    for (int round = 0; round < 50; round++) {
        for (size_t i = 0; i < sizeof(junk); i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            junk[i] = (uint8_t)s;
        }
        size_t n = 1 + s % sizeof(junk);
        static const char *const kinds[] = {"byte", "gpt2", "hf", "llama2c", "llmc"};
        for (int k = 0; k < 5; k++) {
            st_tokenizer *t = NULL;
            ck_assert_int_ne(st_tokenizer_from_blob(&t, kinds[k], junk, n), ST_OK);   /* bad magic */
            ck_assert_ptr_null(t);
        }
        ck_assert_int_ne(blob_of("llama2c", junk, n, NULL, 0, 1), ST_OK);
        ck_assert_int_ne(blob_of("llmc", junk, n, NULL, 0, 1), ST_OK);
        ck_assert_int_ne(blob_of("gpt2", junk, n, junk, n, 2), ST_OK);
        ck_assert_int_ne(blob_of("hf", junk, n, "", 0, 2), ST_OK);
    }
    /* a file length that overflows */
    uint8_t b[20] = {0x53, 0x54, 0x4F, 0x4B, 1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    st_tokenizer *t = NULL;
    expect_fail(st_tokenizer_from_blob(&t, "llama2c", b, sizeof(b)), ST_ERR_FORMAT, "remain");
    expect_fail(blob_of("byte", "x", 1, NULL, 0, 1), ST_ERR_FORMAT, "expected 0");
}
END_TEST

/* ---- llm.c ---- */

/* llm.c's gpt2_tokenizer.bin written from GPT-2's encoder.json as llm.c's
 * train_gpt2.py writes it: header (magic 20240328, version 2, vocab size,
 * eot id), then each token's raw bytes with a one-byte length. */
static uint8_t *llmc_tokenizer_file(size_t *len)
{
    size_t n;
    char *p = NULL;
    ck_assert(asprintf(&p, "%s/encoder.json", th_data_path("gpt2-bpe")) > 0);
    char *encj = th_read_file(p, &n);
    free(p);
    cJSON *j = cJSON_Parse(encj);
    ck_assert(j);
    int nv = cJSON_GetArraySize(j);
    char **raw = calloc((size_t)nv, sizeof *raw);
    uint8_t *rawlen = calloc((size_t)nv, 1);
    char si[256][3];
    for (int b = 0; b < 256; b++) th_gpt2_stand_in(b, si[b]);
    cJSON *it;
    cJSON_ArrayForEach(it, j) {
        int id = it->valueint;
        ck_assert(id >= 0 && id < nv && !raw[id]);
        const char *s = it->string;
        raw[id] = malloc(strlen(s) + 1);
        size_t m = 0;
        if (!strcmp(s, "<|endoftext|>")) m = strlen(strcpy(raw[id], s));
        else
            while (*s) {   /* each stand-in character back to its byte */
                int b = 0;
                while (b < 256 && strncmp(s, si[b], strlen(si[b]))) b++;
                ck_assert_msg(b < 256, "no byte for \"%s\"", s);
                raw[id][m++] = (char)b;
                s += strlen(si[b]);
            }
        ck_assert(m >= 1 && m <= 255);
        rawlen[id] = (uint8_t)m;
    }
    size_t total = 1024;
    for (int i = 0; i < nv; i++) total += 1 + rawlen[i];
    uint8_t *f = calloc(1, total), *q = f;
    put32(&q, 20240328), put32(&q, 2), put32(&q, (uint32_t)nv), put32(&q, 50256);
    q = f + 1024;
    for (int i = 0; i < nv; i++) {
        *q++ = rawlen[i];
        memcpy(q, raw[i], rawlen[i]);
        q += rawlen[i];
        free(raw[i]);
    }
    free(raw), free(rawlen), free(encj);
    cJSON_Delete(j);
    *len = total;
    return f;
}

/* The same ids from both tokenizers for len bytes of text. */
static void expect_same_ids(const st_tokenizer *a, const st_tokenizer *b, const char *text, size_t len, int allow)
{
    int32_t *x, *y;
    size_t nx = enc(a, text, len, allow, &x), ny = enc(b, text, len, allow, &y);
    size_t i = 0;
    while (i < nx && i < ny && x[i] == y[i]) i++;
    ck_assert_msg(i == nx && i == ny, "encodings differ at token %zu of %zu/%zu", i, nx, ny);
    free(x), free(y);
}

/* llm.c's file has no merges; the id order must give GPT-2's encodings
 * exactly, on the whole of banking77's training text and hh-rlhf's dialogues. */
START_TEST(llmc_matches_gpt2)
{
    size_t n;
    uint8_t *f = llmc_tokenizer_file(&n);
    char *dir = make_tmpdir();
    write_file(dir, "gpt2_tokenizer.bin", f, n);
    st_tokenizer *l = load_in("llmc", dir, "gpt2_tokenizer.bin"), *g = load_gpt2();
    ck_assert_int_eq(st_tokenizer_vocab_size(l), 50257);
    ck_assert_int_eq(st_tokenizer_eos(l), 50256);
    ck_assert_int_eq(st_tokenizer_token_id(l, "\xc4\xa0world"), 995);   /* " world" */
    static const int32_t hello[] = {15496, 995};                        /* GPT-2's "Hello world" */
    expect_ids(l, "Hello world", 0, hello, 2);
    expect_same_ids(l, g, paragraph, strlen(paragraph), 0);
    static const char eot[] = "a<|endoftext|>b";
    expect_same_ids(l, g, eot, strlen(eot), 1);
    expect_same_ids(l, g, eot, strlen(eot), 0);
    char *p = NULL;
    ck_assert(asprintf(&p, "%s/../banking77/train.csv", th_data_path("gpt2-bpe")) > 0);
    char *csv = th_read_file(p, &n);
    free(p);
    expect_same_ids(l, g, csv, n, 0);
    expect_roundtrip(l, csv, n);
    free(csv);
    ck_assert(asprintf(&p, "%s/../hh-rlhf/harmless-base-test.jsonl.gz", th_data_path("gpt2-bpe")) > 0);
    gzFile gz = gzopen(p, "rb");
    ck_assert_msg(gz, "cannot read %s", p);
    free(p);
    size_t cap = 4 << 20;
    char *hh = malloc(cap);
    int got = gzread(gz, hh, (unsigned)cap);
    gzclose(gz);
    ck_assert(got > 1000000);
    n = (size_t)got;
    while (n && ((uint8_t)hh[n - 1] & 0xC0) == 0x80) n--;   /* end on a character boundary */
    if (n && (uint8_t)hh[n - 1] >= 0xC0) n--;
    expect_same_ids(l, g, hh, n, 0);
    free(hh);
    blob_roundtrip_one(l);
    st_tokenizer_free(l), st_tokenizer_free(g);
    free(f);
    rm_tree(dir);
}
END_TEST

START_TEST(hostile_llmc_files)
{
    size_t n;
    uint8_t *f = llmc_tokenizer_file(&n);
    char *dir = make_tmpdir();
    write_file(dir, "t.bin", f, 100);
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "header");
    write_file(dir, "t.bin", f, n - 1);
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "past the end");
    write_file(dir, "t.bin", f, n - 2);   /* "<|endoftext|>" loses its last 2 bytes */
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "past the end");
    write_file(dir, "t.bin", f, 1024 + 2 * 200);   /* cut at a record boundary */
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "truncated at token 200");
    uint8_t *g = malloc(n + 5);
    memcpy(g, f, n);
    memcpy(g + n, "junk!", 5);
    write_file(dir, "t.bin", g, n + 5);
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "5 bytes follow");
    memcpy(g, f, n);
    g[0] ^= 1;
    write_file(dir, "t.bin", g, n);
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "magic");
    memcpy(g, f, n);
    g[4] = 3;   /* version 3 */
    write_file(dir, "t.bin", g, n);
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "version 3");
    memcpy(g, f, n);
    memcpy(g + 12, "\xff\xff\x00\x00", 4);   /* eot 65535 */
    write_file(dir, "t.bin", g, n);
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "end-of-text id 65535");
    memcpy(g, f, n);
    memcpy(g + 8, "\xff\xff\xff\x7f", 4);   /* vocabulary 2^31 - 1 */
    write_file(dir, "t.bin", g, n);
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "vocabulary size");
    memcpy(g, f, n);
    g[1024] = 0;   /* token 0 of length 0 */
    write_file(dir, "t.bin", g, n);
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "length 0");
    memcpy(g, f, n);
    g[1024 + 3] = g[1024 + 1];   /* token 1 spells the byte of token 0 */
    write_file(dir, "t.bin", g, n);
    expect_fail(try_load_in("llmc", dir, "t.bin"), ST_ERR_FORMAT, "repeats the bytes of token 0");
    free(g), free(f);
    rm_tree(dir);
}
END_TEST

/* ---- hostile files ---- */

START_TEST(hostile_gpt2_files)
{
    size_t n;
    char *p = NULL;
    ck_assert(asprintf(&p, "%s/encoder.json", th_data_path("gpt2-bpe")) > 0);
    char *encj = th_read_file(p, &n);
    free(p);
    static const char merges[] = "#version: 0.2\nz q\n";   /* "zq" is not a GPT-2 token */
    char *dir = make_tmpdir();
    write_file(dir, "vocab.bpe", merges, strlen(merges));
    for (size_t cut = 1; cut < n; cut += n / 7) {
        write_file(dir, "encoder.json", encj, cut);
        expect_fail(try_load_in("gpt2", dir, ""), ST_ERR_FORMAT, "encoder.json");
    }
    write_file(dir, "encoder.json", encj, n);
    expect_fail(try_load_in("gpt2", dir, ""), ST_ERR_FORMAT, "\"zq\"");   /* merge result not in the vocabulary */
    static const char bad_line[] = "#version: 0.2\n\xc4\xa0 t\nh e x\n";
    write_file(dir, "vocab.bpe", bad_line, strlen(bad_line));
    expect_fail(try_load_in("gpt2", dir, ""), ST_ERR_FORMAT, "vocab.bpe:3");
    static const char bad_id[] = "{\"a\": 0, \"b\": -1}";
    write_file(dir, "encoder.json", bad_id, strlen(bad_id));
    expect_fail(try_load_in("gpt2", dir, ""), ST_ERR_FORMAT, "\"b\"");
    static const char sparse[] = "{\"a\": 0, \"b\": 9999999}";
    write_file(dir, "encoder.json", sparse, strlen(sparse));
    expect_fail(try_load_in("gpt2", dir, ""), ST_ERR_FORMAT, "dense");
    static const char dup[] = "{\"a\": 0, \"b\": 0}";
    write_file(dir, "encoder.json", dup, strlen(dup));
    expect_fail(try_load_in("gpt2", dir, ""), ST_ERR_FORMAT, "twice");
    expect_fail(try_load_in("gpt2", dir, "missing"), ST_ERR_IO, "missing");
    free(encj);
    rm_tree(dir);

    st_tokenizer *t = NULL;
    expect_fail(st_tokenizer_load(&t, "sentencepiece:x.model"), ST_ERR_ARG, "not understood");
    expect_fail(st_tokenizer_load(&t, "gpt2:"), ST_ERR_ARG, "not understood");
    expect_fail(st_tokenizer_load(&t, "byte:x"), ST_ERR_ARG, "not understood");
}
END_TEST

START_TEST(hostile_llama2c_files)
{
    uint8_t buf[8192] = {0};
    size_t n = l2c_fixture(buf);
    char *dir = make_tmpdir();
    uint8_t *len_field = buf + 4 + 4;   /* token 0's length */

    write_file(dir, "t.bin", buf, n - 1);   /* last token cut short */
    expect_fail(try_load_in("llama2c", dir, "t.bin"), ST_ERR_FORMAT, "past the end");
    write_file(dir, "t.bin", buf, n + 3);   /* 3 stray bytes: a truncated record */
    expect_fail(try_load_in("llama2c", dir, "t.bin"), ST_ERR_FORMAT, "truncated");
    uint8_t save[4];
    memcpy(save, len_field, 4);
    memcpy(len_field, "\xff\xff\xff\xff", 4);   /* -1 */
    write_file(dir, "t.bin", buf, n);
    expect_fail(try_load_in("llama2c", dir, "t.bin"), ST_ERR_FORMAT, "negative length");
    memcpy(len_field, "\x00\x00\x00\x7f", 4);   /* 2 GB */
    write_file(dir, "t.bin", buf, n);
    expect_fail(try_load_in("llama2c", dir, "t.bin"), ST_ERR_FORMAT, "past the end");
    memcpy(len_field, save, 4);
    memcpy(buf, "\0\0\0\0", 4);   /* max_token_length 0 */
    write_file(dir, "t.bin", buf, n);
    expect_fail(try_load_in("llama2c", dir, "t.bin"), ST_ERR_FORMAT, "max_token_length");
    write_file(dir, "t.bin", buf, 2);
    expect_fail(try_load_in("llama2c", dir, "t.bin"), ST_ERR_FORMAT, "header");
    uint8_t two[64], *p = two;   /* only <unk> and <s> */
    put32(&p, 8);
    put_piece(&p, "<unk>", 0);
    put_piece(&p, "<s>", 0);
    write_file(dir, "t.bin", two, (size_t)(p - two));
    expect_fail(try_load_in("llama2c", dir, "t.bin"), ST_ERR_FORMAT, "at least");
    rm_tree(dir);
}
END_TEST

/* Mutations of the HF fixture, each refused with a message naming the problem. */
START_TEST(hostile_hf_files)
{
    static const struct { const char *from, *to, *msg; } cases[] = {
        {"\"type\":\"BPE\"", "\"type\":\"Unigram\"", "Unigram"},
        {"\"Isolated\"", "\"Removed\"", "Removed"},
        {"\"Regex\":\" ?", "\"Regex\":\"(?", "regex does not compile"},
        {"\"ByteLevel\"", "\"WhitespaceSplit\"", "WhitespaceSplit"},
        {"\"h e\"", "\"h q e\"", "model.merges[0]"},
        {"\"o r\"", "\"o \\u00e9\"", "not in the vocabulary"},
        {"\"id\":265", "\"id\":5", "gives to"},
        {"\"id\":265", "\"id\":77777", "dense"},
        {"\"normalizer\":null", "\"normalizer\":{\"type\":\"BertNormalizer\"}", "BertNormalizer"},
        {"{\"type\":\"Split\"", "{\"type\":\"ByteLevel\"},{\"type\":\"Metaspace\"},{\"type\":\"Split\"", "follows ByteLevel"},
    };
    char *dir = make_tmpdir(), *json = hf_fixture(0);
    write_file(dir, "tokenizer.json", json, strlen(json));
    st_tokenizer *ok = load_in("hf", dir, "tokenizer.json");   /* the fixture itself is fine */
    st_tokenizer_free(ok);
    for (size_t i = 0; i < N_OF(cases); i++) {
        char *at = strstr(json, cases[i].from);
        ck_assert_msg(at, "fixture lacks %s", cases[i].from);
        char *m = NULL;
        ck_assert(asprintf(&m, "%.*s%s%s", (int)(at - json), json, cases[i].to, at + strlen(cases[i].from)) > 0);
        write_file(dir, "tokenizer.json", m, strlen(m));
        expect_fail(try_load_in("hf", dir, "tokenizer.json"), ST_ERR_FORMAT, cases[i].msg);
        free(m);
    }
    for (size_t cut = 0; cut < strlen(json); cut += 997) {   /* truncated JSON */
        write_file(dir, "tokenizer.json", json, cut);
        expect_fail(try_load_in("hf", dir, "tokenizer.json"), ST_ERR_FORMAT, "tokenizer.json");
    }
    free(json);
    rm_tree(dir);
}
END_TEST

/* A sentencepiece .model read as the llama2c kind keeps its normalizer:
 * tok512.model removes extra spaces (the ids below are Google's
 * sentencepiece 0.1.97's, Debian's python3-sentencepiece:
 *   tests/interop/spm_tokenize.py data/llama2c/tok512.model TEXTS OUT);
 * tok512.bin, llama2.c's export of it, keeps them as run.c does, and on
 * text without extra spaces both agree. Before, a .model was refused. */
START_TEST(llama2c_sentencepiece_model)
{
    char spec[700], bin[700];
    snprintf(spec, sizeof spec, "llama2c:%s", th_data_path("llama2c/tok512.model"));
    snprintf(bin, sizeof bin, "llama2c:%s", th_data_path("llama2c/tok512.bin"));
    st_tokenizer *m = load_ok(spec), *b = load_ok(bin);
    ck_assert_int_eq(st_tokenizer_vocab_size(m), 512);
    static const int32_t spaces[] = {259, 424, 414, 262, 427, 412, 331, 419}, can[] = {410, 457, 303, 364};
    expect_ids(m, "  two  spaces  ", 0, spaces, N_OF(spaces));
    expect_ids(m, "Can you", 0, can, N_OF(can));
    expect_ids(m, "   ", 0, NULL, 0);
    int32_t *ids;
    size_t n = enc(b, "  two  spaces  ", 15, 0, &ids);
    ck_assert_uint_ne(n, N_OF(spaces));   /* the .bin keeps every space */
    free(ids);
    static const char story[] = "Once upon a time, there was a little girl named Lily. She loved to play "
                                "outside in the park.\nOne day, she saw a big, red ball (caf\xc3\xa9, 42%).";
    expect_same_ids(m, b, story, strlen(story), 0);
    ck_assert_uint_ne(st_tokenizer_hash(m), st_tokenizer_hash(b));
    blob_roundtrip_one(m);
    size_t len;
    char *file = th_read_file(th_data_path("llama2c/tok512.model"), &len);
    char *dir = make_tmpdir();
    write_file(dir, "cut.model", file, len / 2);
    expect_fail(try_load_in("llama2c", dir, "cut.model"), ST_ERR_FORMAT, "malformed");
    rm_tree(dir);
    free(file);
    st_tokenizer_free(m);
    st_tokenizer_free(b);
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, gpt2_known_ids);
    tcase_add_test(tc, gpt2_special_tokens);
    tcase_add_test(tc, gpt2_empty);
    tcase_add_test(tc, gpt2_long_runs);
    tcase_add_test(tc, gpt2_scripts);
    tcase_add_test(tc, gpt2_invalid_utf8);
    tcase_add_test(tc, decode_bad_ids);
    tcase_add_test(tc, byte_roundtrip);
    tcase_add_test(tc, hf_fixture_encodes);
    tcase_add_test(tc, hf_fixture_variants);
    tcase_add_test(tc, hf_config_file);
    tcase_add_test(tc, hf_matches_gpt2);
    tcase_add_test(tc, hf_llama3_split);
    tcase_add_test(tc, hf_normalizers);
    tcase_add_test(tc, hf_sentencepiece_style);
    tcase_add_test(tc, hf_falcon_pretokenizer);
    tcase_add_test(tc, llama2c_sentencepiece_model);
    tcase_add_test(tc, llama2c_fixture);
    tcase_add_test(tc, blob_roundtrip);
    tcase_add_test(tc, blob_garbage);
    tcase_add_test(tc, hostile_gpt2_files);
    tcase_add_test(tc, hostile_llama2c_files);
    tcase_add_test(tc, hostile_hf_files);
    tcase_add_test(tc, llmc_matches_gpt2);
    tcase_add_test(tc, hostile_llmc_files);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(tokenizer_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
