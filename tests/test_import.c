/* test_import.c: the llama2.c and llm.c importers.
 *
 * llama2.c: the real stories260K.bin (header facts, tensors at the right names
 * by comparing with floats read straight from the file at offsets computed
 * here, the q/k RoPE permutation by comparing attention scores of run.c's
 * interleaved RoPE on the raw weights with the model's rotate-half RoPE
 * (tests/ref.c) on the imported ones), write/read round trips (tied and
 * untied), and hostile files.
 * llm.c: tiny fp32 and bf16 files written here from the published layout,
 * every element checked at its place; hostile headers.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/params.h"
#include "core/rng.h"
#include "harness.h"
#include "io/formats/llama2c.h"
#include "io/formats/llmc.h"
#include "io/formats/model_open.h"
#include "ref.h"

/* ---- helpers ------------------------------------------------------------ */

static unsigned char *slurp(const char *path, long *size)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    *size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)*size + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(fread(b, 1, (size_t)*size, fp), (size_t)*size);
    fclose(fp);
    return b;
}

static void spit(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    ck_assert_int_eq(fwrite(data, 1, n, fp), n);
    ck_assert_int_eq(fclose(fp), 0);
}

/* A fresh file name under /tmp (the file exists, empty). */
static void tmp_name(char *buf, size_t cap, const char *tag)
{
    snprintf(buf, cap, "/tmp/st_import_%s_XXXXXX", tag);
    int fd = mkstemp(buf);
    ck_assert_int_ge(fd, 0);
    close(fd);
}

/* Float number idx of the llama2.c payload (after the 28-byte header), read with plain stdio. */
static float file_float(const char *path, long idx)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_int_eq(fseek(fp, 28 + 4 * idx, SEEK_SET), 0);
    float x;
    ck_assert_int_eq(fread(&x, sizeof x, 1, fp), 1);
    fclose(fp);
    return x;
}

static const float *tensor(const st_config *cfg, const float *w, const char *name)
{
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, cfg, 1, 0), ST_OK);
    const st_tensor *t = st_layout_find(&lay, name);
    ck_assert_msg(t != NULL, "no tensor %s", name);
    size_t off = t->offset;
    st_layout_free(&lay);
    return w + off;
}

/* The error must be code, and its message must name each of the given strings. */
static void expect_error(st_err e, st_err code, const char *want1, const char *want2)
{
    const char *msg = st_error_message();
    ck_assert_msg(e == code, "got error %d (%s), expected %d; message: %s", e, st_error_name(e), code, msg);
    if (want1) ck_assert_msg(strstr(msg, want1), "message lacks '%s': %s", want1, msg);
    if (want2) ck_assert_msg(strstr(msg, want2), "message lacks '%s': %s", want2, msg);
}

/* ---- stories260K: the facts of the real file ---------------------------- */

/* stories260K's header and the float offsets of its tensors, computed here. */
enum { DIM = 64, HID = 172, NL = 5, NH = 8, NKV = 4, VOC = 512, SEQ = 512, HS = DIM / NH, KVD = NKV * HS };
enum {
    OFF_EMB = 0,
    OFF_RMS_ATT = OFF_EMB + VOC * DIM,
    OFF_WQ = OFF_RMS_ATT + NL * DIM,
    OFF_WK = OFF_WQ + NL * DIM * DIM,
    OFF_WV = OFF_WK + NL * KVD * DIM,
    OFF_WO = OFF_WV + NL * KVD * DIM,
    OFF_RMS_FFN = OFF_WO + NL * DIM * DIM,
    OFF_W1 = OFF_RMS_FFN + NL * DIM,
    OFF_W2 = OFF_W1 + NL * HID * DIM,
    OFF_W3 = OFF_W2 + NL * DIM * HID,
    OFF_RMS_FINAL = OFF_W3 + NL * HID * DIM,
    OFF_FREQ = OFF_RMS_FINAL + DIM,
    OFF_END = OFF_FREQ + 2 * SEQ * (HS / 2),
};

