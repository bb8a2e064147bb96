/* test_dataset.c: `shardtune prepare` and the dataset reader and loader.
 *
 * Real data: banking77 train.csv (record count by an independent quote-aware
 * count, 77 labels, every text decodes back exactly, labels match the CSV),
 * hh-rlhf (2312 pairs; the masked tokens decode to exactly the responses and
 * both docs of a pair share the unmasked prompt). Fixtures written here: sft
 * and chat token/mask sequences built byte by byte from the documented
 * template, the max-length policy, malformed records naming file:line and
 * field, skip-mode counts, CLI errors. Loader: STREAM and DOCS rows against
 * values computed here, permutations, resume in pieces, split filtering,
 * preference pairs in adjacent rows, damaged files.
 * Runs without fork: prepare uses MPI (a 1x1 grid on MPI_COMM_SELF).
 */
#include <check.h>
#include <cjson/cJSON.h>
#include <hdf5.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "cmd/commands.h"
#include "harness.h"
#include "io/dataset.h"
#include "io/h5util.h"
#include "io/jsonl.h"
#include "io/tok/tokenizer.h"
#include "mpi/grid.h"

#define EOS 256 /* the byte tokenizer's <|endoftext|> */

static st_grid G;
static char DIR_[256];
static char B77[512]; /* banking77 prepared once */

/* ---- helpers ------------------------------------------------------------ */

static const char *tmp_path(const char *name)
{
    static char buf[8][512];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, 512, "%s/%s", DIR_, name);
    return b;
}

static void spit_str(const char *path, const char *s) { th_write_file(path, s, strlen(s)); }

/* st_cmd_prepare("prepare", args..., NULL) on the 1x1 grid. */
static st_err run_prepare(const char *first, ...)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = "prepare";
    argv[argc++] = "--force"; /* the tests write their outputs again and again */
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    st_error_clear();
    return st_cmd_prepare(argc, argv, &G);
}

static void must_prepare(const char *in, const char *out, const char *more1, const char *more2)
{
    st_err e = run_prepare("--input", in, "--out", out, more1, more2, NULL);
    ck_assert_msg(e == ST_OK, "prepare %s failed: %s", in, st_error_message());
}

static st_dataset *open_ds(const char *path)
{
    st_dataset *ds = NULL;
    st_err e = st_dataset_open(&ds, path);
    ck_assert_msg(e == ST_OK, "open %s: %s", path, st_error_message());
    return ds;
}

static int64_t attr_i64(const char *path, const char *name)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    int64_t v = -1;
    ck_assert_int_eq(st_h5_attr_read_i64(f, name, &v), ST_OK);
    H5Fclose(f);
    return v;
}

static void assert_contains(const char *hay, const char *needle)
{
    ck_assert_msg(strstr(hay, needle) != NULL, "expected '%s' in: %s", needle, hay);
}

/* Expected ids and mask, built byte by byte. */
typedef struct {
    int32_t ids[4096];
    uint8_t mask[4096];
    size_t n;
} expect_seq;

static void ex_text(expect_seq *x, const char *s, uint8_t m)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        x->ids[x->n] = *p;
        x->mask[x->n++] = m;
    }
}

static void ex_id(expect_seq *x, int32_t id, uint8_t m)
{
    x->ids[x->n] = id;
    x->mask[x->n++] = m;
}

static void assert_doc(const st_dataset *ds, int64_t i, const expect_seq *x)
{
    int32_t *t;
    uint8_t *m;
    size_t n;
    ck_assert_int_eq(st_dataset_read_doc(ds, i, &t, &m, &n), ST_OK);
    ck_assert_uint_eq(n, x->n);
    for (size_t k = 0; k < n; k++) {
        ck_assert_msg(t[k] == x->ids[k], "doc %lld token %zu: %d, expected %d", (long long)i, k, t[k], x->ids[k]);
        ck_assert_msg(m[k] == x->mask[k], "doc %lld mask %zu: %d, expected %d", (long long)i, k, m[k], x->mask[k]);
    }
    free(t);
    free(m);
}

/* Decode ids[0..n) with the byte tokenizer. */
static char *decode(const st_tokenizer *tok, const int32_t *ids, size_t n, size_t *len)
{
    char *s = NULL;
    ck_assert_int_eq(st_tokenizer_decode(tok, ids, n, &s, len), ST_OK);
    return s;
}

/* ---- an independent CSV reading of banking77 ----------------------------- */

typedef struct {
    char **text, **label;
    int n;
} csv_rows;

/* One field starting at *p (quoted or not); returns a malloc'd copy. */
static char *csv_field(const char **p)
{
    const char *s = *p;
    size_t cap = 64, n = 0;
    char *out = malloc(cap);
    if (*s == '"') {
        for (s++;; s++) {
            if (*s == '"' && s[1] == '"') s++;
            else if (*s == '"') { s++; break; }
            ck_assert_msg(*s, "unterminated quote");
            if (n + 2 > cap) out = realloc(out, cap *= 2);
            out[n++] = *s;
        }
    } else {
        for (; *s && *s != ',' && *s != '\n' && !(*s == '\r' && s[1] == '\n'); s++) {
            if (n + 2 > cap) out = realloc(out, cap *= 2);
            out[n++] = *s;
        }
    }
    out[n] = '\0';
    *p = s;
    return out;
}

static csv_rows read_csv_rows(const char *path)
{
    size_t size;
    char *buf = th_read_file(path, &size);
    csv_rows r = {malloc(20000 * sizeof(char *)), malloc(20000 * sizeof(char *)), -1};
    for (const char *p = buf; *p;) {
        char *a = csv_field(&p);
        ck_assert_int_eq(*p, ',');
        p++;
        char *b = csv_field(&p);
        if (*p == '\r') p++;
        if (*p == '\n') p++;
        if (r.n < 0) { /* the header */
            ck_assert_str_eq(a, "text");
            ck_assert_str_eq(b, "category");
            free(a), free(b);
        } else {
            r.text[r.n] = a;
            r.label[r.n] = b;
        }
        r.n++;
        ck_assert_int_lt(r.n, 20000);
    }
    free(buf);
    return r;
}

static void free_rows(csv_rows *r)
{
    for (int i = 0; i < r->n; i++) free(r->text[i]), free(r->label[i]);
    free(r->text);
    free(r->label);
}

