/* test_formats.c: model formats in and out (io/safetensors, io/hf, io/gguf,
 * `shardtune convert DIR` and `shardtune export`).
 *
 * Fixtures are written here from the published specs, independently of the
 * code under test: safetensors files by hand (8-byte little-endian header
 * length, JSON header, padding), Hugging Face directories for GPT-2 (Conv1D,
 * fused c_attn, with and without the "transformer." prefix, buffers to skip)
 * and Llama / Qwen2 (GQA, q/k/v bias, tied and untied) in F32, F16 and BF16,
 * one file or sharded with an index, and a byte-level BPE tokenizer.json.
 *
 * Checked: the half-precision conversions (exhaustively); import gives the
 * same logits as the source model under this file's own name mapping (double
 * reference model of tests/ref.c); HF -> h5 -> HF gives bit-identical tensors
 * and the same config.json fields; llama2.c stories260K -> h5 -> HF -> h5 is
 * bit-identical; GGUF export read back with the reader (metadata, names,
 * reversed dims, alignment, data exact in f32 and nearest in f16, q/k
 * permutation recomputed here); tokenizers exported and reloaded encode
 * alike; hostile safetensors, GGUF and config files are refused with clear
 * messages (every truncation of a valid file too).
 */
#include <check.h>
#include <cjson/cJSON.h>
#include <ftw.h>
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "core/params.h"
#include "harness.h"
#include "io/checkpoint.h"
#include "io/formats/gguf.h"
#include "io/formats/hf.h"
#include "io/formats/llama2c.h"
#include "io/formats/model_open.h"
#include "io/formats/safetensors.h"
#include "io/tok/tokenizer.h"
#include "ref.h"



/* ==== helpers ============================================================== */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unif(uint64_t *s) { return (double)(rng_next(s) >> 11) / 9007199254740992.0; }

/* binary16 / bfloat16 decoded from the definitions, with ldexp. */
static double f16_ref(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static double bf16_ref(uint16_t b)
{
    int s = b >> 15, e = (b >> 7) & 255, m = b & 127;
    double v = e == 0 ? ldexp(m, -133) : e == 255 ? (m ? NAN : INFINITY) : ldexp(128 + m, e - 134);
    return s ? -v : v;
}

static uint32_t fbits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    return x;
}

static float bitsf(uint32_t x)
{
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static char g_root[256];   /* this run's scratch directory */

static void path_in(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", g_root, name);
}

static void mkdir_p(const char *dir) { ck_assert_msg(mkdir(dir, 0755) == 0, "mkdir %s", dir); }

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    (void)sb, (void)flag, (void)f;
    return remove(p);
}

static void rm_rf(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

/* An error code and message check: every substring must appear. */
static void expect_error(st_err got, st_err want, const char *s1, const char *s2)
{
    const char *msg = st_error_message();
    ck_assert_msg(got == want, "expected error %d, got %d: %s", want, got, msg);
    if (s1) ck_assert_msg(strstr(msg, s1) != NULL, "message lacks \"%s\": %s", s1, msg);
    if (s2) ck_assert_msg(strstr(msg, s2) != NULL, "message lacks \"%s\": %s", s2, msg);
    st_error_clear();
}

/* ---- running the commands in-process ---- */

static st_err run_convert(const char *src, const char *out, const char *extra)
{
    char *argv[8] = {"convert", (char *)src, "--out", (char *)out, NULL, NULL, NULL, NULL};
    int argc = 4;
    if (extra) argv[argc++] = "--tokenizer", argv[argc++] = (char *)extra;
    return st_cmd_convert(argc, argv, MPI_COMM_WORLD);
}

static st_err run_export(const char *ckpt, const char *to, const char *dtype)
{
    char *argv[8] = {"export", (char *)ckpt, "--to", (char *)to, "--dtype", (char *)(dtype ? dtype : "f32"), NULL};
    return st_cmd_export(6, argv, MPI_COMM_WORLD);
}

/* A checkpoint's weights on this rank (1x1) and its tokenizer blob. */
static float *load_ckpt(const char *path, st_config *cfg, char **kind, uint8_t **blob, size_t *nb)
{
    ck_assert_int_eq(st_ckpt_read_config(path, MPI_COMM_SELF, cfg), ST_OK);
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, cfg, 1, 0), ST_OK);
    st_grid g;
    ck_assert_int_eq(st_grid_init(&g, MPI_COMM_SELF, 1), ST_OK);
    float *p = calloc(lay.numel, sizeof *p);
    st_ckpt_tensors t = {.lay = &lay, .params = p};
    char *k = NULL;
    uint8_t *b = NULL;
    size_t n = 0;
    st_err e = st_ckpt_load(path, &g, &t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, &k, &b, &n);
    ck_assert_msg(e == ST_OK, "%s", st_error_message());
    st_grid_free(&g);
    st_layout_free(&lay);
    if (kind) *kind = k;
    else free(k);
    if (blob) *blob = b, *nb = n;
    else free(b);
    return p;
}

/* Save params (1x1 layout of cfg) with a tokenizer as a checkpoint. */
static void save_ckpt(const char *path, const st_config *cfg, const float *params, const st_tokenizer *tok)
{
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, cfg, 1, 0), ST_OK);
    st_grid g;
    ck_assert_int_eq(st_grid_init(&g, MPI_COMM_SELF, 1), ST_OK);
    const char *kind = NULL;
    uint8_t *blob = NULL;
    size_t nb = 0;
    if (tok) ck_assert_int_eq(st_tokenizer_to_blob(tok, &kind, &blob, &nb), ST_OK);
    st_ckpt_tensors t = {.lay = &lay, .params = (float *)params};
    st_train_state s = {0};
    st_err e = st_ckpt_save_file(path, &g, &t, &s, kind, blob, nb);
    ck_assert_msg(e == ST_OK, "%s", st_error_message());
    free(blob);
    st_grid_free(&g);
    st_layout_free(&lay);
}

/* ==== an independent safetensors writer and reader ========================= */

typedef struct {
    char name[96];
    const char *dtype;            /* "F32", "F16", "BF16" */
    int ndim;
    int64_t shape[4];
    size_t numel;
    double *val;                  /* what the file holds, exactly */
    uint8_t *raw;
    size_t nbytes;
    int shard;                    /* 0 or 1 when sharded */
} fx_tensor;

typedef struct {
    fx_tensor t[160];
    int n;
} fx_model;

static void fx_free(fx_model *m)
{
    for (int i = 0; i < m->n; i++) free(m->t[i].val), free(m->t[i].raw);
    m->n = 0;
}

static const fx_tensor *fx_find(const fx_model *m, const char *name)
{
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, name)) return &m->t[i];
    return NULL;
}

/* A tensor of random values. role: 0 weight, 1 norm weight (near 1), 2 bias. */
static fx_tensor *fx_add(fx_model *m, const char *dtype, int role, uint64_t *rng, const char *name, int ndim,
                         int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    ck_assert_int_lt(m->n, 160);
    fx_tensor *t = &m->t[m->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->ndim = ndim;
    int64_t d[4] = {d0, d1, d2, d3};
    t->numel = 1;
    for (int i = 0; i < ndim; i++) t->shape[i] = d[i], t->numel *= (size_t)d[i];
    size_t es = !strcmp(dtype, "F32") ? 4 : 2;
    t->nbytes = t->numel * es;
    t->val = malloc(t->numel * sizeof *t->val + 8);
    t->raw = malloc(t->nbytes + 8);
    for (size_t i = 0; i < t->numel; i++) {
        double u = rng_unif(rng);
        if (es == 4) {
            float f = role == 1 ? (float)(0.8 + 0.4 * u) : (float)(0.5 * (u - 0.5));
            memcpy(t->raw + 4 * i, &f, 4);
            t->val[i] = f;
            continue;
        }
        uint64_t r = rng_next(rng);
        uint16_t sign = role == 1 ? 0 : (uint16_t)((r & 1) << 15), h;
        if (!strcmp(dtype, "F16")) {
            uint16_t e = role == 1 ? (uint16_t)(14 + (r >> 1 & 1)) : (uint16_t)(9 + (r >> 1) % 6);
            h = (uint16_t)(sign | e << 10 | (r >> 8 & 1023));
            if (role != 1 && i == 0) h = 0x0001;      /* the smallest subnormal */
            if (role != 1 && i == 1) h = 0x8000;      /* -0 */
            t->val[i] = f16_ref(h);
        } else {
            uint16_t e = role == 1 ? (uint16_t)(126 + (r >> 1 & 1)) : (uint16_t)(120 + (r >> 1) % 6);
            h = (uint16_t)(sign | e << 7 | (r >> 8 & 127));
            if (role != 1 && i == 0) h = 0x0001;      /* a float subnormal */
            t->val[i] = bf16_ref(h);
        }
        memcpy(t->raw + 2 * i, &h, 2);
    }
    return t;
}

static void put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Write the tensors of shard `shard` (-1: all) as one safetensors file. */
static void fx_write_file(const fx_model *m, int shard, const char *path)
{
    size_t cap = 1 << 16, len = 0, off = 0;
    char *h = malloc(cap);
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < m->n; i++) {
        const fx_tensor *t = &m->t[i];
        if (shard >= 0 && t->shard != shard) continue;
        len += (size_t)snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, t->dtype);
        for (int d = 0; d < t->ndim; d++) len += (size_t)snprintf(h + len, cap - len, "%s%lld", d ? "," : "",
                                                                   (long long)t->shape[d]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%zu,%zu]}", off, off + t->nbytes);
        off += t->nbytes;
        ck_assert_int_lt(len, cap - 256);
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while ((len + 8) % 8) h[len++] = ' ';
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    uint8_t n8[8];
    put_u64le(n8, len);
    fwrite(n8, 1, 8, fp);
    fwrite(h, 1, len, fp);
    for (int i = 0; i < m->n; i++)
        if (shard < 0 || m->t[i].shard == shard) fwrite(m->t[i].raw, 1, m->t[i].nbytes, fp);
    ck_assert_int_eq(fclose(fp), 0);
    free(h);
}

/* DIR/model.safetensors, or two shards plus model.safetensors.index.json. */
static void fx_write_weights(fx_model *m, const char *dir, int sharded)
{
    char path[1024];
    if (!sharded) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        fx_write_file(m, -1, path);
        return;
    }
    static const char *const shard[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    cJSON *idx = cJSON_CreateObject(), *map = cJSON_AddObjectToObject(idx, "weight_map");
    cJSON_AddObjectToObject(idx, "metadata");
    for (int i = 0; i < m->n; i++) {
        m->t[i].shard = i >= m->n / 2;
        cJSON_AddStringToObject(map, m->t[i].name, shard[m->t[i].shard]);
    }
    for (int s = 0; s < 2; s++) {
        snprintf(path, sizeof path, "%s/%s", dir, shard[s]);
        fx_write_file(m, s, path);
    }
    char *text = cJSON_Print(idx);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    th_write_file(path, text, strlen(text));
    free(text);
    cJSON_Delete(idx);
}

/* The raw bytes of tensor name in a safetensors file, read with cJSON here. */
static uint8_t *st_raw(const char *path, const char *name, char *dtype, int64_t *shape, int *ndim, size_t *n)
{
    size_t size;
    char *f = th_read_file(path, &size);
    ck_assert_uint_ge(size, 8);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (uint8_t)f[i];
    cJSON *h = cJSON_ParseWithLength(f + 8, hl);
    ck_assert_ptr_nonnull(h);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(h, name);
    uint8_t *out = NULL;
    if (e) {
        const cJSON *off = cJSON_GetObjectItem(e, "data_offsets"), *sh = cJSON_GetObjectItem(e, "shape");
        size_t b = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble, en = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        ck_assert_uint_le(8 + hl + en, size);
        *n = en - b;
        out = malloc(*n + 1);
        memcpy(out, f + 8 + hl + b, *n);
        snprintf(dtype, 8, "%s", cJSON_GetObjectItem(e, "dtype")->valuestring);
        *ndim = cJSON_GetArraySize(sh);
        for (int d = 0; d < *ndim; d++) shape[d] = (int64_t)cJSON_GetArrayItem(sh, d)->valuedouble;
    }
    cJSON_Delete(h);
    free(f);
    return out;
}

/* ==== fixture models ======================================================= */

/* A byte-level BPE tokenizer.json: 256 byte tokens (GPT-2's byte -> char
 * map, rebuilt here), five merges and <|endoftext|>. 262 ids. */
static void fx_tokenizer_json(const char *dir)
{
    cJSON *j = cJSON_CreateObject(), *m = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        uint32_t cp = printable ? (uint32_t)b : next++;
        char s[3] = {0};
        if (cp < 0x80) s[0] = (char)cp;
        else s[0] = (char)(0xc0 | cp >> 6), s[1] = (char)(0x80 | (cp & 0x3f));
        cJSON_AddNumberToObject(vocab, s, b);
    }
    static const char *const merged[] = {"\xc4\xa0t", "he", "\xc4\xa0the", "in", "\xc4\xa0" "a"};
    static const char *const merges[] = {"\xc4\xa0 t", "h e", "\xc4\xa0t he", "i n", "\xc4\xa0 a"};
    cJSON *ml = cJSON_CreateArray();
    for (int i = 0; i < 5; i++) {
        cJSON_AddNumberToObject(vocab, merged[i], 256 + i);
        cJSON_AddItemToArray(ml, cJSON_CreateString(merges[i]));
    }
    cJSON_AddNumberToObject(vocab, "<|endoftext|>", 261);
    cJSON *added = cJSON_AddArrayToObject(j, "added_tokens"), *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "id", 261);
    cJSON_AddStringToObject(a, "content", "<|endoftext|>");
    cJSON_AddTrueToObject(a, "special");
    cJSON_AddItemToArray(added, a);
    cJSON *pre = cJSON_AddObjectToObject(j, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddFalseToObject(pre, "add_prefix_space");
    cJSON_AddStringToObject(m, "type", "BPE");
    cJSON_AddItemToObject(m, "vocab", vocab);
    cJSON_AddItemToObject(m, "merges", ml);
    cJSON_AddItemToObject(j, "model", m);
    char *text = cJSON_Print(j), path[1024];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    th_write_file(path, text, strlen(text));
    free(text);
    cJSON_Delete(j);
}