START_TEST(test_stories_header)
{
    const char *path = th_data_path("llama2c/stories260K.bin");
    st_config cfg;
    float *w = NULL;
    ck_assert_msg(st_model_source_read_file(path, "llama2c", &cfg, &w) == ST_OK, "%s", st_error_message());
    ck_assert_int_eq(cfg.family, ST_FAMILY_LLAMA);
    ck_assert_int_eq(cfg.d_model, 64);
    ck_assert_int_eq(cfg.d_ff, 172);
    ck_assert_int_eq(cfg.n_layer, 5);
    ck_assert_int_eq(cfg.n_head, 8);
    ck_assert_int_eq(cfg.n_kv_head, 4);
    ck_assert_int_eq(cfg.vocab_size, 512);
    ck_assert_int_eq(cfg.max_seq, 512);
    ck_assert_int_eq(cfg.tied_embeddings, 1);
    ck_assert_int_eq(cfg.qkv_bias, 0);
    ck_assert(cfg.rope_theta == 10000.0f);
    ck_assert(cfg.norm_eps == 1e-5f);

    /* parameters + RoPE tables + header account for every byte of the file */
    long size;
    free(slurp(path, &size));
    long long np = st_config_num_params(&cfg);
    ck_assert_int_eq(28 + 4 * (np + 2LL * SEQ * (HS / 2)), size);
    ck_assert_int_eq(4LL * OFF_END + 28, size);
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &cfg, 1, 0), ST_OK);
    ck_assert_int_eq((long long)lay.numel, np);
    st_layout_free(&lay);
    free(w);
}
END_TEST

START_TEST(test_stories_placement)
{
    const char *path = th_data_path("llama2c/stories260K.bin");
    st_config cfg;
    float *w = NULL;
    ck_assert_msg(st_model_source_read_file(path, "llama2c", &cfg, &w) == ST_OK, "%s", st_error_message());

    const float *emb = tensor(&cfg, w, "model.embed_tokens.weight");
    for (int c = 0; c < DIM; c++) ck_assert(emb[c] == file_float(path, OFF_EMB + c));
    ck_assert(emb[(VOC - 1) * DIM + 5] == file_float(path, OFF_EMB + (VOC - 1) * DIM + 5));

    const float *fin = tensor(&cfg, w, "model.norm.weight");
    ck_assert(fin[DIM - 1] == file_float(path, OFF_RMS_FINAL + DIM - 1));

    /* layer 3's wo, row 10, column 20 */
    const float *wo = tensor(&cfg, w, "model.layers.3.self_attn.o_proj.weight");
    ck_assert(wo[10 * DIM + 20] == file_float(path, OFF_WO + 3 * DIM * DIM + 10 * DIM + 20));
    /* w1 = gate, w2 = down, w3 = up */
    const float *gate = tensor(&cfg, w, "model.layers.2.mlp.gate_proj.weight");
    ck_assert(gate[100 * DIM + 7] == file_float(path, OFF_W1 + 2 * HID * DIM + 100 * DIM + 7));
    const float *down = tensor(&cfg, w, "model.layers.4.mlp.down_proj.weight");
    ck_assert(down[63 * HID + 171] == file_float(path, OFF_W2 + 4 * DIM * HID + 63 * HID + 171));
    const float *up = tensor(&cfg, w, "model.layers.0.mlp.up_proj.weight");
    ck_assert(up[1 * DIM + 2] == file_float(path, OFF_W3 + 1 * DIM + 2));
    const float *ln1 = tensor(&cfg, w, "model.layers.1.input_layernorm.weight");
    ck_assert(ln1[33] == file_float(path, OFF_RMS_ATT + 1 * DIM + 33));
    const float *ln2 = tensor(&cfg, w, "model.layers.4.post_attention_layernorm.weight");
    ck_assert(ln2[0] == file_float(path, OFF_RMS_FFN + 4 * DIM));
    /* v is not permuted */
    const float *wv = tensor(&cfg, w, "model.layers.1.self_attn.v_proj.weight");
    ck_assert(wv[31 * DIM + 63] == file_float(path, OFF_WV + 1 * KVD * DIM + 31 * DIM + 63));
    /* k, head 2, Meta row 2*HS + 2*1 + 1 (pair 1, odd member) is HF row 2*HS + HS/2 + 1 */
    const float *wk = tensor(&cfg, w, "model.layers.0.self_attn.k_proj.weight");
    ck_assert(wk[(2 * HS + HS / 2 + 1) * DIM + 9] == file_float(path, OFF_WK + (2 * HS + 3) * DIM + 9));
    free(w);
}
END_TEST