/* banking77 prepared once per binary. */
static const char *b77(void)
{
    if (!B77[0]) {
        snprintf(B77, sizeof B77, "%s", tmp_path("b77.h5"));
        must_prepare(th_data_path("banking77/train.csv"), B77, NULL, NULL);
    }
    return B77;
}

/* ---- banking77 ---------------------------------------------------------- */

START_TEST(test_banking77)
{
    csv_rows rows = read_csv_rows(th_data_path("banking77/train.csv"));
    ck_assert_int_eq(rows.n, 10003); /* SOURCES.md says 10,003 */
    st_dataset *ds = open_ds(b77());
    st_tokenizer *tok = NULL;
    ck_assert_int_eq(st_dataset_tokenizer(ds, &tok), ST_OK);
    st_tokenizer *byte = NULL;
    ck_assert_int_eq(st_tokenizer_load(&byte, "byte"), ST_OK);
    ck_assert(st_dataset_tokenizer_hash(ds) == st_tokenizer_hash(byte));

    ck_assert_str_eq(st_dataset_kind(ds), "classify");
    ck_assert_int_eq(st_dataset_num_docs(ds), rows.n);
    ck_assert_int_eq(st_dataset_num_labels(ds), 77);
    /* names sorted, and exactly the names of categories.json */
    size_t jn;
    char *json = th_read_file(th_data_path("banking77/categories.json"), &jn);
    cJSON *cats = cJSON_Parse(json);
    ck_assert_int_eq(cJSON_GetArraySize(cats), 77);
    for (int i = 0; i < 77; i++) {
        if (i) ck_assert_int_lt(strcmp(st_dataset_label_name(ds, i - 1), st_dataset_label_name(ds, i)), 0);
        int found = 0;
        const cJSON *c;
        cJSON_ArrayForEach(c, cats) found |= !strcmp(c->valuestring, st_dataset_label_name(ds, i));
        ck_assert_msg(found, "label %s not in categories.json", st_dataset_label_name(ds, i));
    }
    int64_t val = 0;
    for (int i = 0; i < rows.n; i++) {
        int32_t *t;
        uint8_t *m;
        size_t n, len;
        ck_assert_int_eq(st_dataset_read_doc(ds, i, &t, &m, &n), ST_OK);
        char *s = decode(tok, t, n, &len);
        ck_assert_msg(len == strlen(rows.text[i]) && !memcmp(s, rows.text[i], len),
                      "row %d decodes to '%s', expected '%s'", i, s, rows.text[i]);
        ck_assert_str_eq(st_dataset_label_name(ds, st_dataset_doc_label(ds, i)), rows.label[i]);
        for (size_t k = 0; k < n; k++) ck_assert_int_eq(m[k], 0); /* the loss is on the label */
        val += st_dataset_doc_split(ds, i);
        free(s), free(t), free(m);
    }
    /* --val-fraction 0.1 by a hash: close to 10% */
    ck_assert_int_gt(val, rows.n * 7 / 100);
    ck_assert_int_lt(val, rows.n * 13 / 100);
    cJSON_Delete(cats);
    free(json);
    st_tokenizer_free(tok);
    st_tokenizer_free(byte);
    st_dataset_close(ds);
    free_rows(&rows);
}
END_TEST

/* --label-names fixes ids to the file's order. */
START_TEST(test_label_names_file)
{
    const char *out = tmp_path("b77_fixed.h5");
    must_prepare(th_data_path("banking77/test.csv"), out, "--label-names", th_data_path("banking77/categories.json"));
    st_dataset *ds = open_ds(out);
    size_t jn;
    char *json = th_read_file(th_data_path("banking77/categories.json"), &jn);
    cJSON *cats = cJSON_Parse(json);
    for (int i = 0; i < 77; i++)
        ck_assert_str_eq(st_dataset_label_name(ds, i), cJSON_GetArrayItem(cats, i)->valuestring);
    ck_assert_int_eq(st_dataset_num_docs(ds), 3080);
    cJSON_Delete(cats);
    free(json);
    st_dataset_close(ds);
}
END_TEST

/* ---- hh-rlhf ------------------------------------------------------------ */

static int64_t gz_lines(const char *path)
{
    gzFile f = gzopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    char buf[65536];
    int64_t n = 0;
    int got;
    while ((got = gzread(f, buf, sizeof buf)) > 0)
        for (int i = 0; i < got; i++) n += buf[i] == '\n';
    gzclose(f);
    return n;
}

START_TEST(test_hh_pref)
{
    const char *in = th_data_path("hh-rlhf/harmless-base-test.jsonl.gz");
    const char *out = tmp_path("hh.h5");
    must_prepare(in, out, "--max-len", "1000000");
    st_dataset *ds = open_ds(out);
    st_tokenizer *tok = NULL;
    ck_assert_int_eq(st_dataset_tokenizer(ds, &tok), ST_OK);
    ck_assert_str_eq(st_dataset_kind(ds), "pref");
    int64_t n_pairs = st_dataset_num_pairs(ds);
    ck_assert_int_eq(n_pairs, gz_lines(in));
    ck_assert_int_eq(n_pairs, 2312);
    ck_assert_int_eq(st_dataset_num_docs(ds), 2 * n_pairs);

    gzFile f = gzopen(in, "rb");
    static char line[1 << 20];
    for (int64_t p = 0; p < n_pairs; p++) {
        ck_assert_ptr_nonnull(gzgets(f, line, sizeof line));
        cJSON *obj = cJSON_Parse(line);
        ck_assert_ptr_nonnull(obj);
        int64_t docs[2];
        st_dataset_pair(ds, p, &docs[0], &docs[1]);
        ck_assert_int_eq(docs[0], 2 * p);
        ck_assert_int_eq(docs[1], 2 * p + 1);
        ck_assert_int_eq(st_dataset_doc_split(ds, docs[0]), st_dataset_doc_split(ds, docs[1]));
        char *prompt[2];
        for (int side = 0; side < 2; side++) {
            const char *src = cJSON_GetObjectItem(obj, side ? "rejected" : "chosen")->valuestring;
            int32_t *t;
            uint8_t *m;
            size_t n, np = 0, len;
            ck_assert_int_eq(st_dataset_read_doc(ds, docs[side], &t, &m, &n), ST_OK);
            while (np < n && !m[np]) np++; /* the mask is 0...0 1...1 */
            for (size_t k = np; k < n; k++) ck_assert_int_eq(m[k], 1);
            ck_assert_int_eq(t[n - 1], EOS);
            prompt[side] = decode(tok, t, np, &len);
            char *resp = decode(tok, t + np, n - np - 1, &len);
            /* prompt + response is the whole dialogue; the prompt ends a turn marker */
            size_t pl = strlen(prompt[side]);
            ck_assert_uint_eq(pl + len, strlen(src));
            ck_assert(!memcmp(src, prompt[side], pl) && !memcmp(src + pl, resp, len));
            ck_assert_uint_ge(pl, 12);
            ck_assert(!memcmp(prompt[side] + pl - 12, "\n\nAssistant:", 12));
            ck_assert_uint_gt(len, 0);
            free(resp), free(t), free(m);
        }
        ck_assert_str_eq(prompt[0], prompt[1]);
        free(prompt[0]), free(prompt[1]);
        cJSON_Delete(obj);
    }
    gzclose(f);
    st_tokenizer_free(tok);
    st_dataset_close(ds);
}
END_TEST