enum { G_C = 16, G_H = 2, G_L = 2, G_V = 272, G_P = 24 };                 /* GPT-2 fixture */
enum { L_C = 16, L_H = 4, L_KV = 2, L_L = 2, L_V = 264, L_F = 40, L_P = 64 };  /* Llama fixture */

static st_config gpt2_cfg(void)
{
    return (st_config){.family = ST_FAMILY_GPT2, .n_layer = G_L, .d_model = G_C, .n_head = G_H, .n_kv_head = G_H,
                       .d_ff = 4 * G_C, .vocab_size = G_V, .max_seq = G_P, .norm_eps = 1e-5f,
                       .rope_theta = 10000.0f, .tied_embeddings = 1};
}

static st_config llama_cfg(int qwen2, int tied)
{
    return (st_config){.family = ST_FAMILY_LLAMA, .n_layer = L_L, .d_model = L_C, .n_head = L_H,
                       .n_kv_head = L_KV, .d_ff = L_F, .vocab_size = L_V, .max_seq = L_P, .norm_eps = 1e-6f,
                       .rope_theta = qwen2 ? 1000000.0f : 10000.0f, .tied_embeddings = tied, .qkv_bias = qwen2};
}

/* A GPT-2 directory: Conv1D weights [in, out], fused c_attn, the attn.bias
 * (4-D) and masked_bias (scalar) buffers, names with or without prefix. */
static void gpt2_fixture(fx_model *m, const char *dir, const char *dtype, int prefix, int sharded)
{
    uint64_t rng = 1234;
    const char *p = prefix ? "transformer." : "";
    char n[128];
    memset(m, 0, sizeof *m);
#define NM(...) (snprintf(n, sizeof n, __VA_ARGS__), n)
    fx_add(m, dtype, 0, &rng, NM("%swte.weight", p), 2, G_V, G_C, 0, 0);
    fx_add(m, dtype, 0, &rng, NM("%swpe.weight", p), 2, G_P, G_C, 0, 0);
    for (int l = 0; l < G_L; l++) {
        fx_add(m, dtype, 1, &rng, NM("%sh.%d.ln_1.weight", p, l), 1, G_C, 0, 0, 0);
        fx_add(m, dtype, 2, &rng, NM("%sh.%d.ln_1.bias", p, l), 1, G_C, 0, 0, 0);
        fx_add(m, dtype, 0, &rng, NM("%sh.%d.attn.c_attn.weight", p, l), 2, G_C, 3 * G_C, 0, 0);
        fx_add(m, dtype, 2, &rng, NM("%sh.%d.attn.c_attn.bias", p, l), 1, 3 * G_C, 0, 0, 0);
        fx_add(m, dtype, 0, &rng, NM("%sh.%d.attn.c_proj.weight", p, l), 2, G_C, G_C, 0, 0);
        fx_add(m, dtype, 2, &rng, NM("%sh.%d.attn.c_proj.bias", p, l), 1, G_C, 0, 0, 0);
        fx_add(m, dtype, 1, &rng, NM("%sh.%d.ln_2.weight", p, l), 1, G_C, 0, 0, 0);
        fx_add(m, dtype, 2, &rng, NM("%sh.%d.ln_2.bias", p, l), 1, G_C, 0, 0, 0);
        fx_add(m, dtype, 0, &rng, NM("%sh.%d.mlp.c_fc.weight", p, l), 2, G_C, 4 * G_C, 0, 0);
        fx_add(m, dtype, 2, &rng, NM("%sh.%d.mlp.c_fc.bias", p, l), 1, 4 * G_C, 0, 0, 0);
        fx_add(m, dtype, 0, &rng, NM("%sh.%d.mlp.c_proj.weight", p, l), 2, 4 * G_C, G_C, 0, 0);
        fx_add(m, dtype, 2, &rng, NM("%sh.%d.mlp.c_proj.bias", p, l), 1, G_C, 0, 0, 0);
        fx_add(m, "F32", 0, &rng, NM("%sh.%d.attn.bias", p, l), 4, 1, 1, G_P, G_P);
        fx_add(m, "F32", 0, &rng, NM("%sh.%d.attn.masked_bias", p, l), 0, 0, 0, 0, 0);
    }
    fx_add(m, dtype, 1, &rng, NM("%sln_f.weight", p), 1, G_C, 0, 0, 0);
    fx_add(m, dtype, 2, &rng, NM("%sln_f.bias", p), 1, G_C, 0, 0, 0);
#undef NM
    mkdir_p(dir);
    fx_write_weights(m, dir, sharded);
    fx_tokenizer_json(dir);
    char cfg[1024], path[1024];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\", \"vocab_size\": %d,\n"
             " \"n_positions\": %d, \"n_ctx\": %d, \"n_embd\": %d, \"n_layer\": %d, \"n_head\": %d,\n"
             " \"n_inner\": null, \"activation_function\": \"gelu_new\", \"layer_norm_epsilon\": 1e-05,\n"
             " \"tie_word_embeddings\": true, \"torch_dtype\": \"%s\", \"bos_token_id\": 261,\n"
             " \"eos_token_id\": 261, \"scale_attn_weights\": true, \"use_cache\": true}\n",
             G_V, G_P, G_P, G_C, G_L, G_H,
             !strcmp(dtype, "F32") ? "float32" : !strcmp(dtype, "F16") ? "float16" : "bfloat16");
    snprintf(path, sizeof path, "%s/config.json", dir);
    th_write_file(path, cfg, strlen(cfg));
}

static void llama_fixture(fx_model *m, const char *dir, const char *dtype, int qwen2, int tied, int sharded)
{
    uint64_t rng = 99 + (uint64_t)qwen2 * 7 + (uint64_t)tied;
    const int hd = L_C / L_H;
    char n[128];
    memset(m, 0, sizeof *m);
#define NM(...) (snprintf(n, sizeof n, __VA_ARGS__), n)
    fx_add(m, dtype, 0, &rng, "model.embed_tokens.weight", 2, L_V, L_C, 0, 0);
    for (int l = 0; l < L_L; l++) {
        fx_add(m, dtype, 1, &rng, NM("model.layers.%d.input_layernorm.weight", l), 1, L_C, 0, 0, 0);
        fx_add(m, dtype, 0, &rng, NM("model.layers.%d.self_attn.q_proj.weight", l), 2, L_H * hd, L_C, 0, 0);
        fx_add(m, dtype, 0, &rng, NM("model.layers.%d.self_attn.k_proj.weight", l), 2, L_KV * hd, L_C, 0, 0);
        fx_add(m, dtype, 0, &rng, NM("model.layers.%d.self_attn.v_proj.weight", l), 2, L_KV * hd, L_C, 0, 0);
        if (qwen2) {
            fx_add(m, dtype, 2, &rng, NM("model.layers.%d.self_attn.q_proj.bias", l), 1, L_H * hd, 0, 0, 0);
            fx_add(m, dtype, 2, &rng, NM("model.layers.%d.self_attn.k_proj.bias", l), 1, L_KV * hd, 0, 0, 0);
            fx_add(m, dtype, 2, &rng, NM("model.layers.%d.self_attn.v_proj.bias", l), 1, L_KV * hd, 0, 0, 0);
        }
        fx_add(m, dtype, 0, &rng, NM("model.layers.%d.self_attn.o_proj.weight", l), 2, L_C, L_H * hd, 0, 0);
        fx_add(m, dtype, 1, &rng, NM("model.layers.%d.post_attention_layernorm.weight", l), 1, L_C, 0, 0, 0);
        fx_add(m, dtype, 0, &rng, NM("model.layers.%d.mlp.gate_proj.weight", l), 2, L_F, L_C, 0, 0);
        fx_add(m, dtype, 0, &rng, NM("model.layers.%d.mlp.up_proj.weight", l), 2, L_F, L_C, 0, 0);
        fx_add(m, dtype, 0, &rng, NM("model.layers.%d.mlp.down_proj.weight", l), 2, L_C, L_F, 0, 0);
    }
    fx_add(m, "F32", 0, &rng, "model.layers.0.self_attn.rotary_emb.inv_freq", 1, hd / 2, 0, 0, 0);
    fx_add(m, dtype, 1, &rng, "model.norm.weight", 1, L_C, 0, 0, 0);
    if (!tied) fx_add(m, dtype, 0, &rng, "lm_head.weight", 2, L_V, L_C, 0, 0);
#undef NM
    mkdir_p(dir);
    fx_write_weights(m, dir, sharded);
    fx_tokenizer_json(dir);
    char cfg[1024], path[1024];
    const char *dt = !strcmp(dtype, "F32") ? "float32" : !strcmp(dtype, "F16") ? "float16" : "bfloat16";
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"vocab_size\": %d,\n"
             " \"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d,\n"
             " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"max_position_embeddings\": %d,\n"
             " \"rms_norm_eps\": 1e-06, \"rope_theta\": %s, \"hidden_act\": \"silu\", \"rope_scaling\": null,\n"
             " \"tie_word_embeddings\": %s, \"torch_dtype\": \"%s\", \"bos_token_id\": 261, \"eos_token_id\": 261%s}\n",
             qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM", qwen2 ? "qwen2" : "llama", L_V, L_C, L_F, L_L, L_H,
             L_KV, L_P, qwen2 ? "1000000.0" : "10000.0", tied ? "true" : "false", dt,
             qwen2 ? ", \"use_sliding_window\": false" : ", \"attention_bias\": false, \"mlp_bias\": false");
    snprintf(path, sizeof path, "%s/config.json", dir);
    th_write_file(path, cfg, strlen(cfg));
}

/* ==== this file's own mapping of the source tensors onto the reference ===== */

static void ref_put(ref_model *r, const char *ours, const double *v, size_t n)
{
    double *d = ref_model_tensor(r, r->params, ours);
    ck_assert_msg(d != NULL, "reference model lacks %s", ours);
    memcpy(d, v, n * sizeof *v);
}

/* Conv1D src [in, out] (columns col0 .. col0+rows of out) as a Linear [rows, in]. */
static void ref_put_t(ref_model *r, const char *ours, const fx_tensor *src, int64_t col0, int64_t rows)
{
    double *d = ref_model_tensor(r, r->params, ours);
    ck_assert_ptr_nonnull(d);
    int64_t in = src->shape[0], out = src->ndim == 2 ? src->shape[1] : 1;
    for (int64_t o = 0; o < rows; o++)
        for (int64_t i = 0; i < in; i++) d[o * in + i] = src->val[i * out + col0 + o];
}

static void map_gpt2(ref_model *r, const fx_model *m, const char *p)
{
    char h[128], o[128];
#define T(...) (snprintf(h, sizeof h, __VA_ARGS__), fx_find(m, h))
    const fx_tensor *t;
    ck_assert_ptr_nonnull(t = T("%swte.weight", p));
    ref_put(r, "model.embed_tokens.weight", t->val, t->numel);
    ck_assert_ptr_nonnull(t = T("%swpe.weight", p));
    ref_put(r, "model.embed_positions.weight", t->val, t->numel);
    for (int l = 0; l < G_L; l++) {
        static const struct { const char *hf, *ours; } copy[] = {
            {"ln_1.weight", "input_layernorm.weight"}, {"ln_1.bias", "input_layernorm.bias"},
            {"ln_2.weight", "post_attention_layernorm.weight"}, {"ln_2.bias", "post_attention_layernorm.bias"},
            {"attn.c_proj.bias", "self_attn.o_proj.bias"}, {"mlp.c_fc.bias", "mlp.up_proj.bias"},
            {"mlp.c_proj.bias", "mlp.down_proj.bias"}};
        for (size_t k = 0; k < sizeof copy / sizeof copy[0]; k++) {
            ck_assert_ptr_nonnull(t = T("%sh.%d.%s", p, l, copy[k].hf));
            snprintf(o, sizeof o, "model.layers.%d.%s", l, copy[k].ours);
            ref_put(r, o, t->val, t->numel);
        }
        static const char *const qkv[3] = {"q", "k", "v"};
        ck_assert_ptr_nonnull(t = T("%sh.%d.attn.c_attn.weight", p, l));
        for (int s = 0; s < 3; s++) {
            snprintf(o, sizeof o, "model.layers.%d.self_attn.%s_proj.weight", l, qkv[s]);
            ref_put_t(r, o, t, s * G_C, G_C);
        }
        ck_assert_ptr_nonnull(t = T("%sh.%d.attn.c_attn.bias", p, l));
        for (int s = 0; s < 3; s++) {
            snprintf(o, sizeof o, "model.layers.%d.self_attn.%s_proj.bias", l, qkv[s]);
            ref_put(r, o, t->val + s * G_C, G_C);
        }
        ck_assert_ptr_nonnull(t = T("%sh.%d.attn.c_proj.weight", p, l));
        snprintf(o, sizeof o, "model.layers.%d.self_attn.o_proj.weight", l);
        ref_put_t(r, o, t, 0, G_C);
        ck_assert_ptr_nonnull(t = T("%sh.%d.mlp.c_fc.weight", p, l));
        snprintf(o, sizeof o, "model.layers.%d.mlp.up_proj.weight", l);
        ref_put_t(r, o, t, 0, 4 * G_C);
        ck_assert_ptr_nonnull(t = T("%sh.%d.mlp.c_proj.weight", p, l));
        snprintf(o, sizeof o, "model.layers.%d.mlp.down_proj.weight", l);
        ref_put_t(r, o, t, 0, G_C);
    }
    ck_assert_ptr_nonnull(t = T("%sln_f.weight", p));
    ref_put(r, "model.norm.weight", t->val, t->numel);
    ck_assert_ptr_nonnull(t = T("%sln_f.bias", p));
    ref_put(r, "model.norm.bias", t->val, t->numel);
#undef T
}