/* run.c's RoPE: rotate the adjacent pairs (2i, 2i+1) of every head of x (nh*hd) by pos * theta^(-2i/hd). */
static void rope_interleaved(double *x, int nh, int hd, int pos, double theta)
{
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < hd / 2; i++) {
            double ang = pos * pow(theta, -2.0 * i / hd), c = cos(ang), s = sin(ang);
            double *p = x + h * hd + 2 * i, a = p[0], b = p[1];
            p[0] = a * c - b * s;
            p[1] = a * s + b * c;
        }
}

/* y (rows) = W (rows, DIM) x, W as floats */
static void matvec(double *y, const float *W, const double *x, int rows)
{
    for (int r = 0; r < rows; r++) {
        double s = 0.0;
        for (int c = 0; c < DIM; c++) s += (double)W[r * DIM + c] * x[c];
        y[r] = s;
    }
}

/* Scores q_h . k_{h / (NH/NKV)} of every query head. */
static void scores(double *s, const double *q, const double *k)
{
    for (int h = 0; h < NH; h++) {
        const double *qh = q + h * HS, *kh = k + (h / (NH / NKV)) * HS;
        s[h] = 0.0;
        for (int d = 0; d < HS; d++) s[h] += qh[d] * kh[d];
    }
}

START_TEST(test_stories_rope_permutation)
{
    const char *path = th_data_path("llama2c/stories260K.bin");
    st_config cfg;
    float *w = NULL;
    ck_assert_msg(st_model_source_read_file(path, "llama2c", &cfg, &w) == ST_OK, "%s", st_error_message());
    const int layer = 2, pq = 7, pk = 3;

    /* the raw Meta-order weights, straight from the file */
    float *wq_meta = malloc(DIM * DIM * sizeof(float)), *wk_meta = malloc(KVD * DIM * sizeof(float));
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, 28 + 4L * (OFF_WQ + layer * DIM * DIM), SEEK_SET);
    ck_assert_int_eq(fread(wq_meta, sizeof(float), DIM * DIM, fp), DIM * DIM);
    fseek(fp, 28 + 4L * (OFF_WK + layer * KVD * DIM), SEEK_SET);
    ck_assert_int_eq(fread(wk_meta, sizeof(float), KVD * DIM, fp), KVD * DIM);
    fclose(fp);

    st_rng rng;
    st_rng_seed(&rng, 1234);
    double x[DIM], qm[DIM], km[KVD], qh[DIM], kh[KVD], qraw[DIM], kraw[KVD];
    double s_meta[NH], s_hf[NH], s_raw[NH];
    for (int i = 0; i < DIM; i++) x[i] = 2.0 * st_rng_uniform(&rng) - 1.0;

    /* run.c: interleaved RoPE on the file's weights */
    matvec(qm, wq_meta, x, DIM);
    matvec(km, wk_meta, x, KVD);
    rope_interleaved(qm, NH, HS, pq, 10000.0);
    rope_interleaved(km, NKV, HS, pk, 10000.0);
    scores(s_meta, qm, km);

    /* shardtune: rotate-half RoPE (the model's reference) on the imported weights */
    matvec(qh, tensor(&cfg, w, "model.layers.2.self_attn.q_proj.weight"), x, DIM);
    matvec(kh, tensor(&cfg, w, "model.layers.2.self_attn.k_proj.weight"), x, KVD);
    ref_rope(qh, 1, NH, 1, HS, pq, cfg.rope_theta, 0);
    ref_rope(kh, 1, NKV, 1, HS, pk, cfg.rope_theta, 0);
    scores(s_hf, qh, kh);

    /* same rotated vectors, up to the row order within a head */
    for (int h = 0; h < NH; h++)
        for (int i = 0; i < HS / 2; i++)
            for (int j = 0; j < 2; j++)
                ck_assert_double_eq_tol(qh[h * HS + j * (HS / 2) + i], qm[h * HS + 2 * i + j], 1e-9);
    for (int h = 0; h < NH; h++) ck_assert_double_eq_tol(s_hf[h], s_meta[h], 1e-9);

    /* and the check has teeth: rotate-half on the unpermuted weights gives other scores */
    matvec(qraw, wq_meta, x, DIM);
    matvec(kraw, wk_meta, x, KVD);
    ref_rope(qraw, 1, NH, 1, HS, pq, 10000.0, 0);
    ref_rope(kraw, 1, NKV, 1, HS, pk, 10000.0, 0);
    scores(s_raw, qraw, kraw);
    double diff = 0.0;
    for (int h = 0; h < NH; h++) diff = fmax(diff, fabs(s_raw[h] - s_meta[h]));
    ck_assert_msg(diff > 1e-3, "unpermuted weights give the same scores (diff %g): the test cannot fail", diff);
    free(wq_meta);
    free(wk_meta);
    free(w);
}
END_TEST