/* ---- templates on fixtures ---------------------------------------------- */

/* Text and classify records with a llama2c tokenizer (the genuine tok512):
 * bos, then the text encoded as sentencepiece and run.c encode it, with the
 * dummy-prefix space (a text record once lost it: "Once" became "O" "nce"). */
START_TEST(test_llama2c_text_prefix)
{
    char spec[600];
    snprintf(spec, sizeof spec, "llama2c:%s", th_data_path("llama2c/tok512.bin"));
    st_tokenizer *tok = NULL;
    ck_assert_int_eq(st_tokenizer_load(&tok, spec), ST_OK);
    const char *text = "Once upon a time";
    int32_t *want = NULL;
    size_t nwant = 0, cap = 0;
    ck_assert_int_eq(st_tokenizer_encode(tok, text, strlen(text), 0, &want, &nwant, &cap), ST_OK);
    static const char *const records[] = {"{\"text\": \"Once upon a time\"}\n",
                                          "{\"text\": \"Once upon a time\", \"label\": \"story\"}\n"};
    for (int r = 0; r < 2; r++) {
        const char *in = tmp_path("l2c.jsonl"), *out = tmp_path("l2c.h5");
        spit_str(in, records[r]);
        must_prepare(in, out, "--tokenizer", spec);
        st_dataset *ds = open_ds(out);
        expect_seq x = {.n = 0};
        ex_id(&x, st_tokenizer_bos(tok), 0);
        for (size_t k = 0; k < nwant; k++) ex_id(&x, want[k], r == 0);
        if (r == 0) ex_id(&x, st_tokenizer_eos(tok), 1);
        assert_doc(ds, 0, &x);
        st_dataset_close(ds);
    }
    free(want);
    st_tokenizer_free(tok);
}
END_TEST

START_TEST(test_sft_mask)
{
    const char *in = tmp_path("sft.jsonl"), *out = tmp_path("sft.h5");
    spit_str(in, "{\"prompt\": \"What is 2+2?\", \"response\": \"4\"}\n"
                 "\n"
                 "{\"prompt\": \"\", \"response\": \"caf\\u00e9 \\\"ok\\\"\\nline2\"}\n"
                 "{\"prompt\": \"Sch\xc3\xb6n\", \"response\": \" yes \"}\n");
    must_prepare(in, out, NULL, NULL);
    st_dataset *ds = open_ds(out);
    ck_assert_str_eq(st_dataset_kind(ds), "sft");
    ck_assert_int_eq(st_dataset_num_docs(ds), 3);
    const char *pr[3] = {"What is 2+2?", "", "Sch\xc3\xb6n"};
    const char *re[3] = {"4", "caf\xc3\xa9 \"ok\"\nline2", " yes "};
    for (int i = 0; i < 3; i++) {
        expect_seq x = {.n = 0};
        ex_text(&x, "<|user|>\n", 0);
        ex_text(&x, pr[i], 0);
        ex_text(&x, "\n<|assistant|>\n", 0);
        ex_text(&x, re[i], 1);
        ex_id(&x, EOS, 1);
        assert_doc(ds, i, &x);
    }
    st_dataset_close(ds);

    /* template plain: prompt and response back to back */
    must_prepare(in, out, "--template", "plain");
    ds = open_ds(out);
    expect_seq x = {.n = 0};
    ex_text(&x, "What is 2+2?", 0);
    ex_text(&x, "4", 1);
    ex_id(&x, EOS, 1);
    assert_doc(ds, 0, &x);
    st_dataset_close(ds);
}
END_TEST