/* Llama-style names are shardtune's: copy every tensor the reference has. */
static void map_llama(ref_model *r, const fx_model *m)
{
    for (int i = 0; i < m->n; i++)
        if (!strstr(m->t[i].name, "rotary_emb")) ref_put(r, m->t[i].name, m->t[i].val, m->t[i].numel);
}

/* Logits of the reference model with the source's tensors and with the
 * imported checkpoint's; equal within 1e-6. */
static void check_logits(const st_config *want, const fx_model *m, const char *gpt2_prefix, const char *ckpt)
{
    st_config got;
    float *params = load_ckpt(ckpt, &got, NULL, NULL, NULL);
    ck_assert_int_eq(got.family, want->family);
    ck_assert_int_eq(got.n_layer, want->n_layer);
    ck_assert_int_eq(got.d_model, want->d_model);
    ck_assert_int_eq(got.n_head, want->n_head);
    ck_assert_int_eq(got.n_kv_head, want->n_kv_head);
    ck_assert_int_eq(got.d_ff, want->d_ff);
    ck_assert_int_eq(got.vocab_size, want->vocab_size);
    ck_assert_int_eq(got.max_seq, want->max_seq);
    ck_assert_int_eq(got.tied_embeddings, want->tied_embeddings);
    ck_assert_int_eq(got.qkv_bias, want->qkv_bias);
    ck_assert_float_eq(got.norm_eps, want->norm_eps);
    if (want->family == ST_FAMILY_LLAMA) ck_assert_float_eq(got.rope_theta, want->rope_theta);
    ref_model src, imp;
    ck_assert_int_eq(ref_model_init(&src, want), ST_OK);
    ck_assert_int_eq(ref_model_init(&imp, &got), ST_OK);
    if (want->family == ST_FAMILY_GPT2) map_gpt2(&src, m, gpt2_prefix);
    else map_llama(&src, m);
    ref_model_set_params(&imp, params);
    enum { B = 2, T = 6 };
    int tok[B * T], tgt[B * T];
    uint64_t rng = 5;
    for (int i = 0; i < B * T; i++) tok[i] = (int)(rng_next(&rng) % (uint64_t)want->vocab_size);
    for (int i = 0; i < B * T; i++) tgt[i] = tok[(i + 1) % (B * T)];
    size_t nl = (size_t)B * T * want->vocab_size;
    double *la = malloc(nl * sizeof *la), *lb = malloc(nl * sizeof *lb);
    double a = ref_model_forward_backward(&src, tok, tgt, NULL, B, T, B * T, la, 0);
    double b = ref_model_forward_backward(&imp, tok, tgt, NULL, B, T, B * T, lb, 0);
    ck_assert_msg(isfinite(a) && isfinite(b), "losses %g %g", a, b);
    double worst = 0;
    for (size_t i = 0; i < nl; i++) worst = fmax(worst, fabs(la[i] - lb[i]));
    ck_assert_msg(worst <= 1e-6, "logits differ by %g", worst);
    free(la), free(lb), free(params);
    ref_model_free(&src);
    ref_model_free(&imp);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* Every source tensor that is a parameter is in the export, bit for bit. */
static void check_export_bits(const fx_model *m, const char *out_dir, const char *src_prefix)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    for (int i = 0; i < m->n; i++) {
        const fx_tensor *t = &m->t[i];
        if (ends_with(t->name, ".attn.bias") || ends_with(t->name, ".attn.masked_bias") ||
            ends_with(t->name, ".rotary_emb.inv_freq"))
            continue;
        char name[160], dt[8];
        /* gpt2 exports always carry the prefix */
        if (src_prefix) snprintf(name, sizeof name, "transformer.%s", t->name + strlen(src_prefix));
        else snprintf(name, sizeof name, "%s", t->name);
        int64_t shape[8];
        int nd = 0;
        size_t n = 0;
        uint8_t *raw = st_raw(path, name, dt, shape, &nd, &n);
        ck_assert_msg(raw != NULL, "export lacks %s", name);
        ck_assert_str_eq(dt, t->dtype);
        ck_assert_int_eq(nd, t->ndim);
        for (int d = 0; d < nd; d++) ck_assert_int_eq(shape[d], t->shape[d]);
        ck_assert_uint_eq(n, t->nbytes);
        ck_assert_msg(!memcmp(raw, t->raw, n), "tensor %s differs after the round trip", name);
        free(raw);
    }
}

/* Every key of the source config.json has the same value in the export's. */
static void check_config_fields(const char *src_dir, const char *out_dir)
{
    char a[1024], b[1024];
    snprintf(a, sizeof a, "%s/config.json", src_dir);
    snprintf(b, sizeof b, "%s/config.json", out_dir);
    char *ta = th_read_file(a, NULL), *tb = th_read_file(b, NULL);
    cJSON *ja = cJSON_Parse(ta), *jb = cJSON_Parse(tb);
    ck_assert_ptr_nonnull(ja);
    ck_assert_ptr_nonnull(jb);
    const cJSON *it;
    cJSON_ArrayForEach(it, ja) {
        const cJSON *o = cJSON_GetObjectItemCaseSensitive(jb, it->string);
        ck_assert_msg(o != NULL, "exported config.json lacks \"%s\"", it->string);
        ck_assert_msg(cJSON_Compare(it, o, 1), "config.json \"%s\" differs: %s vs %s", it->string,
                      cJSON_PrintUnformatted(it), cJSON_PrintUnformatted(o));
    }
    cJSON_Delete(ja), cJSON_Delete(jb);
    free(ta), free(tb);
}

static void same_config(const st_config *a, const st_config *b)
{
    ck_assert_int_eq(a->family, b->family);
    ck_assert_int_eq(a->n_layer, b->n_layer);
    ck_assert_int_eq(a->d_model, b->d_model);
    ck_assert_int_eq(a->n_head, b->n_head);
    ck_assert_int_eq(a->n_kv_head, b->n_kv_head);
    ck_assert_int_eq(a->d_ff, b->d_ff);
    ck_assert_int_eq(a->vocab_size, b->vocab_size);
    ck_assert_int_eq(a->max_seq, b->max_seq);
    ck_assert_int_eq(a->tied_embeddings, b->tied_embeddings);
    ck_assert_int_eq(a->qkv_bias, b->qkv_bias);
    ck_assert_uint_eq(fbits(a->norm_eps), fbits(b->norm_eps));
    if (a->family == ST_FAMILY_LLAMA) ck_assert_uint_eq(fbits(a->rope_theta), fbits(b->rope_theta));
}

static void same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *x = th_read_file(a, &na), *y = th_read_file(b, &nb);
    ck_assert_msg(na == nb && !memcmp(x, y, na), "%s and %s differ", a, b);
    free(x), free(y);
}

/* ==== dtype conversions ==================================================== */

START_TEST(test_f16_widen_exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        double r = f16_ref((uint16_t)h);
        if (isnan(r)) {
            ck_assert_msg(isnan(f), "f16 %04x", h);
            ck_assert_uint_eq(fbits(f) >> 13 & 0x3ff, h & 0x3ff);   /* payload kept */
            ck_assert_uint_eq(fbits(f) >> 31, h >> 15);
        } else {
            ck_assert_msg((double)f == r && !signbit(f) == !signbit(r), "f16 %04x -> %a, want %a", h, f, r);
        }
    }
}
END_TEST

START_TEST(test_f16_narrow_rounding)
{
    for (uint32_t h = 0; h < 65536; h++) {
        double r = f16_ref((uint16_t)h);
        if (isnan(r)) {
            uint16_t back = st_f32_to_f16((float)r);
            ck_assert_msg((back & 0x7c00) == 0x7c00 && (back & 0x3ff), "nan -> %04x", back);
            continue;
        }
        ck_assert_uint_eq(st_f32_to_f16((float)r), h);
        /* the midpoint to the next value up ties to the even one; a hair off it goes to the nearest */
        if ((h & 0x7fff) < 0x7bff) {
            double up = f16_ref((uint16_t)(h + 1)), mid = (r + up) / 2;
            uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
            ck_assert_msg(st_f32_to_f16((float)mid) == even, "tie at %04x", h);
            float lo = nextafterf((float)mid, (float)r), hi = nextafterf((float)mid, (float)up);
            ck_assert_uint_eq(st_f32_to_f16(lo), h);
            ck_assert_uint_eq(st_f32_to_f16(hi), h + 1);
        }
    }
    ck_assert_uint_eq(st_f32_to_f16(65519.0f), 0x7bff);        /* below the midpoint to 2^16 */
    ck_assert_uint_eq(st_f32_to_f16(65520.0f), 0x7c00);        /* the tie goes to inf (even) */
    ck_assert_uint_eq(st_f32_to_f16(1e10f), 0x7c00);
    ck_assert_uint_eq(st_f32_to_f16(-1e10f), 0xfc00);
    ck_assert_uint_eq(st_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);   /* half the smallest subnormal: to even 0 */
    ck_assert_uint_eq(st_f32_to_f16(ldexpf(1.0f, -25) * 1.0001f), 0x0001);
    ck_assert_uint_eq(st_f32_to_f16(ldexpf(1.0f, -40)), 0x0000);
    ck_assert_uint_eq(st_f32_to_f16(-0.0f), 0x8000);
    ck_assert_uint_eq(st_f32_to_f16(bitsf(0x00000001)), 0x0000);   /* an f32 subnormal */
    uint16_t nan = st_f32_to_f16(bitsf(0x7f800001));                 /* payload only in the low bits */
    ck_assert_msg((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff), "nan -> %04x", nan);
}
END_TEST

START_TEST(test_bf16_both_ways)
{
    for (uint32_t b = 0; b < 65536; b++) {
        float f = st_bf16_to_f32((uint16_t)b);
        double r = bf16_ref((uint16_t)b);
        if (isnan(r)) {
            ck_assert(isnan(f));
            ck_assert_uint_eq(fbits(f), b << 16);
            ck_assert_uint_eq(st_f32_to_bf16(f), b | 0x40);       /* stays a (quiet) nan */
            continue;
        }
        ck_assert_msg((double)f == r && !signbit(f) == !signbit(r), "bf16 %04x", b);
        ck_assert_uint_eq(st_f32_to_bf16(f), b);
        if ((b & 0x7fff) < 0x7f7f) {   /* ties to even, neighbours to nearest */
            uint32_t mid = b << 16 | 0x8000;
            ck_assert_uint_eq(st_f32_to_bf16(bitsf(mid)), (b & 1) ? b + 1 : b);
            ck_assert_uint_eq(st_f32_to_bf16(bitsf(mid - 1)), b);
            ck_assert_uint_eq(st_f32_to_bf16(bitsf(mid + 1)), b + 1);
        }
    }
    ck_assert_uint_eq(st_f32_to_bf16(bitsf(0x7f7fffff)), 0x7f80);    /* FLT_MAX rounds to inf */
    uint16_t nan = st_f32_to_bf16(bitsf(0x7f800001));
    ck_assert_msg((nan & 0x7f80) == 0x7f80 && (nan & 0x7f), "nan -> %04x", nan);
}
END_TEST

/* ==== safetensors: valid files and hostile ones ============================ */

/* A file from a header string and data bytes; declared_len < 0: the real length. */
static void write_st(const char *path, const char *hdr, const void *data, size_t n, int64_t declared_len)
{
    size_t hl = strlen(hdr);
    uint8_t *b = malloc(8 + hl + n + 1);
    put_u64le(b, declared_len < 0 ? hl : (uint64_t)declared_len);
    memcpy(b + 8, hdr, hl);
    if (n) memcpy(b + 8 + hl, data, n);
    th_write_file(path, b, 8 + hl + n);
    free(b);
}

START_TEST(test_safetensors_read_dtypes)
{
    char path[1024];
    path_in(path, sizeof path, "dtypes.safetensors");
    uint8_t data[8 + 8 + 8 + 16];
    float f32[2] = {1.5f, -0.0f};
    uint16_t f16[4] = {0x0001, 0x7c00, 0xfe00, 0x3c00}, bf[4] = {0x0001, 0xff80, 0x7fc1, 0x3f80};
    int64_t i64 = -7;
    memcpy(data, f32, 8), memcpy(data + 8, f16, 8), memcpy(data + 16, bf, 8), memcpy(data + 24, &i64, 8);
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[8,16]},"
                   "\"c\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[16,24]},"
                   "\"d\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[24,32]},"
                   "\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[32,32]},"
                   "\"__metadata__\":{\"format\":\"pt\"}}    ", data, 32, -1);
    st_safetensors f;
    ck_assert_int_eq(st_safetensors_open(&f, path), ST_OK);
    ck_assert_int_eq(f.n, 5);
    const st_safetensors_entry *e = st_safetensors_find(&f, "b");
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(e->ndim, 2);
    ck_assert_uint_eq(e->numel, 4);
    float out[4];
    ck_assert_int_eq(st_safetensors_read(&f, st_safetensors_find(&f, "a"), out), ST_OK);
    ck_assert_uint_eq(fbits(out[0]), fbits(1.5f));
    ck_assert_uint_eq(fbits(out[1]), 0x80000000u);
    ck_assert_int_eq(st_safetensors_read(&f, e, out), ST_OK);
    ck_assert(out[0] == ldexpf(1.0f, -24) && isinf(out[1]) && out[1] > 0 && isnan(out[2]) && out[3] == 1.0f);
    ck_assert_int_eq(st_safetensors_read(&f, st_safetensors_find(&f, "c"), out), ST_OK);
    ck_assert(fbits(out[0]) == 0x00010000u && isinf(out[1]) && out[1] < 0 && isnan(out[2]) && out[3] == 1.0f);
    expect_error(st_safetensors_read(&f, st_safetensors_find(&f, "d"), out), ST_ERR_FORMAT, "\"d\"", "I64");
    ck_assert_uint_eq(st_safetensors_find(&f, "z")->numel, 0);
    ck_assert_ptr_null(st_safetensors_find(&f, "nope"));
    st_safetensors_close(&f);
}
END_TEST