START_TEST(test_rope_rows_inverse)
{
    /* meta->hf then hf->meta is the identity; for hd = 8 the map is no involution */
    enum { H = 3, D = 8, COLS = 5 };
    float a[H * D * COLS], b[H * D * COLS], c[H * D * COLS];
    for (int i = 0; i < H * D * COLS; i++) a[i] = (float)i;
    st_rope_rows_meta_to_hf(b, a, H, D, COLS);
    st_rope_rows_hf_to_meta(c, b, H, D, COLS);
    ck_assert_int_eq(memcmp(a, c, sizeof a), 0);
    st_rope_rows_meta_to_hf(c, b, H, D, COLS);
    ck_assert_int_ne(memcmp(a, c, sizeof a), 0);
    /* in head 1: HF row j*(D/2) + i holds Meta row 2*i + j; (i, j) = (1, 0) and (0, 1) */
    ck_assert(b[(1 * D + 1) * COLS + 0] == a[(1 * D + 2) * COLS + 0]);
    ck_assert(b[(1 * D + 4) * COLS + 3] == a[(1 * D + 1) * COLS + 3]);
}
END_TEST

/* ---- round trips -------------------------------------------------------- */

START_TEST(test_roundtrip_stories)
{
    const char *path = th_data_path("llama2c/stories260K.bin");
    char out[64];
    tmp_name(out, sizeof out, "rt");
    st_config c1, c2;
    float *w1 = NULL, *w2 = NULL;
    ck_assert_msg(st_model_source_read_file(path, "llama2c", &c1, &w1) == ST_OK, "%s", st_error_message());
    ck_assert_msg(st_llama2c_write(out, &c1, w1) == ST_OK, "%s", st_error_message());
    ck_assert_msg(st_model_source_read_file(out, "llama2c", &c2, &w2) == ST_OK, "%s", st_error_message());
    ck_assert_int_eq(memcmp(&c1, &c2, sizeof c1), 0);
    ck_assert_int_eq(memcmp(w1, w2, (size_t)st_config_num_params(&c1) * sizeof *w1), 0);

    /* the written file is the original byte for byte, except the RoPE tables,
     * which are recomputed and must agree with the exporter's to float rounding */
    long n_orig, n_out;
    unsigned char *orig = slurp(path, &n_orig), *mine = slurp(out, &n_out);
    ck_assert_int_eq(n_orig, n_out);
    long freq0 = 28 + 4L * OFF_FREQ, freq1 = 28 + 4L * OFF_END;
    ck_assert_int_eq(memcmp(orig, mine, (size_t)freq0), 0);
    ck_assert_int_eq(memcmp(orig + freq1, mine + freq1, (size_t)(n_orig - freq1)), 0);
    double maxdiff = 0.0;
    for (long i = freq0; i < freq1; i += 4) {
        float a, b;
        memcpy(&a, orig + i, 4);
        memcpy(&b, mine + i, 4);
        maxdiff = fmax(maxdiff, fabs((double)a - b));
    }
    ck_assert_msg(maxdiff < 1e-6, "RoPE tables differ from the exporter's by %g", maxdiff);
    free(orig);
    free(mine);
    free(w1);
    free(w2);
    unlink(out);
}
END_TEST

START_TEST(test_roundtrip_untied)
{
    st_config c = {.family = ST_FAMILY_LLAMA, .n_layer = 2, .d_model = 16, .n_head = 4, .n_kv_head = 2,
                   .d_ff = 24, .vocab_size = 11, .max_seq = 6, .norm_eps = 1e-5f, .rope_theta = 10000.0f,
                   .tied_embeddings = 0};
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &c, 1, 0), ST_OK);
    float *w = malloc(lay.numel * sizeof *w);
    st_params_init(&lay, w, 77);
    const st_tensor *head = st_layout_find(&lay, "lm_head.weight");
    ck_assert_ptr_nonnull(head);

    char out[64];
    tmp_name(out, sizeof out, "untied");
    ck_assert_msg(st_llama2c_write(out, &c, w) == ST_OK, "%s", st_error_message());
    /* header says "not shared" with a negative vocabulary; wcls is the file's tail */
    long size;
    unsigned char *b = slurp(out, &size);
    int32_t hdr[7];
    memcpy(hdr, b, sizeof hdr);
    ck_assert_int_eq(hdr[5], -11);
    ck_assert_int_eq(memcmp(b + size - 4 * 11 * 16, w + head->offset, 4 * 11 * 16), 0);
    free(b);

    st_config c2;
    float *w2 = NULL;
    ck_assert_msg(st_model_source_read_file(out, "llama2c", &c2, &w2) == ST_OK, "%s", st_error_message());
    ck_assert_int_eq(memcmp(&c, &c2, sizeof c), 0);
    ck_assert_int_eq(memcmp(w, w2, lay.numel * sizeof *w), 0);
    free(w);
    free(w2);
    st_layout_free(&lay);
    unlink(out);
}
END_TEST