START_TEST(test_chat_mask)
{
    const char *in = tmp_path("chat.jsonl"), *out = tmp_path("chat.h5");
    spit_str(in,
             "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
             " {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello!\"},"
             " {\"role\": \"user\", \"content\": \"Bye\"}, {\"role\": \"assistant\", \"content\": \"See you.\"},"
             " {\"role\": \"user\", \"content\": \"(trailing)\"}]}\n");
    must_prepare(in, out, NULL, NULL);
    st_dataset *ds = open_ds(out);
    ck_assert_str_eq(st_dataset_kind(ds), "chat");
    expect_seq x = {.n = 0};
    ex_text(&x, "<|system|>\nBe brief.\n", 0);
    ex_text(&x, "<|user|>\nHi\n", 0);
    ex_text(&x, "<|assistant|>\n", 0);
    ex_text(&x, "Hello!", 1);
    ex_id(&x, EOS, 1);
    ex_text(&x, "<|user|>\nBye\n", 0);
    ex_text(&x, "<|assistant|>\n", 0);
    ex_text(&x, "See you.", 1);
    ex_id(&x, EOS, 1);
    assert_doc(ds, 0, &x);
    st_dataset_close(ds);

    /* chatml: <|im_end|> and the newline after an answer are learned too */
    must_prepare(in, out, "--template", "chatml");
    ds = open_ds(out);
    expect_seq y = {.n = 0};
    ex_text(&y, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n", 0);
    ex_text(&y, "<|im_start|>assistant\n", 0);
    ex_text(&y, "Hello!<|im_end|>\n", 1);
    ex_text(&y, "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", 0);
    ex_text(&y, "See you.<|im_end|>\n", 1);
    assert_doc(ds, 0, &y);
    st_dataset_close(ds);
}
END_TEST

/* ---- the max-length policy ------------------------------------------------ */

/* Text documents with llama2.c's tokenizer are sentencepiece's: bos, the text
 * with its dummy-prefix space on the first word, eos. The ids were made by
 * Google's sentencepiece 0.1.97 (Debian's python3-sentencepiece) from
 * data/llama2c/tok512.model, the model tok512.bin was exported from:
 *   tests/interop/spm_tokenize.py data/llama2c/tok512.model TEXTS.jsonl OUT --eos
 * Without the dummy prefix "Can" was 'C' 'an' (457 303) instead of '▁' 'C' 'an'. */
START_TEST(test_text_sentencepiece)
{
    const char *in = tmp_path("spm.jsonl"), *out = tmp_path("spm.h5");
    spit_str(in, "{\"text\": \"Can you help me?\"}\n{\"text\": \"Once upon a time, Lily\"}\n");
    char spec[600];
    snprintf(spec, sizeof spec, "llama2c:%s", th_data_path("llama2c/tok512.bin"));
    must_prepare(in, out, "--tokenizer", spec);
    st_dataset *ds = open_ds(out);
    static const int32_t want0[] = {1, 410, 457, 303, 364, 281, 421, 427, 284, 411, 450, 2};
    static const int32_t want1[] = {1, 403, 407, 261, 378, 432, 317, 2};
    const int32_t *want[2] = {want0, want1};
    size_t nwant[2] = {sizeof want0 / sizeof *want0, sizeof want1 / sizeof *want1};
    for (int d = 0; d < 2; d++) {
        expect_seq x = {.n = 0};
        for (size_t k = 0; k < nwant[d]; k++) ex_id(&x, want[d][k], k > 0);
        assert_doc(ds, d, &x);
    }
    st_dataset_close(ds);
}
END_TEST

/* Empty texts of text data are counted and skipped, not fatal. */
START_TEST(test_text_empty_skipped)
{
    const char *in = tmp_path("empty.jsonl"), *out = tmp_path("empty.h5");
    spit_str(in, "{\"text\": \"ab\"}\n{\"text\": \"\"}\n{\"text\": \"c\"}\n");
    must_prepare(in, out, "--format", "text");
    ck_assert_int_eq(attr_i64(out, "n_records"), 3);
    ck_assert_int_eq(attr_i64(out, "n_docs"), 2);
    ck_assert_int_eq(attr_i64(out, "n_skipped"), 1);
    st_dataset *ds = open_ds(out);
    expect_seq x = {.n = 0};
    ex_text(&x, "c", 1);
    ex_id(&x, EOS, 1);
    assert_doc(ds, 1, &x);
    st_dataset_close(ds);
}
END_TEST

/* --format ids: token ids made elsewhere, taken as they are (no bos or
 * eos), an empty array skipped; an id outside the tokenizer's vocabulary is
 * a bad value naming the line and the index; the dataset trains as text. */
START_TEST(test_ids_format)
{
    const char *in = tmp_path("ids.jsonl"), *out = tmp_path("ids.h5"), *bad = tmp_path("badids.jsonl");
    spit_str(in, "{\"ids\": [1, 40, 47, 2]}\n{\"ids\": []}\n{\"ids\": [256, 5]}\n");   /* byte tokenizer: 0..256 */
    must_prepare(in, out, NULL, NULL);   /* auto: an "ids" field */
    ck_assert_int_eq(attr_i64(out, "n_docs"), 2);
    ck_assert_int_eq(attr_i64(out, "n_skipped"), 1);
    st_dataset *ds = open_ds(out);
    ck_assert_str_eq(st_dataset_kind(ds), "text");
    expect_seq x = {.n = 0};
    ex_id(&x, 256, 1);
    ex_id(&x, 5, 1);
    assert_doc(ds, 1, &x);
    st_dataset_close(ds);
    spit_str(bad, "{\"ids\": [1, 2]}\n{\"ids\": [3, 257]}\n");
    ck_assert_int_ne(run_prepare("--input", bad, "--out", tmp_path("badids.h5"), "--format", "ids", NULL), ST_OK);
    assert_contains(st_error_message(), "badids.jsonl:2: ids[1] is not a token id");
    assert_contains(st_error_message(), "0..256");
}
END_TEST

START_TEST(test_truncation)
{
    const char *in = tmp_path("trunc.jsonl"), *out = tmp_path("trunc.h5");
    /* rendered prompt part: "<|user|>\n" + 30 x 'p' + "\n<|assistant|>\n" = 54 tokens */
    spit_str(in, "{\"prompt\": \"pppppppppppppppppppppppppppppp\", \"response\": \"abcde\"}\n"
                 "{\"prompt\": \"q\", \"response\": \"0123456789012345678901234567890123456789\"}\n"
                 "{\"prompt\": \"r\", \"response\": \"ok\"}\n");
    must_prepare(in, out, "--max-len", "30");
    st_dataset *ds = open_ds(out);
    /* 1: the prompt keeps its last 24 tokens, the response + eos (6) whole */
    const char *rendered = "<|user|>\npppppppppppppppppppppppppppppp\n<|assistant|>\n";
    expect_seq x = {.n = 0};
    ex_text(&x, rendered + strlen(rendered) - 24, 0);
    ex_text(&x, "abcde", 1);
    ex_id(&x, EOS, 1);
    assert_doc(ds, 0, &x);
    /* 2: the response alone is too long: its first 30 tokens, no prompt */
    expect_seq y = {.n = 0};
    ex_text(&y, "012345678901234567890123456789", 1);
    assert_doc(ds, 1, &y);
    /* 3: fits (28 tokens) */
    ck_assert_int_eq(st_dataset_doc_len(ds, 2), (int64_t)strlen("<|user|>\nr\n<|assistant|>\nok") + 1);
    st_dataset_close(ds);
    ck_assert_int_eq(attr_i64(out, "n_truncated_prompt"), 2);
    ck_assert_int_eq(attr_i64(out, "n_truncated_response"), 1);

    /* a preference pair keeps one prompt for both answers */
    spit_str(in, "{\"prompt\": \"0123456789abcdefghij\", \"chosen\": \"short\", \"rejected\": \"much longer answer\"}\n");
    must_prepare(in, out, "--max-len", "30");
    ds = open_ds(out);
    int32_t *t[2];
    uint8_t *m[2];
    size_t n[2], np[2] = {0, 0};
    for (int s = 0; s < 2; s++) {
        ck_assert_int_eq(st_dataset_read_doc(ds, s, &t[s], &m[s], &n[s]), ST_OK);
        while (!m[s][np[s]]) np[s]++;
    }
    ck_assert_uint_eq(n[1], 30);               /* the longer one fills max-len */
    ck_assert_uint_eq(np[0], np[1]);           /* same prompt length */
    ck_assert(!memcmp(t[0], t[1], np[0] * sizeof(int32_t)));
    ck_assert_uint_eq(n[0] - np[0], strlen("short") + 1);
    for (int s = 0; s < 2; s++) free(t[s]), free(m[s]);
    st_dataset_close(ds);
}
END_TEST

/* ---- bad input ----------------------------------------------------------- */

static const char good_line[] = "{\"prompt\": \"a\", \"response\": \"b\"}\n";

/* A 4-line file whose line 3 is bad; prepare must fail naming file:3 and
 * the pieces given, and leave no file behind. */
static void expect_bad(const char *bad_line, const char *what, const char *field)
{
    const char *in = tmp_path("bad.jsonl"), *out = tmp_path("bad.h5");
    char text[1024];
    snprintf(text, sizeof text, "%s%s%s\n%s", good_line, good_line, bad_line, good_line);
    spit_str(in, text);
    unlink(out);
    st_err e = run_prepare("--input", in, "--out", out, "--format", "sft", NULL);
    ck_assert_int_ne(e, ST_OK);
    char where[600];
    snprintf(where, sizeof where, "%s:3:", in);
    assert_contains(st_error_message(), where);
    assert_contains(st_error_message(), what);
    if (field) assert_contains(st_error_message(), field);
    ck_assert_int_ne(access(out, F_OK), 0);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    ck_assert_int_ne(access(tmp, F_OK), 0);
}

START_TEST(test_malformed)
{
    expect_bad("{\"prompt\": \"a\", \"response\": }", "malformed JSON", NULL);
    expect_bad("{\"prompt\": \"a\"}", "missing", "\"response\"");
    expect_bad("{\"prompt\": \"a\", \"response\": 5}", "must be a string", "\"response\"");
    expect_bad("{\"prompt\": \"a\", \"response\": \"b\xff\"}", "not valid UTF-8", "\"response\"");
    expect_bad("{\"prompt\": \"a\", \"response\": \"\"}", "empty", "\"response\"");
    expect_bad("[1, 2]", "expected a JSON object", NULL);
    expect_bad("{\"prompt\": \"a\", \"response\": \"b\"} x", "unexpected text", NULL);
}
END_TEST

START_TEST(test_malformed_chat_and_csv)
{
    const char *in = tmp_path("badchat.jsonl"), *out = tmp_path("badchat.h5");
    spit_str(in, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n"
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"robot\", \"content\": \"b\"}]}\n");
    ck_assert_int_ne(run_prepare("--input", in, "--out", out, NULL), ST_OK);
    assert_contains(st_error_message(), ":2:");
    assert_contains(st_error_message(), "messages[1].role");

    const char *csv = tmp_path("bad.csv");
    spit_str(csv, "text,label\r\nfine,a\r\n\"unclosed,b\r\n");
    ck_assert_int_ne(run_prepare("--input", csv, "--out", out, NULL), ST_OK);
    assert_contains(st_error_message(), "bad.csv:3:");
    assert_contains(st_error_message(), "never closed");
    spit_str(csv, "text,label\nfine,a\ntoo,many,fields\n");
    ck_assert_int_ne(run_prepare("--input", csv, "--out", out, NULL), ST_OK);
    assert_contains(st_error_message(), "bad.csv:3:");
    assert_contains(st_error_message(), "3 fields");
}
END_TEST

START_TEST(test_skip_mode)
{
    const char *in = tmp_path("skip.jsonl"), *out = tmp_path("skip.h5");
    spit_str(in, "{\"prompt\": \"a\", \"response\": \"b\"}\n"
                 "{\"prompt\": \"a\", \"response\": }\n"
                 "{\"prompt\": \"a\"}\n"
                 "{\"prompt\": \"a\", \"response\": 5}\n"
                 "{\"prompt\": \"a\", \"response\": \"\xc3\x28\"}\n"
                 "{\"prompt\": \"a\", \"response\": \"\"}\n"
                 "{\"prompt\": \"c\", \"response\": \"d\"}\n");
    must_prepare(in, out, "--on-error", "skip");
    ck_assert_int_eq(attr_i64(out, "n_records"), 7);
    ck_assert_int_eq(attr_i64(out, "n_skipped"), 5);
    st_dataset *ds = open_ds(out);
    ck_assert_int_eq(st_dataset_num_docs(ds), 2);
    expect_seq x = {.n = 0};
    ex_text(&x, "<|user|>\nc\n<|assistant|>\n", 0);
    ex_text(&x, "d", 1);
    ex_id(&x, EOS, 1);
    assert_doc(ds, 1, &x);
    st_dataset_close(ds);
}
END_TEST

START_TEST(test_cli)
{
    ck_assert_int_eq(run_prepare("--help", NULL), ST_OK);
    ck_assert_int_ne(run_prepare("--input", "x.jsonl", "--out", "y.h5", "--bogus-option", "1", NULL), ST_OK);
    assert_contains(st_error_message(), "bogus-option");
    ck_assert_int_ne(run_prepare("--out", "y.h5", NULL), ST_OK);
    assert_contains(st_error_message(), "--input");
    ck_assert_int_ne(run_prepare("--input", "x", "--out", "y", "--template", "nope", NULL), ST_OK);
    assert_contains(st_error_message(), "nope");
    ck_assert_int_ne(run_prepare("--input", tmp_path("missing.jsonl"), "--out", tmp_path("m.h5"), NULL), ST_OK);
    assert_contains(st_error_message(), "missing.jsonl");
}
END_TEST

/* ---- the loader ------------------------------------------------------------ */

/* The text fixture: docs of distinct letters, stream = docs + eos each. */
static const char *const text_docs[] = {"abc", "defgh", "ij", "klmnopqrs", "tu", "vwxyz", "ABCDEFG", "HI"};
#define N_TEXT 8

static const char *text_dataset(int32_t *stream, int64_t *n)
{
    const char *in = tmp_path("text.jsonl"), *out = tmp_path("text.h5");
    char buf[1024] = "";
    *n = 0;
    for (int i = 0; i < N_TEXT; i++) {
        snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "{\"text\": \"%s\"}\n", text_docs[i]);
        for (const char *p = text_docs[i]; *p; p++) stream[(*n)++] = (unsigned char)*p;
        stream[(*n)++] = EOS;
    }
    spit_str(in, buf);
    must_prepare(in, out, "--val-fraction", "0");
    return out;
}