typedef struct {
    const char *hdr;
    size_t data;
    int64_t declared;
    const char *msg1, *msg2;
} hostile_st;

START_TEST(test_safetensors_hostile)
{
    static const hostile_st cases[] = {
        {"{}", 0, 1000, "runs past the end", NULL},
        {"{}", 0, 200ll << 20, "limit", NULL},
        {"{not json}", 0, -1, "not valid JSON", NULL},
        {"[1, 2]", 0, -1, "start with '{'", NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} xx", 4, -1, "not padding", NULL},
        {"{\"a\":5}", 0, -1, "\"a\"", "not a JSON object"},
        {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, "\"a\"", "dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, -1, "\"a\"", "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, -1, "\"a\"", "data_offsets"},
        {"{\"a\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, "unknown dtype", "F17"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}", 4, -1,
         "\"a\"", "overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, -1, "shape[0]", NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, -1, "shape[0]", NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[250],\"data_offsets\":[0,1000]}}", 16, -1, "\"a\"", "run past"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, -1, "\"a\"", "end before"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, -1, "\"a\"", "needs 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, -1, "\"a\"", "two"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, -1, "overlap", "\"b\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, -1, "\"a\"", "twice"},
        {"{\"\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, "UTF-8", NULL},
        {"{\"a\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, "UTF-8", NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, -1, "no tensor", "\"b\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, -1, "truncated or padded", NULL},
        {"{\"__metadata__\":[1]}", 0, -1, "__metadata__", NULL},
    };
    char path[1024];
    path_in(path, sizeof path, "hostile.safetensors");
    uint8_t zeros[64] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_st(path, cases[i].hdr, zeros, cases[i].data, cases[i].declared);
        st_safetensors f;
        st_err e = st_safetensors_open(&f, path);
        ck_assert_msg(e == ST_ERR_FORMAT, "case %zu accepted (%d): %s", i, e, st_error_message());
        const char *msg = st_error_message();
        ck_assert_msg(strstr(msg, "hostile.safetensors"), "case %zu: no file name: %s", i, msg);
        ck_assert_msg(strstr(msg, cases[i].msg1), "case %zu lacks \"%s\": %s", i, cases[i].msg1, msg);
        if (cases[i].msg2) ck_assert_msg(strstr(msg, cases[i].msg2), "case %zu lacks \"%s\": %s", i, cases[i].msg2, msg);
        st_error_clear();
    }
    th_write_file(path, "abcd", 4);
    st_safetensors f;
    expect_error(st_safetensors_open(&f, path), ST_ERR_FORMAT, "shorter than the 8-byte", NULL);
}
END_TEST

/* Every prefix of a valid file is refused, through the file and in memory. */
START_TEST(test_safetensors_truncations)
{
    char path[1024], cut[512];
    path_in(path, sizeof path, "whole.safetensors");
    path_in(cut, sizeof cut, "cut.safetensors");
    float v[6] = {1, 2, 3, 4, 5, 6};
    write_st(path, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                   "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[16,24]}}  ", v, 24, -1);
    size_t n;
    char *whole = th_read_file(path, &n);
    st_safetensors f;
    ck_assert_int_eq(st_safetensors_parse(&f, "mem", (const uint8_t *)whole, n, n), ST_OK);
    st_safetensors_close(&f);
    for (size_t k = 0; k < n; k++) {
        th_write_file(cut, whole, k);
        ck_assert_msg(st_safetensors_open(&f, cut) == ST_ERR_FORMAT, "prefix of %zu bytes accepted", k);
        st_error_clear();
        ck_assert_int_eq(st_safetensors_parse(&f, "mem", (const uint8_t *)whole, k, k), ST_ERR_FORMAT);
        st_error_clear();
    }
    free(whole);
}
END_TEST

/* ==== Hugging Face import ================================================== */

static void import_and_check(const char *tag, int gpt2, const char *dtype, int prefix_or_qwen2, int tied,
                             int sharded)
{
    char dir[512], ckpt[512];
    snprintf(dir, sizeof dir, "%s/%s", g_root, tag);
    snprintf(ckpt, sizeof ckpt, "%s/%s.h5", g_root, tag);
    fx_model *m = calloc(1, sizeof *m);
    st_config want;
    if (gpt2) {
        gpt2_fixture(m, dir, dtype, prefix_or_qwen2, sharded);
        want = gpt2_cfg();
    } else {
        llama_fixture(m, dir, dtype, prefix_or_qwen2, tied, sharded);
        want = llama_cfg(prefix_or_qwen2, tied);
    }
    st_err e = run_convert(dir, ckpt, NULL);
    ck_assert_msg(e == ST_OK, "%s", st_error_message());
    check_logits(&want, m, gpt2 && prefix_or_qwen2 ? "transformer." : "", ckpt);
    /* the tokenizer.json went into the checkpoint as itself */
    char *kind = NULL;
    uint8_t *blob = NULL;
    size_t nb = 0;
    st_config c;
    free(load_ckpt(ckpt, &c, &kind, &blob, &nb));
    ck_assert_str_eq(kind, "hf");
    st_tokenizer *tok;
    ck_assert_int_eq(st_tokenizer_from_blob(&tok, kind, blob, nb), ST_OK);
    ck_assert_int_eq(st_tokenizer_vocab_size(tok), 262);
    ck_assert_int_eq(st_tokenizer_eos(tok), 261);
    st_tokenizer_free(tok);
    free(kind), free(blob);
    fx_free(m);
    free(m);
}

START_TEST(test_import_gpt2_f32_prefix_sharded) { import_and_check("g_f32", 1, "F32", 1, 1, 1); }
END_TEST
START_TEST(test_import_gpt2_f16_plain) { import_and_check("g_f16", 1, "F16", 0, 1, 0); }
END_TEST
START_TEST(test_import_gpt2_bf16) { import_and_check("g_bf16", 1, "BF16", 1, 1, 0); }
END_TEST
START_TEST(test_import_qwen2_tied_f32) { import_and_check("q_f32", 0, "F32", 1, 1, 0); }
END_TEST
START_TEST(test_import_llama_untied_bf16_sharded) { import_and_check("l_bf16", 0, "BF16", 0, 0, 1); }
END_TEST
START_TEST(test_import_qwen2_untied_f16) { import_and_check("q_f16", 0, "F16", 1, 0, 0); }
END_TEST

/* HF -> h5 -> HF: the same tensors bit for bit, the same config fields, the
 * same tokenizer.json bytes, and reading the export gives the same model. */
static void hf_round_trip(const char *tag, int gpt2, const char *dtype, int prefix_or_qwen2, int tied)
{
    char dir[512], ckpt[512], out[512], ckpt2[512], to[600];
    snprintf(dir, sizeof dir, "%s/%s", g_root, tag);
    snprintf(ckpt, sizeof ckpt, "%s/%s.h5", g_root, tag);
    snprintf(out, sizeof out, "%s/%s_out", g_root, tag);
    snprintf(ckpt2, sizeof ckpt2, "%s/%s_2.h5", g_root, tag);
    fx_model *m = calloc(1, sizeof *m);
    if (gpt2) gpt2_fixture(m, dir, dtype, prefix_or_qwen2, 0);
    else llama_fixture(m, dir, dtype, prefix_or_qwen2, tied, 0);
    ck_assert_int_eq(run_convert(dir, ckpt, NULL), ST_OK);
    snprintf(to, sizeof to, "hf:%s", out);
    const char *dt = !strcmp(dtype, "F32") ? "f32" : !strcmp(dtype, "F16") ? "f16" : "bf16";
    st_err e = run_export(ckpt, to, dt);
    ck_assert_msg(e == ST_OK, "%s", st_error_message());
    check_export_bits(m, out, gpt2 ? (prefix_or_qwen2 ? "transformer." : "") : NULL);
    check_config_fields(dir, out);
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/tokenizer.json", dir);
    snprintf(b, sizeof b, "%s/tokenizer.json", out);
    same_file(a, b);
    snprintf(b, sizeof b, "%s/generation_config.json", out);
    ck_assert_int_eq(access(b, R_OK), 0);
    snprintf(b, sizeof b, "%s/model.safetensors.tmp", out);
    ck_assert_int_ne(access(b, F_OK), 0);   /* nothing left aside */
    /* and back in: identical parameters */
    ck_assert_int_eq(run_convert(out, ckpt2, NULL), ST_OK);
    st_config c1, c2;
    float *p1 = load_ckpt(ckpt, &c1, NULL, NULL, NULL), *p2 = load_ckpt(ckpt2, &c2, NULL, NULL, NULL);
    same_config(&c1, &c2);
    ck_assert(!memcmp(p1, p2, (size_t)st_config_num_params(&c1) * sizeof *p1));
    free(p1), free(p2);
    fx_free(m);
    free(m);
}

START_TEST(test_roundtrip_gpt2_f32) { hf_round_trip("rg", 1, "F32", 0, 1); }
END_TEST
START_TEST(test_roundtrip_qwen2_tied_f32) { hf_round_trip("rq", 0, "F32", 1, 1); }
END_TEST
START_TEST(test_roundtrip_llama_untied_f32) { hf_round_trip("rl", 0, "F32", 0, 0); }
END_TEST
START_TEST(test_roundtrip_gpt2_f16) { hf_round_trip("rg16", 1, "F16", 1, 1); }
END_TEST
START_TEST(test_roundtrip_llama_bf16) { hf_round_trip("rl16", 0, "BF16", 0, 0); }
END_TEST

/* stories260K.bin -> h5 -> HF -> h5: bit-identical parameters. */
START_TEST(test_roundtrip_llama2c)
{
    char ckpt[512], out[512], ckpt2[512], to[600];
    path_in(ckpt, sizeof ckpt, "stories.h5");
    path_in(out, sizeof out, "stories_hf");
    path_in(ckpt2, sizeof ckpt2, "stories_2.h5");
    st_config cfg;
    float *orig;
    ck_assert_int_eq(st_model_source_read_file(th_data_path("llama2c/stories260K.bin"), "llama2c", &cfg, &orig), ST_OK);
    ck_assert_int_eq(run_convert(th_data_path("llama2c/stories260K.bin"), ckpt, NULL), ST_OK);
    snprintf(to, sizeof to, "hf:%s", out);
    ck_assert_int_eq(run_export(ckpt, to, "f32"), ST_OK);
    ck_assert_int_eq(run_convert(out, ckpt2, NULL), ST_OK);   /* no tokenizer.json: a warning */
    st_config c2;
    float *back = load_ckpt(ckpt2, &c2, NULL, NULL, NULL);
    same_config(&cfg, &c2);
    ck_assert(!memcmp(orig, back, (size_t)st_config_num_params(&cfg) * sizeof *orig));
    free(orig), free(back);
}
END_TEST

/* ==== hostile directories and configs ====================================== */

static void edit_config(const char *dir, const char *from, const char *to)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *t = th_read_file(path, NULL), *at = strstr(t, from);
    ck_assert_msg(at != NULL, "config.json lacks %s", from);
    size_t n = strlen(t) + strlen(to) + 1;
    char *o = malloc(n);
    snprintf(o, n, "%.*s%s%s", (int)(at - t), t, to, at + strlen(from));
    th_write_file(path, o, strlen(o));
    free(t), free(o);
}

static void expect_read_error(const char *dir, const char *s1, const char *s2)
{
    st_config cfg;
    float *p = NULL;
    st_err e = st_model_source_read_file(dir, "hf", &cfg, &p);
    ck_assert_ptr_null(p);
    ck_assert_msg(e != ST_OK, "accepted %s", dir);
    expect_error(e, e, s1, s2);
}

START_TEST(test_hf_config_refusals)
{
    static const struct { const char *from, *to, *msg; } edits[] = {
        {"\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}", "rope_scaling"},
        {"\"attention_bias\": false", "\"attention_bias\": true", "attention_bias"},
        {"\"mlp_bias\": false", "\"mlp_bias\": true", "mlp_bias"},
        {"\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act"},
        {"\"LlamaForCausalLM\"", "\"BertModel\"", "BertModel"},
        {"\"LlamaForCausalLM\"", "\"MistralForCausalLM\"], \"sliding_window\": 16, \"x\": [0", "sliding_window"},
        {"\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", "n_kv_head"},
        {"\"hidden_size\": 16", "\"hidden_size\": 16.5", "hidden_size"},
        {"\"vocab_size\": 264,", "", "vocab_size"},
        {"\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": -1", "rms_norm_eps"},
        {"\"rope_theta\": 10000.0", "\"rope_theta\": 10000.0, \"quantization_config\": {\"bits\": 4}",
         "quantization_config"},
        {"\"num_attention_heads\": 4", "\"num_attention_heads\": 4, \"head_dim\": 8", "head_dim"},
    };
    char dir[512];
    fx_model *m = calloc(1, sizeof *m);
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        snprintf(dir, sizeof dir, "%s/cfg%zu", g_root, i);
        llama_fixture(m, dir, "F32", 0, 0, 0);
        edit_config(dir, edits[i].from, edits[i].to);
        expect_read_error(dir, "config.json", edits[i].msg);
        fx_free(m);
    }
    snprintf(dir, sizeof dir, "%s/cfg_q", g_root);
    llama_fixture(m, dir, "F32", 1, 1, 0);
    edit_config(dir, "\"use_sliding_window\": false", "\"use_sliding_window\": true");
    expect_read_error(dir, "config.json", "use_sliding_window");
    fx_free(m);
    snprintf(dir, sizeof dir, "%s/cfg_g", g_root);
    gpt2_fixture(m, dir, "F32", 1, 0);
    edit_config(dir, "\"activation_function\": \"gelu_new\"", "\"activation_function\": \"relu\"");
    expect_read_error(dir, "config.json", "activation_function");
    fx_free(m);
    free(m);
}
END_TEST