START_TEST(test_write_refuses)
{
    st_config c = {.family = ST_FAMILY_LLAMA, .n_layer = 1, .d_model = 8, .n_head = 2, .n_kv_head = 2,
                   .d_ff = 8, .vocab_size = 5, .max_seq = 4, .norm_eps = 1e-5f, .rope_theta = 10000.0f,
                   .tied_embeddings = 1};
    float w[4096] = {0};
    const char *out = "/tmp/st_import_refused.bin";
    unlink(out);
    st_config bad = c;
    bad.family = ST_FAMILY_GPT2;
    expect_error(st_llama2c_write(out, &bad, w), ST_ERR_ARG, out, "family");
    bad = c;
    bad.qkv_bias = 1;
    expect_error(st_llama2c_write(out, &bad, w), ST_ERR_ARG, out, "bias");
    bad = c;
    bad.rope_theta = 500000.0f;
    expect_error(st_llama2c_write(out, &bad, w), ST_ERR_ARG, out, "rope_theta");
    ck_assert_int_ne(access(out, F_OK), 0);
    /* a directory that does not exist: an I/O error, nothing left behind */
    expect_error(st_llama2c_write("/nonexistent_dir/x.bin", &c, w), ST_ERR_IO, "/nonexistent_dir/x.bin", NULL);
}
END_TEST

/* ---- llama2.c hostile input --------------------------------------------- */

/* A llama2.c file: header h, then n_float zero floats. */
static void write_l2c(const char *path, const int32_t h[7], long n_float)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_int_eq(fwrite(h, 4, 7, fp), 7);
    float z = 0.0f;
    for (long i = 0; i < n_float; i++) ck_assert_int_eq(fwrite(&z, 4, 1, fp), 1);
    fclose(fp);
}

static st_err read_l2c(const char *path)
{
    st_config c;
    float *w = (float *)1;
    st_err e = st_model_source_read_file(path, "llama2c", &c, &w);
    if (e) ck_assert_ptr_null(w);
    free(w);
    return e;
}

START_TEST(test_l2c_hostile_sizes)
{
    const char *path = th_data_path("llama2c/stories260K.bin");
    char t[64];
    tmp_name(t, sizeof t, "hostile");
    long size;
    unsigned char *b = slurp(path, &size);

    spit(t, b, (size_t)size - 4);   /* one float short */
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "needs exactly 1056540");
    spit(t, b, (size_t)size - 1);   /* one byte short */
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "1056539 bytes");
    spit(t, b, 10);                 /* inside the header */
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "shorter than");
    spit(t, b, 0);
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "shorter than");
    unsigned char *big = calloc((size_t)size + 4 * VOC * DIM, 1);
    memcpy(big, b, (size_t)size);
    spit(t, big, (size_t)size + 1); /* a trailing byte */
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "needs exactly");
    spit(t, big, (size_t)size + 4 * VOC * DIM); /* a classifier the header does not announce */
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "separate classifier");
    int32_t neg = -VOC;             /* announced but missing */
    memcpy(big + 20, &neg, 4);
    spit(t, big, (size_t)size);
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "has none");
    free(big);

    /* a NaN inside layer 3's wo is named */
    float nan = NAN;
    memcpy(b + 28 + 4L * (OFF_WO + 3 * DIM * DIM + 5), &nan, 4);
    spit(t, b, (size_t)size);
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "model.layers.3.self_attn.o_proj.weight");
    free(b);

    expect_error(read_l2c("/nonexistent_dir/none.bin"), ST_ERR_IO, "/nonexistent_dir/none.bin", NULL);
    expect_error(read_l2c("/tmp"), ST_ERR_IO, "not a regular file", NULL);
    unlink(t);
}
END_TEST