START_TEST(test_loader_stream)
{
    int32_t stream[256];
    int64_t n;
    st_dataset *ds = open_ds(text_dataset(stream, &n));
    ck_assert_str_eq(st_dataset_kind(ds), "text");
    const int T = 4;
    st_loader *l;
    ck_assert_int_eq(st_loader_create(&l, ds, ST_SAMPLE_STREAM, T, 7, -1), ST_OK);
    int64_t ns = st_loader_num_samples(l);
    ck_assert_int_eq(ns, (n - 1) / T);
    st_batch b;
    ck_assert_int_eq(st_batch_alloc(&b, (int)ns, T), ST_OK);
    ck_assert_int_eq(st_loader_fill(l, &b, 0, (int)ns, 0), ST_OK);
    for (int r = 0; r < ns; r++) {
        for (int t = 0; t < T; t++) {
            ck_assert_int_eq(b.tokens[r * T + t], stream[r * T + t]);
            ck_assert_int_eq(b.targets[r * T + t], stream[r * T + t + 1]);
            ck_assert(b.mask[r * T + t] == 1.0f); /* text: the loss is everywhere */
        }
        ck_assert_int_eq(b.lengths[r], T);
        ck_assert_int_eq(b.labels[r], -1);
    }
    /* pretraining counts every target: a row of T inputs cut from the
     * stream has T of them (the last one was dropped: 252 of 256 at 4 x 64) */
    st_batch_mask_all(&b, (int)ns);
    for (int i = 0; i < ns * T; i++) ck_assert(b.mask[i] == 1.0f);
    /* shuffled: the same windows, each once per epoch, in another order */
    st_batch s;
    ck_assert_int_eq(st_batch_alloc(&s, (int)ns, T), ST_OK);
    ck_assert_int_eq(st_loader_fill(l, &s, 0, (int)ns, 1), ST_OK);
    int seen[64] = {0}, moved = 0;
    for (int r = 0; r < ns; r++) {
        int w = -1;
        for (int k = 0; k < ns; k++)
            if (!memcmp(s.tokens + r * T, b.tokens + k * T, T * sizeof(int32_t))) w = k;
        ck_assert_int_ge(w, 0);
        seen[w]++;
        moved += w != r;
    }
    for (int k = 0; k < ns; k++) ck_assert_int_eq(seen[k], 1);
    ck_assert_int_gt(moved, 0);
    st_batch_free(&b);
    st_batch_free(&s);
    st_loader_free(l);

    /* a stream longer than the docs of one split is refused clearly */
    ck_assert_int_ne(st_loader_create(&l, ds, ST_SAMPLE_STREAM, 4, 7, 1), ST_OK);
    assert_contains(st_error_message(), "validation split is empty");
    ck_assert_int_ne(st_loader_create(&l, ds, ST_SAMPLE_STREAM, (int)n, 7, -1), ST_OK);
    st_dataset_close(ds);
}
END_TEST