/* Defaults as transformers has them, and Mistral without a sliding window. */
START_TEST(test_hf_config_defaults)
{
    static const char gpt2[] = "{\"model_type\": \"gpt2\", \"n_embd\": 32, \"n_layer\": 1, \"n_head\": 4, "
                               "\"vocab_size\": 100, \"n_ctx\": 64}";
    st_config c;
    ck_assert_msg(st_hf_config_parse(gpt2, strlen(gpt2), "gpt2.json", &c) == ST_OK, "%s", st_error_message());
    ck_assert(c.family == ST_FAMILY_GPT2 && c.d_ff == 128 && c.max_seq == 64 && c.tied_embeddings == 1 &&
              c.n_kv_head == 4 && c.norm_eps == 1e-5f);
    static const char mistral[] = "{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 32, "
                                  "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"intermediate_size\": 48, "
                                  "\"vocab_size\": 100, \"sliding_window\": null, \"head_dim\": 8}";
    ck_assert_msg(st_hf_config_parse(mistral, strlen(mistral), "m.json", &c) == ST_OK, "%s", st_error_message());
    ck_assert(c.family == ST_FAMILY_LLAMA && c.n_kv_head == 4 && c.max_seq == 2048 && c.rope_theta == 10000.0f &&
              c.norm_eps == 1e-6f && !c.tied_embeddings && !c.qkv_bias);
    static const char big_window[] = "{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 32, "
                                     "\"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"intermediate_size\": 48, "
                                     "\"vocab_size\": 100, \"max_position_embeddings\": 512, \"sliding_window\": 4096}";
    ck_assert_int_eq(st_hf_config_parse(big_window, strlen(big_window), "w.json", &c), ST_OK);
    expect_error(st_hf_config_parse("[]", 2, "arr.json", &c), ST_ERR_FORMAT, "arr.json", "not a JSON object");
    static const char bert[] = "{\"model_type\": \"bert\"}";
    expect_error(st_hf_config_parse(bert, strlen(bert), "bert.json", &c), ST_ERR_FORMAT, "bert", "not supported");
}
END_TEST

START_TEST(test_hf_tensor_refusals)
{
    char dir[512];
    fx_model *m = calloc(1, sizeof *m);
    /* a tensor of the wrong shape */
    snprintf(dir, sizeof dir, "%s/t_shape", g_root);
    llama_fixture(m, dir, "F32", 0, 0, 0);
    edit_config(dir, "\"intermediate_size\": 40", "\"intermediate_size\": 48");
    expect_read_error(dir, "mlp.gate_proj.weight", "has shape [40, 16]");
    fx_free(m);
    /* more layers in config.json than in the weights: refused before anything is sized from it (10^9 layers
     * took all memory, 10^5 minutes of name lookups) */
    static const char *const layers[] = {"3", "100000", "1000000000"};
    for (int i = 0; i < 3; i++) {
        snprintf(dir, sizeof dir, "%s/t_layers%d", g_root, i);
        llama_fixture(m, dir, "F32", 0, 0, 0);
        char to[64];
        snprintf(to, sizeof to, "\"num_hidden_layers\": %s", layers[i]);
        edit_config(dir, "\"num_hidden_layers\": 2", to);
        expect_read_error(dir, "num_hidden_layers", "the weights hold 2 layers");
        fx_free(m);
    }
    /* untied in config.json, but no lm_head.weight */
    snprintf(dir, sizeof dir, "%s/t_head", g_root);
    llama_fixture(m, dir, "F32", 0, 1, 0);
    edit_config(dir, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
    expect_read_error(dir, "lm_head.weight", "missing");
    fx_free(m);
    free(m);
}
END_TEST

/* A NaN or an infinity in imported weights is refused, naming the tensor. */
START_TEST(test_import_nonfinite_refused)
{
    char dir[512], file[600], out[600];
    fx_model *m = calloc(1, sizeof *m);
    snprintf(dir, sizeof dir, "%s/nan", g_root);
    llama_fixture(m, dir, "F32", 0, 0, 0);
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    st_safetensors st;
    ck_assert_int_eq(st_safetensors_open(&st, file), ST_OK);
    const st_safetensors_entry *x = st_safetensors_find(&st, "model.norm.weight");
    ck_assert_ptr_nonnull(x);
    const long at = (long)(st.data_start + x->begin + 4); /* element 1 */
    st_safetensors_close(&st);
    FILE *f = fopen(file, "r+b");
    ck_assert_ptr_nonnull(f);
    const float nan = NAN;
    ck_assert(fseek(f, at, SEEK_SET) == 0 && fwrite(&nan, 4, 1, f) == 1);
    fclose(f);
    snprintf(out, sizeof out, "%s/nan.h5", g_root);
    expect_error(run_convert(dir, out, NULL), ST_ERR_FORMAT, "model.norm.weight holds NaN at element 1", NULL);
    ck_assert_int_ne(access(out, F_OK), 0);
    fx_free(m);
    free(m);
}
END_TEST

/* Files of other kinds given to convert are named for what they are, and
 * inspect of a FIFO fails at once instead of waiting for a writer. */
START_TEST(test_convert_names_other_files)
{
    static const struct { const char *name; unsigned char head[8]; const char *msg; } files[] = {
        {"model.gguf.bin", {'G', 'G', 'U', 'F', 3, 0, 0, 0}, "is a GGUF file"},
        {"gpt2_tokenizer.bin", {0xc8, 0xd7, 0x34, 0x01, 2, 0, 0, 0}, "llm.c's tokenizer file"},  /* 20240328 */
        {"shard.bin", {0x88, 0xd8, 0x34, 0x01, 1, 0, 0, 0}, "llm.c token data file"},           /* 20240520 */
        {"random.bin", {1, 2, 3, 4, 5, 6, 7, 8}, "no llm.c or GGUF magic"},
    };
    char path[600], out[600];
    snprintf(out, sizeof out, "%s/other.h5", g_root);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        unsigned char body[2048] = {0};
        memcpy(body, files[i].head, 8);
        path_in(path, sizeof path, files[i].name);
        th_write_file(path, body, sizeof body);
        expect_error(run_convert(path, out, NULL), ST_ERR_FORMAT, files[i].name, files[i].msg);
    }
    path_in(path, sizeof path, "fifo.h5");
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    char *argv[] = {"inspect", path, NULL};
    expect_error(st_cmd_inspect(2, argv, MPI_COMM_WORLD), ST_ERR_IO, "fifo.h5", "a FIFO");
}
END_TEST

START_TEST(test_hf_extra_and_index)
{
    char dir[512], path[600];
    fx_model *m = calloc(1, sizeof *m);
    uint64_t rng = 3;
    /* an extra tensor the model would not use (Qwen3's q_norm, say) */
    snprintf(dir, sizeof dir, "%s/x_extra", g_root);
    llama_fixture(m, dir, "F32", 0, 0, 0);
    fx_add(m, "F32", 1, &rng, "model.layers.0.self_attn.q_norm.weight", 1, 4, 0, 0, 0);
    fx_write_weights(m, dir, 0);
    expect_read_error(dir, "q_norm", "refusing to drop");
    fx_free(m);
    /* the index places a tensor in the wrong shard */
    snprintf(dir, sizeof dir, "%s/x_index", g_root);
    llama_fixture(m, dir, "F32", 0, 0, 1);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *t = th_read_file(path, NULL), *at = strstr(t, "\"model.norm.weight\":\t\"model-00002");
    ck_assert_ptr_nonnull(at);
    at[strlen("\"model.norm.weight\":\t\"model-0000")] = '1';
    th_write_file(path, t, strlen(t));
    free(t);
    expect_read_error(dir, "model.norm.weight", "places");
    /* the index names a file outside the directory */
    t = th_read_file(path, NULL);
    at = strstr(t, "\"model.norm.weight\":\t\"model-00001");
    memcpy(at + strlen("\"model.norm.weight\":\t\""), "../x", 4);
    th_write_file(path, t, strlen(t));
    free(t);
    expect_read_error(dir, "index.json", "same directory");
    fx_free(m);
    /* no weights at all */
    snprintf(dir, sizeof dir, "%s/x_none", g_root);
    llama_fixture(m, dir, "F32", 0, 0, 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    expect_read_error(dir, "neither model.safetensors", NULL);
    fx_free(m);
    free(m);
}
END_TEST

START_TEST(test_export_arguments)
{
    char ckpt[512];
    path_in(ckpt, sizeof ckpt, "args.h5");
    st_config cfg = llama_cfg(0, 1);
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &cfg, 1, 0), ST_OK);
    float *p = calloc(lay.numel, sizeof *p);
    st_params_init(&lay, p, 1);
    save_ckpt(ckpt, &cfg, p, NULL);
    expect_error(run_export(ckpt, "foo:bar", "f32"), ST_ERR_ARG, "hf:DIR or gguf:FILE", NULL);
    expect_error(run_export(ckpt, "hf:", "f32"), ST_ERR_ARG, "hf:DIR", NULL);
    expect_error(run_export(ckpt, "gguf:/tmp/x.gguf", "bf16"), ST_ERR_ARG, "bf16", NULL);
    expect_error(run_export(ckpt, "gguf:/tmp/x.gguf", "f64"), ST_ERR_ARG, "f64", NULL);
    char to[600], idx[600];
    snprintf(to, sizeof to, "hf:%s/sharded", g_root);
    snprintf(idx, sizeof idx, "%s/sharded", g_root);
    mkdir_p(idx);
    snprintf(idx, sizeof idx, "%s/sharded/model.safetensors.index.json", g_root);
    th_write_file(idx, "{}", 2);
    /* a folder with files in it is not written into without --overwrite ... */
    expect_error(run_export(ckpt, to, "f32"), ST_ERR_ARG, "is not empty", "--overwrite");
    /* ... and even then not over another model's shard index */
    char *force[] = {"export", ckpt, "--to", to, "--overwrite", NULL};
    expect_error(st_cmd_export(5, force, MPI_COMM_WORLD), ST_ERR_ARG, "index.json", "empty directory");
    /* an existing GGUF file is replaced only with --overwrite */
    char gguf[620], gpath[600];
    path_in(gpath, sizeof gpath, "there.gguf");
    th_write_file(gpath, "not a model", 11);
    snprintf(gguf, sizeof gguf, "gguf:%s", gpath);
    expect_error(run_export(ckpt, gguf, "f32"), ST_ERR_ARG, "there.gguf exists", "--overwrite");
    char *gforce[] = {"export", ckpt, "--to", gguf, "--overwrite", NULL};
    ck_assert_msg(st_cmd_export(5, gforce, MPI_COMM_WORLD) == ST_OK, "%s", st_error_message());
    free(p);
    st_layout_free(&lay);
}
END_TEST

/* ==== tokenizers exported and reloaded ===================================== */

static void encode(const st_tokenizer *t, const char *s, int32_t **ids, size_t *n)
{
    size_t cap = 0;
    *ids = NULL;
    *n = 0;
    st_err e = st_tokenizer_encode(t, s, strlen(s), 1, ids, n, &cap);
    ck_assert_msg(e == ST_OK, "%s", st_error_message());
}

/* A model with tokenizer spec saved, exported to HF, its tokenizer.json
 * reloaded: the same ids for a few texts. */
static void tokenizer_round_trip(const char *tag, const char *spec, int vocab)
{
    st_tokenizer *tok;
    ck_assert_int_eq(st_tokenizer_load(&tok, spec), ST_OK);
    st_config cfg = gpt2_cfg();
    cfg.vocab_size = vocab;
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &cfg, 1, 0), ST_OK);
    float *p = calloc(lay.numel, sizeof *p);
    st_params_init(&lay, p, 7);
    char ckpt[512], out[512], to[600], tj[600];
    snprintf(ckpt, sizeof ckpt, "%s/%s.h5", g_root, tag);
    snprintf(out, sizeof out, "%s/%s_hf", g_root, tag);
    save_ckpt(ckpt, &cfg, p, tok);
    snprintf(to, sizeof to, "hf:%s", out);
    ck_assert_int_eq(run_export(ckpt, to, "f32"), ST_OK);
    snprintf(tj, sizeof tj, "hf:%s/tokenizer.json", out);
    st_tokenizer *back;
    st_err e = st_tokenizer_load(&back, tj);
    ck_assert_msg(e == ST_OK, "%s", st_error_message());
    ck_assert_int_eq(st_tokenizer_vocab_size(back), st_tokenizer_vocab_size(tok));
    ck_assert_int_eq(st_tokenizer_eos(back), st_tokenizer_eos(tok));
    ck_assert_int_eq(st_tokenizer_bos(back), st_tokenizer_bos(tok));
    /* the bos/eos rule goes along: tokenizer_config.json says add_bos_token/add_eos_token */
    ck_assert_int_eq(st_tokenizer_adds_bos(back), st_tokenizer_adds_bos(tok));
    ck_assert_int_eq(st_tokenizer_adds_eos(back), st_tokenizer_adds_eos(tok));
    char cfgp[700];
    snprintf(cfgp, sizeof cfgp, "%s/tokenizer_config.json", out);
    char *cfgj = th_read_file(cfgp, NULL);
    ck_assert_msg(strstr(cfgj, "\"add_bos_token\"") && strstr(cfgj, "\"add_eos_token\""), "%s", cfgj);
    free(cfgj);
    static const char *const texts[] = {"Hello world, it's 2024!", "  the   tokenizer's\n\ttest <|endoftext|> ok",
                                        "h\xc3\xa9llo w\xc3\xb6rld \xe2\x82\xac 12345", ""};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t *a, *b;
        size_t na, nb;
        encode(tok, texts[i], &a, &na);
        encode(back, texts[i], &b, &nb);
        ck_assert_msg(na == nb && (!na || !memcmp(a, b, na * sizeof *a)), "text %zu encodes differently", i);
        free(a), free(b);
    }
    st_tokenizer_free(back);
    st_tokenizer_free(tok);
    free(p);
    st_layout_free(&lay);
}