START_TEST(test_l2c_hostile_header)
{
    char t[64];
    tmp_name(t, sizeof t, "hdr");
    const int32_t ok[7] = {8, 12, 1, 2, 1, 5, 4};
    /* a valid tiny file, to be sure the cases below fail for their own reason */
    long n_ok = 5 * 8 + 8 + 8 * 8 + 2 * 4 * 8 + 8 * 8 + 8 + 3 * 12 * 8 + 8 + 4 * 4;
    write_l2c(t, ok, n_ok);
    ck_assert_msg(read_l2c(t) == ST_OK, "%s", st_error_message());

    struct { int field; int32_t value; const char *want; } cases[] = {
        {0, 0, "dim is 0"},
        {0, -8, "dim is -8"},
        {1, 0, "hidden_dim is 0"},
        {2, -3, "n_layers is -3"},
        {3, 0, "n_heads is 0"},
        {4, -1, "n_kv_heads is -1"},
        {5, 0, "vocab_size is 0"},
        {5, INT32_MIN, "vocab_size is -2147483648"},
        {6, 0, "seq_len is 0"},
        {3, 3, "not a multiple of n_heads"},       /* 8 % 3 */
        {0, 0x616b3432, "ak42"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int32_t h[7];
        memcpy(h, ok, sizeof h);
        h[cases[i].field] = cases[i].value;
        write_l2c(t, h, n_ok);
        expect_error(read_l2c(t), ST_ERR_FORMAT, t, cases[i].want);
    }
    int32_t h[7];
    memcpy(h, ok, sizeof h);
    h[3] = 4;                       /* heads 4, kv 3: 4 % 3 */
    h[4] = 3;
    write_l2c(t, h, n_ok);
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "not a multiple of n_kv_heads");
    memcpy(h, ok, sizeof h);
    h[0] = 12;                      /* head size 12 / 4 = 3 is odd */
    h[3] = 4;
    write_l2c(t, h, n_ok);
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "odd");

    /* sizes whose products overflow 64 bits */
    const int32_t huge[7] = {1 << 30, INT32_MAX, INT32_MAX, 2, 1, INT32_MAX, INT32_MAX};
    write_l2c(t, huge, n_ok);
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "overflow");
    /* large but representable: refused by the size check, before any allocation */
    const int32_t large[7] = {1 << 16, 1 << 18, 1000, 256, 256, 1 << 20, 1 << 20};
    write_l2c(t, large, n_ok);
    expect_error(read_l2c(t), ST_ERR_FORMAT, t, "needs exactly");
    unlink(t);
}
END_TEST

/* ---- llm.c -------------------------------------------------------------- */

enum { LT = 8, LV = 10, LVP = 16, LL = 2, LNH = 2, LC = 8, N_LLMC_TENSORS = 16 };

/* Element counts of llm.c's 16 tensors, in file order (train_gpt2.c fill_in_parameter_sizes). */
static void llmc_sizes(long n[N_LLMC_TENSORS], long Vp, long C, long maxT, long L)
{
    long s[N_LLMC_TENSORS] = {Vp * C, maxT * C, L * C, L * C, L * 3 * C * C, L * 3 * C, L * C * C, L * C,
                              L * C, L * C, L * 4 * C * C, L * 4 * C, L * C * 4 * C, L * C, C, C};
    memcpy(n, s, sizeof s);
}

/* Element idx of tensor k: unique and exact in fp32; for bf16 files a value
 * with 7 significant bits, so it survives the narrowing exactly. */
static float llmc_val(int k, long idx, int bf16)
{
    if (bf16) return (float)((k * 37 + idx) % 201 - 100) / 32.0f;
    return (float)(1 + k * 100000 + idx);
}

/* Writes a tiny llm.c file; version 3 (fp32) or 5 (bf16). */
static void write_llmc(const char *path, int version, const int32_t *hdr_override, int n_override)
{
    int32_t h[256] = {0};
    h[0] = 20240326;
    h[1] = version;
    h[2] = LT;
    h[3] = LV;
    h[4] = LL;
    h[5] = LNH;
    h[6] = LC;
    h[7] = LVP;
    for (int i = 0; i < n_override; i += 2) h[hdr_override[i]] = hdr_override[i + 1];
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_int_eq(fwrite(h, 4, 256, fp), 256);
    long n[N_LLMC_TENSORS];
    llmc_sizes(n, LVP, LC, LT, LL);
    for (int k = 0; k < N_LLMC_TENSORS; k++)
        for (long i = 0; i < n[k]; i++) {
            float x = llmc_val(k, i, version == 5);
            if (version == 5) {
                uint32_t u;
                memcpy(&u, &x, 4);
                uint16_t top = (uint16_t)(u >> 16);
                ck_assert_int_eq(fwrite(&top, 2, 1, fp), 1);
            } else {
                ck_assert_int_eq(fwrite(&x, 4, 1, fp), 1);
            }
        }
    fclose(fp);
}