START_TEST(test_loader_docs)
{
    const char *in = tmp_path("docs.jsonl"), *out = tmp_path("docs.h5");
    spit_str(in, "{\"prompt\": \"x\", \"response\": \"yz\"}\n"
                 "{\"prompt\": \"a long prompt here\", \"response\": \"and a long answer\"}\n");
    must_prepare(in, out, "--template", "plain");
    st_dataset *ds = open_ds(out);
    const int T = 8;
    st_loader *l;
    ck_assert_int_eq(st_loader_create(&l, ds, ST_SAMPLE_DOCS, T, 1, -1), ST_OK);
    ck_assert_int_eq(st_loader_num_samples(l), 2);
    st_batch b;
    ck_assert_int_eq(st_batch_alloc(&b, 3, T), ST_OK);
    ck_assert_int_eq(st_loader_fill(l, &b, 0, 2, 0), ST_OK);
    /* doc 0 = "x" "yz" eos: 4 tokens, masks 0 1 1 1 */
    int32_t d0[4] = {'x', 'y', 'z', EOS};
    for (int t = 0; t < T; t++) {
        ck_assert_int_eq(b.tokens[t], t < 4 ? d0[t] : 0);
        ck_assert_int_eq(b.targets[t], t < 3 ? d0[t + 1] : 0);
        ck_assert(b.mask[t] == (t < 3 ? 1.0f : 0.0f));
    }
    ck_assert_int_eq(b.lengths[0], 4);
    /* doc 1 is cut to T+1 = 9 tokens: "a long pr" */
    const char *d1 = "a long prompt";
    for (int t = 0; t < T; t++) {
        ck_assert_int_eq(b.tokens[T + t], d1[t]);
        ck_assert_int_eq(b.targets[T + t], d1[t + 1]);
        ck_assert(b.mask[T + t] == 0.0f);
    }
    ck_assert_int_eq(b.lengths[1], T);
    ck_assert_int_eq(st_loader_num_truncated(l), 1);
    /* pretraining's mask: doc 0's 3 real targets; the cut doc 1 fills its row, T targets */
    st_batch_mask_all(&b, 2);
    for (int t = 0; t < T; t++) {
        ck_assert(b.mask[t] == (t < 3 ? 1.0f : 0.0f));
        ck_assert(b.mask[T + t] == 1.0f);
    }
    /* sample 2 is epoch 1, position 0 */
    ck_assert_int_eq(st_loader_fill(l, &b, 2, 1, 0), ST_OK);
    ck_assert_int_eq(b.tokens[0], 'x');
    ck_assert_int_ne(st_loader_fill(l, &b, 0, 4, 0), ST_OK); /* more rows than the batch */
    st_batch_free(&b);
    st_loader_free(l);
    st_dataset_close(ds);
}
END_TEST