START_TEST(test_tokenizer_export_gpt2)
{
    char spec[600];
    snprintf(spec, sizeof spec, "gpt2:%s", th_data_path("gpt2-bpe"));
    tokenizer_round_trip("tok_gpt2", spec, 50257);
}
END_TEST

START_TEST(test_tokenizer_export_byte) { tokenizer_round_trip("tok_byte", "byte", 260); }
END_TEST

/* ==== GGUF ================================================================= */

/* Check a GGUF tensor against ours: name, reversed dims, alignment, and data
 * (f32: exact; f16: the nearest binary16). src: rows x cols row-major. */
static void check_gguf_tensor(const st_gguf *g, const char *name, const float *src, int64_t rows, int64_t cols,
                              uint32_t want_type)
{
    const st_gguf_tensor *t = st_gguf_find_tensor(g, name);
    ck_assert_msg(t != NULL, "GGUF lacks %s", name);
    ck_assert_uint_eq(t->type, want_type);
    ck_assert_uint_eq(t->ndim, cols ? 2 : 1);
    ck_assert_int_eq(t->dims[0], cols ? cols : rows);      /* fastest first */
    if (cols) ck_assert_int_eq(t->dims[1], rows);
    ck_assert_uint_eq(t->offset % 32, 0);
    ck_assert_uint_eq((uintptr_t)(t->data - g->buf) % 32, 0);
    size_t n = (size_t)(rows * (cols ? cols : 1));
    for (size_t i = 0; i < n; i++) {
        if (want_type == ST_GGML_F32) {
            float x;
            memcpy(&x, t->data + 4 * i, 4);
            ck_assert_msg(fbits(x) == fbits(src[i]), "%s[%zu]: %a vs %a", name, i, x, src[i]);
        } else {
            uint16_t h;
            memcpy(&h, t->data + 2 * i, 2);
            double d = f16_ref(h), x = src[i];
            uint16_t up = (uint16_t)(h + 1), down = (uint16_t)(h - 1);
            ck_assert_msg(fabs(d - x) <= fabs(f16_ref(up) - x) || isnan(f16_ref(up)), "%s[%zu] not nearest", name, i);
            if (h & 0x7fff) ck_assert_msg(fabs(d - x) <= fabs(f16_ref(down) - x), "%s[%zu] not nearest", name, i);
        }
    }
}

/* Meta's interleaved order, computed here: meta row h*hd + 2i + j holds hf
 * row h*hd + j*hd/2 + i. */
static float *to_meta(const float *w, int heads, int hd, int64_t cols)
{
    float *o = malloc((size_t)heads * hd * cols * sizeof *o);
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < hd / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(o + ((int64_t)h * hd + 2 * i + j) * cols, w + ((int64_t)h * hd + j * hd / 2 + i) * cols,
                       (size_t)cols * sizeof *o);
    return o;
}

static void check_u32(const st_gguf *g, const char *key, uint32_t want)
{
    uint32_t v = 0;
    ck_assert_msg(st_gguf_get_u32(g, key, &v) == ST_OK, "%s", st_error_message());
    ck_assert_msg(v == want, "%s = %u, want %u", key, v, want);
}

static void check_str(const st_gguf *g, const char *key, const char *want)
{
    const char *s;
    uint64_t n;
    ck_assert_msg(st_gguf_get_str(g, key, &s, &n) == ST_OK, "%s", st_error_message());
    ck_assert_msg(n == strlen(want) && !memcmp(s, want, n), "%s = %.*s, want %s", key, (int)n, s, want);
}

/* A GGUF bool: one byte, 0 or 1. */
static void check_bool(const st_gguf *g, const char *key, int want)
{
    const st_gguf_kv *kv = st_gguf_find(g, key);
    ck_assert_msg(kv && kv->type == ST_GGUF_BOOL, "%s missing or not a bool", key);
    ck_assert_msg(kv->val[0] == want, "%s = %d, want %d", key, kv->val[0], want);
}

static void gguf_llama(uint32_t type)
{
    st_config cfg = llama_cfg(1, 0);   /* GQA, q/k/v bias, untied */
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &cfg, 1, 0), ST_OK);
    float *p = calloc(lay.numel, sizeof *p);
    st_params_init(&lay, p, 11);
    uint64_t rng = 17;
    for (size_t i = 0; i < lay.numel; i++) p[i] += (float)(0.01 * (rng_unif(&rng) - 0.5));   /* biases non-zero */
    char ckpt[512], gguf[512], to[600];
    path_in(ckpt, sizeof ckpt, type == ST_GGML_F32 ? "gl32.h5" : "gl16.h5");
    path_in(gguf, sizeof gguf, type == ST_GGML_F32 ? "l32.gguf" : "l16.gguf");
    save_ckpt(ckpt, &cfg, p, NULL);
    snprintf(to, sizeof to, "gguf:%s", gguf);
    ck_assert_int_eq(run_export(ckpt, to, type == ST_GGML_F32 ? "f32" : "f16"), ST_OK);
    st_gguf g;
    ck_assert_msg(st_gguf_open(&g, gguf) == ST_OK, "%s", st_error_message());
    ck_assert_uint_eq(g.version, 3);
    ck_assert_uint_eq(g.data_start % 32, 0);
    check_str(&g, "general.architecture", "llama");
    check_str(&g, "general.name", "shardtune");
    check_u32(&g, "general.alignment", 32);
    check_u32(&g, "general.file_type", type == ST_GGML_F32 ? 0 : 1);
    check_u32(&g, "llama.context_length", L_P);
    check_u32(&g, "llama.embedding_length", L_C);
    check_u32(&g, "llama.block_count", L_L);
    check_u32(&g, "llama.feed_forward_length", L_F);
    check_u32(&g, "llama.attention.head_count", L_H);
    check_u32(&g, "llama.attention.head_count_kv", L_KV);
    check_u32(&g, "llama.rope.dimension_count", L_C / L_H);
    float f;
    ck_assert_int_eq(st_gguf_get_f32(&g, "llama.attention.layer_norm_rms_epsilon", &f), ST_OK);
    ck_assert_float_eq(f, cfg.norm_eps);
    ck_assert_int_eq(st_gguf_get_f32(&g, "llama.rope.freq_base", &f), ST_OK);
    ck_assert_float_eq(f, cfg.rope_theta);
    st_ptrs P;
    ck_assert_int_eq(st_ptrs_init(&P, &lay, p), ST_OK);
    const int hd = L_C / L_H;
    uint32_t wt = type;
    check_gguf_tensor(&g, "token_embd.weight", P.wte, L_V, L_C, wt);
    check_gguf_tensor(&g, "output.weight", P.lm_head, L_V, L_C, wt);
    check_gguf_tensor(&g, "output_norm.weight", P.lnf_w, L_C, 0, ST_GGML_F32);
    char n[64];
    for (int l = 0; l < L_L; l++) {
        const st_layer_ptrs *L = &P.layer[l];
#define BLK(s) (snprintf(n, sizeof n, "blk.%d.%s", l, s), n)
        float *q = to_meta(L->wq, L_H, hd, L_C), *k = to_meta(L->wk, L_KV, hd, L_C);
        float *qb = to_meta(L->bq, L_H, hd, 1), *kb = to_meta(L->bk, L_KV, hd, 1);
        check_gguf_tensor(&g, BLK("attn_q.weight"), q, L_H * hd, L_C, wt);
        check_gguf_tensor(&g, BLK("attn_k.weight"), k, L_KV * hd, L_C, wt);
        check_gguf_tensor(&g, BLK("attn_q.bias"), qb, L_H * hd, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("attn_k.bias"), kb, L_KV * hd, 0, ST_GGML_F32);
        free(q), free(k), free(qb), free(kb);
        check_gguf_tensor(&g, BLK("attn_v.weight"), L->wv, L_KV * hd, L_C, wt);
        check_gguf_tensor(&g, BLK("attn_v.bias"), L->bv, L_KV * hd, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("attn_output.weight"), L->wo, L_C, L_H * hd, wt);
        check_gguf_tensor(&g, BLK("attn_norm.weight"), L->ln1_w, L_C, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("ffn_norm.weight"), L->ln2_w, L_C, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("ffn_gate.weight"), L->wgate, L_F, L_C, wt);
        check_gguf_tensor(&g, BLK("ffn_up.weight"), L->wup, L_F, L_C, wt);
        check_gguf_tensor(&g, BLK("ffn_down.weight"), L->wdown, L_C, L_F, wt);
#undef BLK
    }
    ck_assert_uint_eq(g.n_tensors, 3 + L_L * 12);
    st_ptrs_free(&P);
    st_gguf_close(&g);
    free(p);
    st_layout_free(&lay);
}

START_TEST(test_gguf_llama_f32) { gguf_llama(ST_GGML_F32); }
END_TEST
START_TEST(test_gguf_llama_f16) { gguf_llama(ST_GGML_F16); }
END_TEST

/* GPT-2 with the GPT-2 tokenizer: fused attn_qkv, f32 position table, output
 * = token embedding, and tokens / merges / types as llama.cpp reads them. */
START_TEST(test_gguf_gpt2_tokenizer)
{
    char spec[600], enc[600], bpe[600];
    snprintf(spec, sizeof spec, "gpt2:%s", th_data_path("gpt2-bpe"));
    snprintf(enc, sizeof enc, "%s/encoder.json", th_data_path("gpt2-bpe"));
    snprintf(bpe, sizeof bpe, "%s/vocab.bpe", th_data_path("gpt2-bpe"));
    st_tokenizer *tok;
    ck_assert_int_eq(st_tokenizer_load(&tok, spec), ST_OK);
    st_config cfg = gpt2_cfg();
    cfg.vocab_size = 50260;   /* three padding ids past the tokenizer's */
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &cfg, 1, 0), ST_OK);
    float *p = calloc(lay.numel, sizeof *p);
    st_params_init(&lay, p, 5);
    char ckpt[512], gguf[512], to[600];
    path_in(ckpt, sizeof ckpt, "gg.h5");
    path_in(gguf, sizeof gguf, "g16.gguf");
    save_ckpt(ckpt, &cfg, p, tok);
    snprintf(to, sizeof to, "gguf:%s", gguf);
    ck_assert_int_eq(run_export(ckpt, to, "f16"), ST_OK);
    st_gguf g;
    ck_assert_msg(st_gguf_open(&g, gguf) == ST_OK, "%s", st_error_message());
    check_str(&g, "general.architecture", "gpt2");
    check_u32(&g, "gpt2.context_length", G_P);
    check_u32(&g, "gpt2.embedding_length", G_C);
    check_u32(&g, "gpt2.feed_forward_length", 4 * G_C);
    check_u32(&g, "gpt2.block_count", G_L);
    check_u32(&g, "gpt2.attention.head_count", G_H);
    float eps;
    ck_assert_int_eq(st_gguf_get_f32(&g, "gpt2.attention.layer_norm_epsilon", &eps), ST_OK);
    ck_assert_float_eq(eps, 1e-5f);
    check_str(&g, "tokenizer.ggml.model", "gpt2");
    check_str(&g, "tokenizer.ggml.pre", "gpt-2");
    check_u32(&g, "tokenizer.ggml.eos_token_id", 50256);
    check_u32(&g, "tokenizer.ggml.bos_token_id", 50256);
    /* GPT-2's rule: no bos before a text (llama.cpp would add one without this key) */
    check_bool(&g, "tokenizer.ggml.add_bos_token", 0);
    check_bool(&g, "tokenizer.ggml.add_eos_token", 0);
    /* tokens: encoder.json's, read here with cJSON; padding past it */
    char *ej = th_read_file(enc, NULL);
    cJSON *e = cJSON_Parse(ej);
    const st_gguf_kv *toks = st_gguf_find(&g, "tokenizer.ggml.tokens"), *types = st_gguf_find(&g, "tokenizer.ggml.token_type");
    ck_assert_ptr_nonnull(toks);
    ck_assert_ptr_nonnull(types);
    ck_assert_uint_eq(toks->n, 50260);
    ck_assert_uint_eq(types->n, 50260);
    const cJSON *it;
    int count = 0;
    cJSON_ArrayForEach(it, e) {
        const char *s;
        uint64_t len;
        ck_assert_int_eq(st_gguf_arr_str(toks, (uint64_t)it->valuedouble, &s, &len), ST_OK);
        ck_assert_msg(len == strlen(it->string) && !memcmp(s, it->string, len), "token %d", (int)it->valuedouble);
        count++;
    }
    ck_assert_int_eq(count, 50257);
    const char *s;
    uint64_t len;
    ck_assert_int_eq(st_gguf_arr_str(toks, 50258, &s, &len), ST_OK);
    ck_assert(len == 10 && !memcmp(s, "[PAD50258]", 10));
    int32_t ty;
    ck_assert_int_eq(st_gguf_arr_i32(types, 50256, &ty), ST_OK);
    ck_assert_int_eq(ty, ST_GGUF_TOK_CONTROL);
    ck_assert_int_eq(st_gguf_arr_i32(types, 262, &ty), ST_OK);
    ck_assert_int_eq(ty, ST_GGUF_TOK_NORMAL);
    ck_assert_int_eq(st_gguf_arr_i32(types, 50259, &ty), ST_OK);
    ck_assert_int_eq(ty, ST_GGUF_TOK_UNUSED);
    cJSON_Delete(e);
    free(ej);
    /* merges: vocab.bpe's lines after the #version line */
    const st_gguf_kv *mg = st_gguf_find(&g, "tokenizer.ggml.merges");
    ck_assert_ptr_nonnull(mg);
    ck_assert_uint_eq(mg->n, 50000);
    char *vb = th_read_file(bpe, NULL), *line = strchr(vb, '\n') + 1;
    for (uint64_t k = 0; k < mg->n; k++) {
        char *nl = strchr(line, '\n');
        size_t ll = nl ? (size_t)(nl - line) : strlen(line);
        ck_assert_int_eq(st_gguf_arr_str(mg, k, &s, &len), ST_OK);
        ck_assert_msg(len == ll && !memcmp(s, line, ll), "merge %llu", (unsigned long long)k);
        line = nl + 1;
    }
    free(vb);
    /* tensors */
    st_ptrs P;
    ck_assert_int_eq(st_ptrs_init(&P, &lay, p), ST_OK);
    check_gguf_tensor(&g, "token_embd.weight", P.wte, cfg.vocab_size, G_C, ST_GGML_F16);
    check_gguf_tensor(&g, "output.weight", P.wte, cfg.vocab_size, G_C, ST_GGML_F16);
    check_gguf_tensor(&g, "position_embd.weight", P.wpe, G_P, G_C, ST_GGML_F32);
    check_gguf_tensor(&g, "output_norm.bias", P.lnf_b, G_C, 0, ST_GGML_F32);
    char n[64];
    float *qkv = malloc(3 * G_C * G_C * sizeof *qkv), *qkvb = malloc(3 * G_C * sizeof *qkvb);
    for (int l = 0; l < G_L; l++) {
        const st_layer_ptrs *L = &P.layer[l];
        memcpy(qkv, L->wq, G_C * G_C * sizeof *qkv);
        memcpy(qkv + G_C * G_C, L->wk, G_C * G_C * sizeof *qkv);
        memcpy(qkv + 2 * G_C * G_C, L->wv, G_C * G_C * sizeof *qkv);
        memcpy(qkvb, L->bq, G_C * sizeof *qkvb);
        memcpy(qkvb + G_C, L->bk, G_C * sizeof *qkvb);
        memcpy(qkvb + 2 * G_C, L->bv, G_C * sizeof *qkvb);
#define BLK(s) (snprintf(n, sizeof n, "blk.%d.%s", l, s), n)
        check_gguf_tensor(&g, BLK("attn_qkv.weight"), qkv, 3 * G_C, G_C, ST_GGML_F16);
        check_gguf_tensor(&g, BLK("attn_qkv.bias"), qkvb, 3 * G_C, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("attn_output.weight"), L->wo, G_C, G_C, ST_GGML_F16);
        check_gguf_tensor(&g, BLK("attn_output.bias"), L->bo, G_C, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("attn_norm.weight"), L->ln1_w, G_C, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("attn_norm.bias"), L->ln1_b, G_C, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("ffn_norm.weight"), L->ln2_w, G_C, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("ffn_norm.bias"), L->ln2_b, G_C, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("ffn_up.weight"), L->wup, 4 * G_C, G_C, ST_GGML_F16);
        check_gguf_tensor(&g, BLK("ffn_up.bias"), L->bup, 4 * G_C, 0, ST_GGML_F32);
        check_gguf_tensor(&g, BLK("ffn_down.weight"), L->wdown, G_C, 4 * G_C, ST_GGML_F16);
        check_gguf_tensor(&g, BLK("ffn_down.bias"), L->bdown, G_C, 0, ST_GGML_F32);
#undef BLK
    }
    ck_assert_uint_eq(g.n_tensors, 5 + 12 * G_L);
    free(qkv), free(qkvb);
    st_ptrs_free(&P);
    st_gguf_close(&g);
    st_tokenizer_free(tok);
    free(p);
    st_layout_free(&lay);
}
END_TEST