/* Every element of the imported model against its place in the llm.c file. */
static void check_llmc_placement(int bf16)
{
    char t[64];
    tmp_name(t, sizeof t, "llmc");
    write_llmc(t, bf16 ? 5 : 3, NULL, 0);
    st_config c;
    float *w = NULL;
    ck_assert_msg(st_model_source_read_file(t, "llmc", &c, &w) == ST_OK, "%s", st_error_message());
    ck_assert_int_eq(c.family, ST_FAMILY_GPT2);
    ck_assert_int_eq(c.n_layer, LL);
    ck_assert_int_eq(c.d_model, LC);
    ck_assert_int_eq(c.n_head, LNH);
    ck_assert_int_eq(c.n_kv_head, LNH);
    ck_assert_int_eq(c.d_ff, 4 * LC);
    ck_assert_int_eq(c.vocab_size, LV);
    ck_assert_int_eq(c.max_seq, LT);
    ck_assert_int_eq(c.tied_embeddings, 1);
    ck_assert(c.norm_eps == 1e-5f);

    const int C = LC;
    char name[128];
#define AT(nm) tensor(&c, w, nm)
#define LAYER(l, suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", (l), (suffix)), AT(name))
#define EQ(got, k, idx) ck_assert_msg((got) == llmc_val((k), (idx), bf16), "%s: %g != tensor %d elem %ld", \
                                      #got, (double)(got), (k), (long)(idx))
    const float *wte = AT("model.embed_tokens.weight"), *wpe = AT("model.embed_positions.weight");
    for (int i = 0; i < LV * C; i++) EQ(wte[i], 0, i);
    for (int i = 0; i < LT * C; i++) EQ(wpe[i], 1, i);
    for (int l = 0; l < LL; l++) {
        for (int i = 0; i < C; i++) {
            EQ(LAYER(l, "input_layernorm.weight")[i], 2, l * C + i);
            EQ(LAYER(l, "input_layernorm.bias")[i], 3, l * C + i);
            /* fused qkv: rows q 0..C-1, k C..2C-1, v 2C..3C-1 */
            EQ(LAYER(l, "self_attn.q_proj.bias")[i], 5, l * 3 * C + i);
            EQ(LAYER(l, "self_attn.k_proj.bias")[i], 5, l * 3 * C + C + i);
            EQ(LAYER(l, "self_attn.v_proj.bias")[i], 5, l * 3 * C + 2 * C + i);
            EQ(LAYER(l, "self_attn.o_proj.bias")[i], 7, l * C + i);
            EQ(LAYER(l, "post_attention_layernorm.weight")[i], 8, l * C + i);
            EQ(LAYER(l, "post_attention_layernorm.bias")[i], 9, l * C + i);
            EQ(LAYER(l, "mlp.down_proj.bias")[i], 13, l * C + i);
        }
        for (int r = 0; r < C; r++)
            for (int col = 0; col < C; col++) {
                EQ(LAYER(l, "self_attn.q_proj.weight")[r * C + col], 4, l * 3 * C * C + r * C + col);
                EQ(LAYER(l, "self_attn.k_proj.weight")[r * C + col], 4, l * 3 * C * C + (C + r) * C + col);
                EQ(LAYER(l, "self_attn.v_proj.weight")[r * C + col], 4, l * 3 * C * C + (2 * C + r) * C + col);
                EQ(LAYER(l, "self_attn.o_proj.weight")[r * C + col], 6, l * C * C + r * C + col);
            }
        for (int i = 0; i < 4 * C * C; i++) {
            EQ(LAYER(l, "mlp.up_proj.weight")[i], 10, l * 4 * C * C + i);
            EQ(LAYER(l, "mlp.down_proj.weight")[i], 12, l * 4 * C * C + i);
        }
        for (int i = 0; i < 4 * C; i++) EQ(LAYER(l, "mlp.up_proj.bias")[i], 11, l * 4 * C + i);
    }
    for (int i = 0; i < C; i++) {
        EQ(AT("model.norm.weight")[i], 14, i);
        EQ(AT("model.norm.bias")[i], 15, i);
    }
#undef EQ
#undef LAYER
#undef AT
    /* the buffer holds exactly the file's tensors minus the padding rows */
    long n[N_LLMC_TENSORS], total = 0;
    llmc_sizes(n, LVP, LC, LT, LL);
    for (int k = 0; k < N_LLMC_TENSORS; k++) total += n[k];
    ck_assert_int_eq(st_config_num_params(&c), total - (LVP - LV) * LC);
    if (!bf16) /* and none of the padding values made it in */
        for (long i = 0; i < st_config_num_params(&c); i++)
            for (long p = LV * C; p < LVP * C; p++) ck_assert(w[i] != llmc_val(0, p, 0));
    free(w);
    unlink(t);
}