/* Resume: samples 0..k then k..n in pieces equal one pass. */
START_TEST(test_loader_resume)
{
    st_dataset *ds = open_ds(b77());
    const int T = 16, N = 300;
    st_loader *l;
    ck_assert_int_eq(st_loader_create(&l, ds, ST_SAMPLE_DOCS, T, 42, 0), ST_OK);
    int64_t ns = st_loader_num_samples(l);
    st_batch whole, piece;
    ck_assert_int_eq(st_batch_alloc(&whole, N, T), ST_OK);
    ck_assert_int_eq(st_batch_alloc(&piece, 37, T), ST_OK);
    int64_t g0 = ns - 100; /* crosses into epoch 1 */
    ck_assert_int_eq(st_loader_fill(l, &whole, g0, N, 1), ST_OK);
    st_loader_free(l);
    /* a fresh loader (a restarted run), odd piece sizes */
    ck_assert_int_eq(st_loader_create(&l, ds, ST_SAMPLE_DOCS, T, 42, 0), ST_OK);
    int at = 0, sizes[] = {1, 37, 5, 20, 37, 2};
    for (int i = 0; at < N; i = (i + 1) % 6) {
        int c = sizes[i] < N - at ? sizes[i] : N - at;
        ck_assert_int_eq(st_loader_fill(l, &piece, g0 + at, c, 1), ST_OK);
        ck_assert(!memcmp(piece.tokens, whole.tokens + (size_t)at * T, (size_t)c * T * sizeof(int32_t)));
        ck_assert(!memcmp(piece.targets, whole.targets + (size_t)at * T, (size_t)c * T * sizeof(int32_t)));
        ck_assert(!memcmp(piece.mask, whole.mask + (size_t)at * T, (size_t)c * T * sizeof(float)));
        ck_assert(!memcmp(piece.labels, whole.labels + at, (size_t)c * sizeof(int32_t)));
        ck_assert(!memcmp(piece.lengths, whole.lengths + at, (size_t)c * sizeof(int32_t)));
        at += c;
    }
    /* epochs are ordered differently */
    st_batch e0, e1;
    ck_assert_int_eq(st_batch_alloc(&e0, 50, T), ST_OK);
    ck_assert_int_eq(st_batch_alloc(&e1, 50, T), ST_OK);
    ck_assert_int_eq(st_loader_fill(l, &e0, 0, 50, 1), ST_OK);
    ck_assert_int_eq(st_loader_fill(l, &e1, ns, 50, 1), ST_OK);
    ck_assert(memcmp(e0.tokens, e1.tokens, 50 * T * sizeof(int32_t)));
    st_batch_free(&e0), st_batch_free(&e1), st_batch_free(&whole), st_batch_free(&piece);
    st_loader_free(l);
    st_dataset_close(ds);
}
END_TEST

/* Split filtering: the validation loader returns exactly the split-1 docs in
 * file order, with their labels; the permutation covers each once. */
START_TEST(test_loader_split)
{
    st_dataset *ds = open_ds(b77());
    int64_t nd = st_dataset_num_docs(ds), n_val = 0;
    for (int64_t i = 0; i < nd; i++) n_val += st_dataset_doc_split(ds, i);
    const int T = 64;
    st_loader *lv, *lt;
    ck_assert_int_eq(st_loader_create(&lv, ds, ST_SAMPLE_DOCS, T, 3, 1), ST_OK);
    ck_assert_int_eq(st_loader_create(&lt, ds, ST_SAMPLE_DOCS, T, 3, 0), ST_OK);
    ck_assert_int_eq(st_loader_num_samples(lv), n_val);
    ck_assert_int_eq(st_loader_num_samples(lt), nd - n_val);
    st_batch b;
    ck_assert_int_eq(st_batch_alloc(&b, (int)n_val, T), ST_OK);
    ck_assert_int_eq(st_loader_fill(lv, &b, 0, (int)n_val, 0), ST_OK);
    int64_t r = 0;
    for (int64_t i = 0; i < nd; i++) {
        if (!st_dataset_doc_split(ds, i)) continue;
        int32_t *t;
        uint8_t *m;
        size_t n;
        ck_assert_int_eq(st_dataset_read_doc(ds, i, &t, &m, &n), ST_OK);
        ck_assert_int_eq(b.labels[r], st_dataset_doc_label(ds, i));
        ck_assert_int_eq(b.lengths[r], n < (size_t)T ? (int)n : T);
        ck_assert(!memcmp(b.tokens + r * T, t, (size_t)b.lengths[r] * sizeof(int32_t)));
        free(t), free(m);
        r++;
    }
    /* shuffled epoch: a permutation of the same rows (compare label histograms and lengths sums) */
    st_batch s;
    ck_assert_int_eq(st_batch_alloc(&s, (int)n_val, T), ST_OK);
    ck_assert_int_eq(st_loader_fill(lv, &s, 5 * n_val, (int)n_val, 1), ST_OK);
    int hist[77] = {0};
    int64_t len_a = 0, len_b = 0;
    for (int64_t i = 0; i < n_val; i++) {
        hist[b.labels[i]]++;
        hist[s.labels[i]]--;
        len_a += b.lengths[i];
        len_b += s.lengths[i];
    }
    for (int k = 0; k < 77; k++) ck_assert_int_eq(hist[k], 0);
    ck_assert_int_eq(len_a, len_b);
    st_batch_free(&b), st_batch_free(&s);
    st_loader_free(lv), st_loader_free(lt);
    st_dataset_close(ds);
}
END_TEST

/* Preference data in DOCS mode: rows 2k and 2k+1 are one pair. */
START_TEST(test_loader_pairs)
{
    const char *in = tmp_path("pairs.jsonl"), *out = tmp_path("pairs.h5");
    char buf[4096] = "";
    for (int i = 0; i < 12; i++)
        snprintf(buf + strlen(buf), sizeof buf - strlen(buf),
                 "{\"prompt\": \"P%02d\", \"chosen\": \"good %d\", \"rejected\": \"bad %d\"}\n", i, i, i);
    spit_str(in, buf);
    must_prepare(in, out, "--val-fraction", "0");
    st_dataset *ds = open_ds(out);
    const int T = 32;
    st_loader *l;
    ck_assert_int_eq(st_loader_create(&l, ds, ST_SAMPLE_DOCS, T, 9, -1), ST_OK);
    ck_assert_int_eq(st_loader_num_samples(l), 24);
    st_batch b;
    ck_assert_int_eq(st_batch_alloc(&b, 24, T), ST_OK);
    ck_assert_int_eq(st_loader_fill(l, &b, 0, 24, 1), ST_OK);
    int seen[12] = {0};
    const int off = (int)strlen("<|user|>\nP");
    for (int k = 0; k < 12; k++) {
        int32_t *c = b.tokens + 2 * k * T, *r = b.tokens + (2 * k + 1) * T;
        int pc = (c[off] - '0') * 10 + (c[off + 1] - '0'), pr = (r[off] - '0') * 10 + (r[off + 1] - '0');
        ck_assert_int_eq(pc, pr);
        seen[pc]++;
        const int a = (int)strlen("<|user|>\nP00\n<|assistant|>\n");
        ck_assert_int_eq(c[a], 'g');
        ck_assert_int_eq(r[a], 'b');
    }
    for (int k = 0; k < 12; k++) ck_assert_int_eq(seen[k], 1);
    st_batch_free(&b);
    st_loader_free(l);
    st_dataset_close(ds);
}
END_TEST