/* A llama2.c tokenizer as sentencepiece "llama" vocabulary: U+2581 for
 * spaces, scores, byte and control types. */
START_TEST(test_gguf_llama2c_tokenizer)
{
    char tb[512], ckpt[512], gguf[512], to[600], spec[600];
    path_in(tb, sizeof tb, "tok.bin");
    /* tokenizer.bin: max_len, then (score, len, bytes) per token */
    FILE *fp = fopen(tb, "wb");
    int32_t max_len = 16;
    fwrite(&max_len, 4, 1, fp);
    char pieces[270][16];
    snprintf(pieces[0], 16, "<unk>");
    snprintf(pieces[1], 16, "\n<s>\n");
    snprintf(pieces[2], 16, "\n</s>\n");
    for (int b = 0; b < 256; b++) snprintf(pieces[3 + b], 16, "<0x%02X>", b);
    static const char *const words[] = {" t", "he", " the", " a", "in", " in", "an", "nd", " and", "er", "ed"};
    for (int i = 0; i < 11; i++) snprintf(pieces[259 + i], 16, "%s", words[i]);
    for (int i = 0; i < 270; i++) {
        float score = i < 259 ? 0.0f : -(float)i;
        int32_t len = (int32_t)strlen(pieces[i]);
        fwrite(&score, 4, 1, fp), fwrite(&len, 4, 1, fp), fwrite(pieces[i], 1, (size_t)len, fp);
    }
    fclose(fp);
    snprintf(spec, sizeof spec, "llama2c:%s", tb);
    st_tokenizer *tok;
    ck_assert_msg(st_tokenizer_load(&tok, spec) == ST_OK, "%s", st_error_message());
    st_config cfg = llama_cfg(0, 1);
    cfg.vocab_size = 272;
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &cfg, 1, 0), ST_OK);
    float *p = calloc(lay.numel, sizeof *p);
    st_params_init(&lay, p, 5);
    path_in(ckpt, sizeof ckpt, "l2c.h5");
    path_in(gguf, sizeof gguf, "l2c.gguf");
    save_ckpt(ckpt, &cfg, p, tok);
    snprintf(to, sizeof to, "gguf:%s", gguf);
    ck_assert_int_eq(run_export(ckpt, to, "f32"), ST_OK);
    st_gguf g;
    ck_assert_msg(st_gguf_open(&g, gguf) == ST_OK, "%s", st_error_message());
    check_str(&g, "tokenizer.ggml.model", "llama");
    check_u32(&g, "tokenizer.ggml.bos_token_id", 1);
    check_u32(&g, "tokenizer.ggml.eos_token_id", 2);
    check_u32(&g, "tokenizer.ggml.unknown_token_id", 0);
    check_bool(&g, "tokenizer.ggml.add_bos_token", 1);   /* sentencepiece's rule */
    check_bool(&g, "tokenizer.ggml.add_eos_token", 0);
    ck_assert_ptr_null(st_gguf_find(&g, "tokenizer.ggml.merges"));
    const st_gguf_kv *toks = st_gguf_find(&g, "tokenizer.ggml.tokens"), *types = st_gguf_find(&g, "tokenizer.ggml.token_type"),
                     *scores = st_gguf_find(&g, "tokenizer.ggml.scores");
    ck_assert(toks && types && scores && toks->n == 272 && scores->n == 272);
    static const struct { int id; const char *text; int type; } want[] = {
        {0, "<unk>", ST_GGUF_TOK_UNKNOWN}, {1, "<s>", ST_GGUF_TOK_CONTROL}, {2, "</s>", ST_GGUF_TOK_CONTROL},
        {3, "<0x00>", ST_GGUF_TOK_BYTE}, {258, "<0xFF>", ST_GGUF_TOK_BYTE},
        {261, "\xe2\x96\x81the", ST_GGUF_TOK_NORMAL}, {260, "he", ST_GGUF_TOK_NORMAL},
        {271, "[PAD271]", ST_GGUF_TOK_UNUSED}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *s;
        uint64_t len;
        int32_t ty;
        float sc;
        ck_assert_int_eq(st_gguf_arr_str(toks, (uint64_t)want[i].id, &s, &len), ST_OK);
        ck_assert_msg(len == strlen(want[i].text) && !memcmp(s, want[i].text, len), "token %d: %.*s", want[i].id,
                      (int)len, s);
        ck_assert_int_eq(st_gguf_arr_i32(types, (uint64_t)want[i].id, &ty), ST_OK);
        ck_assert_int_eq(ty, want[i].type);
        ck_assert_int_eq(st_gguf_arr_f32(scores, (uint64_t)want[i].id, &sc), ST_OK);
        if (want[i].id >= 259 && want[i].id < 270) ck_assert_float_eq(sc, -(float)want[i].id);
    }
    st_gguf_close(&g);
    st_tokenizer_free(tok);
    free(p);
    st_layout_free(&lay);
}
END_TEST

/* The fixture's tokenizer.json with another pre-tokenizer (Split by regex,
 * then ByteLevel without its own regex, as Llama 3 and Qwen2 write it), a
 * normalizer (JSON or NULL) and ignore_merges, exported to GGUF (force:
 * --force); returns the status. */
static st_err export_pre(const char *tag, const char *regex, const char *normalizer, int ignore_merges, int force,
                         st_gguf *g)
{
    char dir[512], ckpt[600], gguf[600], to[700], spec[700], path[600];
    path_in(dir, sizeof dir, tag);
    mkdir(dir, 0755);
    fx_tokenizer_json(dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *text = th_read_file(path, NULL);
    cJSON *j = cJSON_Parse(text), *pre = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(pre, "pretokenizers");
    cJSON *split = cJSON_CreateObject(), *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(pre, "type", "Sequence");
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(split, "pattern"), "Regex", regex);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddFalseToObject(bl, "add_prefix_space");
    cJSON_AddFalseToObject(bl, "use_regex");
    cJSON_AddItemToArray(list, split);
    cJSON_AddItemToArray(list, bl);
    cJSON_ReplaceItemInObject(j, "pre_tokenizer", pre);
    if (normalizer) cJSON_AddItemToObject(j, "normalizer", cJSON_Parse(normalizer));
    cJSON_AddBoolToObject(cJSON_GetObjectItem(j, "model"), "ignore_merges", ignore_merges);
    char *out = cJSON_Print(j);
    th_write_file(path, out, strlen(out));
    free(out), free(text);
    cJSON_Delete(j);
    snprintf(spec, sizeof spec, "hf:%s", path);
    st_tokenizer *tok;
    ck_assert_msg(st_tokenizer_load(&tok, spec) == ST_OK, "%s", st_error_message());
    st_config cfg = llama_cfg(0, 1);
    cfg.vocab_size = 264;
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &cfg, 1, 0), ST_OK);
    float *p = calloc(lay.numel, sizeof *p);
    st_params_init(&lay, p, 5);
    snprintf(ckpt, sizeof ckpt, "%s.h5", dir);
    snprintf(gguf, sizeof gguf, "%s.gguf", dir);
    save_ckpt(ckpt, &cfg, p, tok);
    snprintf(to, sizeof to, "gguf:%s", gguf);
    char *argv[] = {"export", ckpt, "--to", to, force ? "--force" : NULL, NULL};
    st_error_clear();
    st_err e = st_cmd_export(force ? 5 : 4, argv, MPI_COMM_WORLD);
    if (!e) ck_assert_msg(st_gguf_open(g, gguf) == ST_OK, "%s", st_error_message());
    st_tokenizer_free(tok);
    free(p);
    st_layout_free(&lay);
    return e;
}

/* tokenizer.ggml.pre: the label llama.cpp keeps for Llama 3's and Qwen2/3's
 * regexes (it wrote "default" and warned, and llama.cpp split 27% of texts
 * differently); a pre-tokenizer llama.cpp does not know, Llama 3's regex
 * without Llama 3's ignore_merges, or a normalizer llama.cpp does not apply
 * is refused unless --force. */
START_TEST(test_gguf_pre_labels)
{
    static const char l3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    static const char qw[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    st_gguf g;
    ck_assert_msg(export_pre("pre_l3", l3, NULL, 1, 0, &g) == ST_OK, "%s", st_error_message());
    check_str(&g, "tokenizer.ggml.pre", "llama-bpe");
    st_gguf_close(&g);
    ck_assert_msg(export_pre("pre_qw", qw, "{\"type\":\"NFC\"}", 0, 0, &g) == ST_OK, "%s", st_error_message());
    check_str(&g, "tokenizer.ggml.pre", "qwen2");
    st_gguf_close(&g);
    expect_error(export_pre("pre_l3m", l3, NULL, 0, 0, &g), ST_ERR_ARG, "tokenize text differently", "--force");
    expect_error(export_pre("pre_x", "\\p{L}+", NULL, 0, 0, &g), ST_ERR_ARG, "none of llama.cpp", NULL);
    ck_assert_msg(export_pre("pre_xf", "\\p{L}+", NULL, 0, 1, &g) == ST_OK, "%s", st_error_message());
    check_str(&g, "tokenizer.ggml.pre", "default");
    st_gguf_close(&g);
    expect_error(export_pre("pre_lc", qw, "{\"type\":\"Lowercase\"}", 0, 0, &g), ST_ERR_ARG, "normalizers", NULL);
    /* a sentencepiece .model that removes extra spaces: llama.cpp keeps them */
    char spec[700], ckpt[512], to[600];
    snprintf(spec, sizeof spec, "llama2c:%s", th_data_path("llama2c/tok512.model"));
    st_tokenizer *tok;
    ck_assert_msg(st_tokenizer_load(&tok, spec) == ST_OK, "%s", st_error_message());
    st_config cfg = llama_cfg(0, 1);
    cfg.vocab_size = 512;
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &cfg, 1, 0), ST_OK);
    float *p = calloc(lay.numel, sizeof *p);
    path_in(ckpt, sizeof ckpt, "pre_spm.h5");
    save_ckpt(ckpt, &cfg, p, tok);
    path_in(to, sizeof to, "pre_spm.gguf");
    memmove(to + 5, to, strlen(to) + 1);
    memcpy(to, "gguf:", 5);
    expect_error(run_export(ckpt, to, "f32"), ST_ERR_ARG, "remove_extra_whitespaces", NULL);
    free(p);
    st_layout_free(&lay);
    st_tokenizer_free(tok);
}
END_TEST