START_TEST(test_llmc_fp32) { check_llmc_placement(0); }
END_TEST

START_TEST(test_llmc_bf16) { check_llmc_placement(1); }
END_TEST

static st_err read_llmc(const char *path)
{
    st_config c;
    float *w = (float *)1;
    st_err e = st_model_source_read_file(path, "llmc", &c, &w);
    if (e) ck_assert_ptr_null(w);
    free(w);
    return e;
}

START_TEST(test_llmc_hostile)
{
    char t[64];
    tmp_name(t, sizeof t, "llmch");
    struct { int32_t ov[4]; int n; const char *want; } cases[] = {
        {{0, 20240327}, 2, "magic"},
        {{1, 4}, 2, "version 4"},
        {{1, 1}, 2, "version 1"},
        {{7, LV - 1}, 2, "smaller than V"},
        {{4, 0}, 2, "L (header[4]) is 0"},
        {{6, -8}, 2, "C (header[6]) is -8"},
        {{5, 3}, 2, "not a multiple of NH"},
        {{2, 9}, 2, "needs exactly"},                        /* maxT one more than the file holds */
        {{6, 1 << 30, 5, 1 << 30}, 4, "too large"},
        {{6, 1 << 28, 4, INT32_MAX}, 4, "overflow"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_llmc(t, 3, cases[i].ov, cases[i].n);
        expect_error(read_llmc(t), ST_ERR_FORMAT, t, cases[i].want);
    }
    /* truncated by one bf16 value; and a file shorter than the header */
    write_llmc(t, 5, NULL, 0);
    long size;
    unsigned char *b = slurp(t, &size);
    ck_assert_int_eq(read_llmc(t), ST_OK);
    spit(t, b, (size_t)size - 2);
    expect_error(read_llmc(t), ST_ERR_FORMAT, t, "needs exactly");
    spit(t, b, 100);
    expect_error(read_llmc(t), ST_ERR_FORMAT, t, "shorter than");
    /* a bf16 NaN (0x7fc0) in lnfb, the last tensor */
    uint16_t nan16 = 0x7fc0;
    memcpy(b + size - 2, &nan16, 2);
    spit(t, b, (size_t)size);
    expect_error(read_llmc(t), ST_ERR_FORMAT, t, "model.norm.bias");
    free(b);
    expect_error(read_llmc("/nonexistent_dir/gpt2.bin"), ST_ERR_IO, "/nonexistent_dir/gpt2.bin", NULL);
    unlink(t);
}
END_TEST

/* ---- runner ------------------------------------------------------------- */

static Suite *import_suite(void)
{
    Suite *s = suite_create("import");
    TCase *tc = tcase_create("llama2c");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_stories_header);
    tcase_add_test(tc, test_stories_placement);
    tcase_add_test(tc, test_stories_rope_permutation);
    tcase_add_test(tc, test_rope_rows_inverse);
    tcase_add_test(tc, test_roundtrip_stories);
    tcase_add_test(tc, test_roundtrip_untied);
    tcase_add_test(tc, test_write_refuses);
    tcase_add_test(tc, test_l2c_hostile_sizes);
    tcase_add_test(tc, test_l2c_hostile_header);
    suite_add_tcase(s, tc);
    tc = tcase_create("llmc");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_llmc_fp32);
    tcase_add_test(tc, test_llmc_bf16);
    tcase_add_test(tc, test_llmc_hostile);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(import_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