/* ---- damaged files --------------------------------------------------------- */

/* Copy src to dst and overwrite element idx of dataset name with v. */
static void damage(const char *src, const char *dst, const char *name, int64_t idx, int64_t v)
{
    size_t n;
    char *bytes = th_read_file(src, &n);
    th_write_file(dst, bytes, n);
    free(bytes);
    hid_t f = H5Fopen(dst, H5F_ACC_RDWR, H5P_DEFAULT);
    ck_assert_int_ge(f, 0);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    ck_assert_int_ge(d, 0);
    hid_t space = H5Dget_space(d);
    hsize_t start = (hsize_t)idx, one = 1;
    H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, NULL, &one, NULL);
    hid_t mspace = H5Screate_simple(1, &one, NULL);
    ck_assert_int_ge(H5Dwrite(d, H5T_NATIVE_INT64, mspace, space, H5P_DEFAULT, &v), 0);
    H5Sclose(mspace), H5Sclose(space), H5Dclose(d), H5Fclose(f);
}

START_TEST(test_damaged)
{
    const char *bad = tmp_path("damaged.h5");
    st_dataset *ds = NULL;
    struct { const char *name; int64_t idx, v; const char *msg; } cases[] = {
        {"offsets", 5, 1000000000, "/offsets"},
        {"offsets", 0, 3, "/offsets[0]"},
        {"labels", 10, 77, "/labels[10]"},
        {"split", 3, 2, "/split[3]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        damage(b77(), bad, cases[i].name, cases[i].idx, cases[i].v);
        ck_assert_int_ne(st_dataset_open(&ds, bad), ST_OK);
        assert_contains(st_error_message(), bad);
        assert_contains(st_error_message(), cases[i].msg);
    }
    /* a token outside the vocabulary is caught when read */
    damage(b77(), bad, "tokens", 2, 999);
    ds = open_ds(bad);
    st_loader *l;
    st_batch b;
    ck_assert_int_eq(st_loader_create(&l, ds, ST_SAMPLE_DOCS, 8, 1, -1), ST_OK);
    ck_assert_int_eq(st_batch_alloc(&b, 1, 8), ST_OK);
    ck_assert_int_ne(st_loader_fill(l, &b, 0, 1, 0), ST_OK);
    assert_contains(st_error_message(), "/tokens[2] = 999");
    st_batch_free(&b);
    st_loader_free(l);
    st_dataset_close(ds);
    /* not HDF5 at all */
    spit_str(bad, "hello");
    ck_assert_int_ne(st_dataset_open(&ds, bad), ST_OK);
    assert_contains(st_error_message(), bad);
}

/* st_utf8_repair: each byte of a malformed sequence (a lone continuation
 * byte, a character cut short at the end, an overlong form) becomes U+FFFD;
 * well-formed text, multi-byte characters included, is kept as it is. */
START_TEST(test_utf8_repair)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"caf\xC3\xA9 ok", "caf\xC3\xA9 ok"},
        {"make a\x84 pict\x96ure", "make a\xEF\xBF\xBD pict\xEF\xBF\xBDure"},
        {"cut \xE2\x82", "cut \xEF\xBF\xBD\xEF\xBF\xBD"},
        {"\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = st_utf8_repair(cases[i].in, strlen(cases[i].in));
        ck_assert_ptr_nonnull(got);
        ck_assert_msg(!strcmp(got, cases[i].want), "case %zu: got \"%s\"", i, got);
        size_t bad;
        ck_assert(st_utf8_valid(got, strlen(got), &bad, NULL, 0));
        free(got);
    }
}
END_TEST

END_TEST

static Suite *dataset_suite(void)
{
    Suite *s = suite_create("dataset");
    TCase *tc = tcase_create("prepare");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_banking77);
    tcase_add_test(tc, test_utf8_repair);
    tcase_add_test(tc, test_label_names_file);
    tcase_add_test(tc, test_hh_pref);
    tcase_add_test(tc, test_sft_mask);
    tcase_add_test(tc, test_llama2c_text_prefix);
    tcase_add_test(tc, test_chat_mask);
    tcase_add_test(tc, test_text_sentencepiece);
    tcase_add_test(tc, test_text_empty_skipped);
    tcase_add_test(tc, test_ids_format);
    tcase_add_test(tc, test_truncation);
    tcase_add_test(tc, test_malformed);
    tcase_add_test(tc, test_malformed_chat_and_csv);
    tcase_add_test(tc, test_skip_mode);
    tcase_add_test(tc, test_cli);
    suite_add_tcase(s, tc);
    TCase *tl = tcase_create("loader");
    tcase_set_timeout(tl, 120);
    tcase_add_test(tl, test_loader_stream);
    tcase_add_test(tl, test_loader_docs);
    tcase_add_test(tl, test_loader_resume);
    tcase_add_test(tl, test_loader_split);
    tcase_add_test(tl, test_loader_pairs);
    tcase_add_test(tl, test_damaged);
    suite_add_tcase(s, tl);
    return s;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    th_tmpdir(MPI_COMM_SELF, DIR_, sizeof DIR_);
    if (!DIR_[0] || st_grid_init(&G, MPI_COMM_SELF, 1)) {
        fprintf(stderr, "test_dataset: setup failed\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    SRunner *sr = srunner_create(dataset_suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    st_grid_free(&G);
    th_rm_rf(DIR_);
    MPI_Finalize();
    return failed ? 1 : 0;
}