/* An imported tokenizer.json ("hf" kind) as a GGUF gpt2 vocabulary. */
START_TEST(test_gguf_hf_tokenizer)
{
    char dir[512], ckpt[512], gguf[512], to[600];
    path_in(dir, sizeof dir, "ghf");
    path_in(ckpt, sizeof ckpt, "ghf.h5");
    path_in(gguf, sizeof gguf, "ghf.gguf");
    fx_model *m = calloc(1, sizeof *m);
    llama_fixture(m, dir, "F32", 1, 1, 0);
    ck_assert_int_eq(run_convert(dir, ckpt, NULL), ST_OK);
    snprintf(to, sizeof to, "gguf:%s", gguf);
    ck_assert_int_eq(run_export(ckpt, to, "f32"), ST_OK);
    st_gguf g;
    ck_assert_msg(st_gguf_open(&g, gguf) == ST_OK, "%s", st_error_message());
    check_str(&g, "tokenizer.ggml.model", "gpt2");
    check_str(&g, "tokenizer.ggml.pre", "gpt-2");
    check_u32(&g, "tokenizer.ggml.eos_token_id", 261);
    const st_gguf_kv *toks = st_gguf_find(&g, "tokenizer.ggml.tokens"), *types = st_gguf_find(&g, "tokenizer.ggml.token_type"),
                     *mg = st_gguf_find(&g, "tokenizer.ggml.merges");
    ck_assert(toks && types && mg && toks->n == L_V && mg->n == 5);
    static const struct { int id; const char *text; int type; } want[] = {
        {'a', "a", ST_GGUF_TOK_NORMAL}, {' ', "\xc4\xa0", ST_GGUF_TOK_NORMAL}, {256, "\xc4\xa0t", ST_GGUF_TOK_NORMAL},
        {261, "<|endoftext|>", ST_GGUF_TOK_CONTROL}, {263, "[PAD263]", ST_GGUF_TOK_UNUSED}};
    const char *s;
    uint64_t len;
    int32_t ty;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        ck_assert_int_eq(st_gguf_arr_str(toks, (uint64_t)want[i].id, &s, &len), ST_OK);
        ck_assert_msg(len == strlen(want[i].text) && !memcmp(s, want[i].text, len), "token %d", want[i].id);
        ck_assert_int_eq(st_gguf_arr_i32(types, (uint64_t)want[i].id, &ty), ST_OK);
        ck_assert_int_eq(ty, want[i].type);
    }
    ck_assert_int_eq(st_gguf_arr_str(mg, 2, &s, &len), ST_OK);
    ck_assert(len == strlen("\xc4\xa0t he") && !memcmp(s, "\xc4\xa0t he", len));
    st_gguf_close(&g);
    fx_free(m);
    free(m);
}
END_TEST

/* ---- hostile GGUF: built byte by byte here ---- */

typedef struct {
    uint8_t b[1024];
    size_t n;
} gbuf;

static void gput(gbuf *g, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) g->b[g->n++] = (uint8_t)(v >> (8 * i));
}

static void gstr(gbuf *g, const char *s)
{
    gput(g, strlen(s), 8);
    memcpy(g->b + g->n, s, strlen(s));
    g->n += strlen(s);
}

/* Variants of one small file; which picks the damage (0 = none). */
enum { G_OK, G_MAGIC, G_VERSION, G_NKV, G_KEYLEN, G_KVTYPE, G_NESTED, G_ARRAYN, G_DUPKEY, G_ALIGN0, G_ALIGN3,
       G_NDIM0, G_NDIM5, G_DIMOVF, G_TTYPE, G_UNALIGNED, G_PASTEND, G_DUPNAME, G_OVERLAP, G_LONGNAME, G_KEYCHAR,
       G_COUNT };

static void build_gguf(gbuf *g, int which)
{
    memset(g, 0, sizeof *g);
    gput(g, which == G_MAGIC ? 0x46554746u : ST_GGUF_MAGIC, 4);
    gput(g, which == G_VERSION ? 1 : 3, 4);
    gput(g, 2, 8);                                          /* tensors */
    gput(g, which == G_NKV ? (1ull << 60) : 4, 8);          /* kv */
    if (which == G_KEYLEN) gput(g, 1ull << 62, 8), gput(g, 0, 8);
    else gstr(g, which == G_KEYCHAR ? "general.\x01rch" : "general.architecture");
    gput(g, ST_GGUF_STRING, 4);
    gstr(g, "llama");
    gstr(g, which == G_DUPKEY ? "general.architecture" : "general.alignment");
    gput(g, ST_GGUF_UINT32, 4);
    gput(g, which == G_ALIGN0 ? 0 : which == G_ALIGN3 ? 3 : 32, 4);
    gstr(g, "list");
    gput(g, which == G_KVTYPE ? 99 : ST_GGUF_ARRAY, 4);
    gput(g, which == G_NESTED ? ST_GGUF_ARRAY : ST_GGUF_STRING, 4);
    gput(g, which == G_ARRAYN ? (1ull << 61) : 2, 8);
    gstr(g, "ab");
    gstr(g, "");
    gstr(g, "nums");
    gput(g, ST_GGUF_ARRAY, 4);
    gput(g, ST_GGUF_INT32, 4);
    gput(g, 2, 8);
    gput(g, 7, 4), gput(g, (uint32_t)-3, 4);
    /* tensor a: f32 [2, 4] (dims 4, 2) at 0; tensor b: f32 [4] at 32 */
    gstr(g, which == G_LONGNAME ? "a_name_that_is_far_too_long_for_ggml_which_allows_63_bytes_at_most" : "a");
    gput(g, which == G_NDIM0 ? 0 : which == G_NDIM5 ? 5 : 2, 4);
    gput(g, which == G_DIMOVF ? (1ull << 62) : 4, 8);
    gput(g, which == G_DIMOVF ? (1ull << 62) : 2, 8);
    gput(g, which == G_TTYPE ? 2 : ST_GGML_F32, 4);
    gput(g, which == G_UNALIGNED ? 4 : which == G_PASTEND ? 4096 : 0, 8);
    gstr(g, which == G_DUPNAME ? "a" : "b");
    gput(g, 1, 4);
    gput(g, 4, 8);
    gput(g, ST_GGML_F32, 4);
    gput(g, which == G_OVERLAP ? 0 : 32, 8);
    while (g->n % 32) g->b[g->n++] = 0;
    for (int i = 0; i < 8; i++) {
        float f = (float)i;
        memcpy(g->b + g->n, &f, 4);
        g->n += 4;
    }
    g->n += 0;                                              /* a is 32 bytes: b starts at 32 */
    for (int i = 0; i < 4; i++) {
        float f = (float)(10 + i);
        memcpy(g->b + g->n, &f, 4);
        g->n += 4;
    }
}

START_TEST(test_gguf_reader_valid)
{
    gbuf b;
    build_gguf(&b, G_OK);
    st_gguf g;
    ck_assert_msg(st_gguf_parse(&g, b.b, b.n, "mem") == ST_OK, "%s", st_error_message());
    ck_assert_uint_eq(g.n_kv, 4);
    ck_assert_uint_eq(g.n_tensors, 2);
    ck_assert_uint_eq(g.alignment, 32);
    check_str(&g, "general.architecture", "llama");
    const st_gguf_kv *l = st_gguf_find(&g, "list"), *nums = st_gguf_find(&g, "nums");
    const char *s;
    uint64_t len;
    ck_assert_int_eq(st_gguf_arr_str(l, 0, &s, &len), ST_OK);
    ck_assert(len == 2 && !memcmp(s, "ab", 2));
    ck_assert_int_eq(st_gguf_arr_str(l, 1, &s, &len), ST_OK);
    ck_assert_uint_eq(len, 0);
    expect_error(st_gguf_arr_str(l, 2, &s, &len), ST_ERR_ARG, "list", NULL);
    int32_t v;
    ck_assert_int_eq(st_gguf_arr_i32(nums, 1, &v), ST_OK);
    ck_assert_int_eq(v, -3);
    expect_error(st_gguf_arr_str(nums, 0, &s, &len), ST_ERR_FORMAT, "nums", NULL);
    uint32_t u;
    expect_error(st_gguf_get_u32(&g, "general.architecture", &u), ST_ERR_FORMAT, "general.architecture", "type");
    expect_error(st_gguf_get_u32(&g, "nope", &u), ST_ERR_FORMAT, "nope", "missing");
    const st_gguf_tensor *a = st_gguf_find_tensor(&g, "a"), *t = st_gguf_find_tensor(&g, "b");
    ck_assert(a && t && a->dims[0] == 4 && a->dims[1] == 2 && a->nbytes == 32 && t->offset == 32);
    float f;
    memcpy(&f, a->data + 28, 4);
    ck_assert_float_eq(f, 7.0f);
    memcpy(&f, t->data + 12, 4);
    ck_assert_float_eq(f, 13.0f);
    st_gguf_close(&g);
}
END_TEST

START_TEST(test_gguf_reader_hostile)
{
    static const char *const msg[G_COUNT] = {
        [G_MAGIC] = "GGUF", [G_VERSION] = "version", [G_NKV] = "cannot fit", [G_KEYLEN] = "metadata key 0",
        [G_KVTYPE] = "unknown value type", [G_NESTED] = "array of arrays", [G_ARRAYN] = "array elements",
        [G_DUPKEY] = "appears twice", [G_ALIGN0] = "power of two", [G_ALIGN3] = "power of two",
        [G_NDIM0] = "dimensions", [G_NDIM5] = "dimensions", [G_DIMOVF] = "overflows", [G_TTYPE] = "does not handle",
        [G_UNALIGNED] = "multiple of the alignment", [G_PASTEND] = "runs past", [G_DUPNAME] = "appears twice",
        [G_OVERLAP] = "overlap", [G_LONGNAME] = "name of", [G_KEYCHAR] = "printable"};
    for (int w = 1; w < G_COUNT; w++) {
        gbuf b;
        build_gguf(&b, w);
        st_gguf g;
        st_err e = st_gguf_parse(&g, b.b, b.n, "hostile.gguf");
        ck_assert_msg(e == ST_ERR_FORMAT, "variant %d accepted: %s", w, st_error_message());
        ck_assert_msg(strstr(st_error_message(), "hostile.gguf"), "variant %d: %s", w, st_error_message());
        ck_assert_msg(strstr(st_error_message(), msg[w]), "variant %d lacks \"%s\": %s", w, msg[w], st_error_message());
        st_error_clear();
    }
    /* every truncation of the valid file, each in a buffer of exactly that size */
    gbuf b;
    build_gguf(&b, G_OK);
    for (size_t k = 0; k < b.n; k++) {
        uint8_t *cut = malloc(k + 1);
        memcpy(cut, b.b, k);
        st_gguf g;
        ck_assert_msg(st_gguf_parse(&g, cut, k, "cut") == ST_ERR_FORMAT, "prefix %zu accepted", k);
        st_error_clear();
        free(cut);
    }
}
END_TEST

/* ==== runner =============================================================== */

static void setup(void)
{
    if (g_root[0]) return;
    snprintf(g_root, sizeof g_root, "/tmp/st_formats_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_root));
}

static Suite *formats_suite(void)
{
    Suite *s = suite_create("formats");
    TCase *tc = tcase_create("dtypes");
    tcase_add_test(tc, test_f16_widen_exhaustive);
    tcase_add_test(tc, test_f16_narrow_rounding);
    tcase_add_test(tc, test_bf16_both_ways);
    suite_add_tcase(s, tc);

    tc = tcase_create("safetensors");
    tcase_add_unchecked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_safetensors_read_dtypes);
    tcase_add_test(tc, test_safetensors_hostile);
    tcase_add_test(tc, test_safetensors_truncations);
    suite_add_tcase(s, tc);

    tc = tcase_create("hf");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_import_gpt2_f32_prefix_sharded);
    tcase_add_test(tc, test_import_gpt2_f16_plain);
    tcase_add_test(tc, test_import_gpt2_bf16);
    tcase_add_test(tc, test_import_qwen2_tied_f32);
    tcase_add_test(tc, test_import_llama_untied_bf16_sharded);
    tcase_add_test(tc, test_import_qwen2_untied_f16);
    tcase_add_test(tc, test_roundtrip_gpt2_f32);
    tcase_add_test(tc, test_roundtrip_qwen2_tied_f32);
    tcase_add_test(tc, test_roundtrip_llama_untied_f32);
    tcase_add_test(tc, test_roundtrip_gpt2_f16);
    tcase_add_test(tc, test_roundtrip_llama_bf16);
    tcase_add_test(tc, test_roundtrip_llama2c);
    tcase_add_test(tc, test_hf_config_refusals);
    tcase_add_test(tc, test_hf_config_defaults);
    tcase_add_test(tc, test_hf_tensor_refusals);
    tcase_add_test(tc, test_hf_extra_and_index);
    tcase_add_test(tc, test_import_nonfinite_refused);
    tcase_add_test(tc, test_convert_names_other_files);
    tcase_add_test(tc, test_export_arguments);
    tcase_add_test(tc, test_tokenizer_export_gpt2);
    tcase_add_test(tc, test_tokenizer_export_byte);
    suite_add_tcase(s, tc);

    tc = tcase_create("gguf");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_gguf_llama_f32);
    tcase_add_test(tc, test_gguf_llama_f16);
    tcase_add_test(tc, test_gguf_gpt2_tokenizer);
    tcase_add_test(tc, test_gguf_llama2c_tokenizer);
    tcase_add_test(tc, test_gguf_hf_tokenizer);
    tcase_add_test(tc, test_gguf_pre_labels);
    tcase_add_test(tc, test_gguf_reader_valid);
    tcase_add_test(tc, test_gguf_reader_hostile);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    SRunner *sr = srunner_create(formats_suite());
    srunner_set_fork_status(sr, CK_NOFORK);   /* checkpoint I/O uses MPI, which does not survive fork */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (g_root[0] && !getenv("ST_KEEP_TMP")) rm_rf(g_root);
    MPI_Finalize();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
