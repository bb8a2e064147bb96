/* llama2c.c: llama2.c checkpoints in and out (the format is in llama2c.h).
 *
 * Reading never trusts the header: every size is checked for overflow and the
 * whole file size is compared with what the header implies before anything is
 * allocated, so a hostile header cannot make us allocate or read past the
 * file. Tensors are streamed with pread straight into the flat buffer.
 */
#include "io/formats/llama2c.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/params.h"
#include "io/binfile.h"
#include "io/formats/model_source.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "llama2.c files are little-endian and this code reads them in place"
#endif

enum { L2C_HEADER_INTS = 7 };
#define L2C_THETA 10000.0f   /* run.c hard-codes both */
#define L2C_EPS 1e-5f
#define L2C_MAGIC_V1 0x616b3432 /* "ak42": export.py --version 1 or 2, not this format */

static const char *const header_field[L2C_HEADER_INTS] = {
    "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};

/* The tensors in file order. A per-layer kind is stored for every layer before
 * the next kind starts. After these: freq_cis_real and freq_cis_imag
 * (seq_len, head/2) each, then wcls (V, dim) when the classifier is not shared. */
static const struct {
    const char *name;   /* HF name; the part after "model.layers.<l>." when per_layer */
    const char *l2c;    /* run.c's name, for messages */
    int per_layer;
    int rope;           /* q, k: rows in Meta's interleaved RoPE order on disk */
} file_order[] = {
    {"model.embed_tokens.weight", "token_embedding_table", 0, 0},   /* (V, dim) */
    {"input_layernorm.weight", "rms_att_weight", 1, 0},             /* (L, dim) */
    {"self_attn.q_proj.weight", "wq", 1, 1},                        /* (L, dim, dim) */
    {"self_attn.k_proj.weight", "wk", 1, 1},                        /* (L, kv_dim, dim) */
    {"self_attn.v_proj.weight", "wv", 1, 0},                        /* (L, kv_dim, dim) */
    {"self_attn.o_proj.weight", "wo", 1, 0},                        /* (L, dim, dim) */
    {"post_attention_layernorm.weight", "rms_ffn_weight", 1, 0},    /* (L, dim) */
    {"mlp.gate_proj.weight", "w1", 1, 0},                           /* (L, hidden, dim) */
    {"mlp.down_proj.weight", "w2", 1, 0},                           /* (L, dim, hidden) */
    {"mlp.up_proj.weight", "w3", 1, 0},                             /* (L, hidden, dim) */
    {"model.norm.weight", "rms_final_weight", 0, 0},                /* (dim) */
};
enum { N_KINDS = sizeof file_order / sizeof file_order[0] };

/* ------------------------------------------------------------------------- */
/* RoPE row order */

void st_rope_rows_meta_to_hf(float *dst, const float *src, int n_head, int head_dim, int64_t cols)
{
    const int half = head_dim / 2;
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++) {
                const float *s = src + ((int64_t)h * head_dim + 2 * i + j) * cols;
                float *d = dst + ((int64_t)h * head_dim + j * half + i) * cols;
                memcpy(d, s, (size_t)cols * sizeof *d);
            }
}

void st_rope_rows_hf_to_meta(float *dst, const float *src, int n_head, int head_dim, int64_t cols)
{
    const int half = head_dim / 2;
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < half; i++)
            for (int j = 0; j < 2; j++) {
                const float *s = src + ((int64_t)h * head_dim + j * half + i) * cols;
                float *d = dst + ((int64_t)h * head_dim + 2 * i + j) * cols;
                memcpy(d, s, (size_t)cols * sizeof *d);
            }
}

/* ------------------------------------------------------------------------- */
/* header */


/* Bytes a file with this header must have, without and with a separate classifier. */
static void expected_bytes(const int32_t h[L2C_HEADER_INTS], int64_t *base, int64_t *wcls, int *ovf)
{
    const int64_t dim = h[0], hid = h[1], L = h[2], H = h[3], KV = h[4], T = h[6];
    const int64_t V = h[5] < 0 ? -(int64_t)h[5] : h[5];
    const int64_t hs = dim / H, kvd = st_smul(KV, hs, ovf);
    int64_t layer = 2 * dim;                                     /* two rms norms */
    layer = st_sadd(layer, st_smul(2, st_smul(dim, dim, ovf), ovf), ovf); /* wq, wo */
    layer = st_sadd(layer, st_smul(2, st_smul(kvd, dim, ovf), ovf), ovf); /* wk, wv */
    layer = st_sadd(layer, st_smul(3, st_smul(hid, dim, ovf), ovf), ovf); /* w1, w2, w3 */
    int64_t n = st_smul(V, dim, ovf);                               /* embedding */
    n = st_sadd(n, st_smul(L, layer, ovf), ovf);
    n = st_sadd(n, dim, ovf);                                       /* final norm */
    n = st_sadd(n, st_smul(T, st_smul(2, hs / 2, ovf), ovf), ovf);        /* freq_cis real, imag */
    *base = st_sadd(L2C_HEADER_INTS * 4, st_smul(n, 4, ovf), ovf);
    *wcls = st_smul(st_smul(V, dim, ovf), 4, ovf);
}

#define HDR_FMT "dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, vocab_size %d, seq_len %d"
#define HDR_ARGS(h) h[0], h[1], h[2], h[3], h[4], h[5], h[6]

/* Check the header of a file of file_bytes bytes and turn it into a config. */
static st_err header_to_config(const char *path, const int32_t h[L2C_HEADER_INTS], int64_t file_bytes,
                               st_config *cfg)
{
    if ((uint32_t)h[0] == L2C_MAGIC_V1)
        ST_FAIL(ST_ERR_FORMAT, "'%s' starts with the magic \"ak42\" of llama2.c export.py --version 1/2; "
                "shardtune reads the legacy version 0 (export.py --version 0, the format run.c reads)", path);
    for (int i = 0; i < L2C_HEADER_INTS; i++) {
        int bad = i == 5 ? (h[i] == 0 || h[i] == INT32_MIN) : h[i] <= 0;
        if (bad)
            ST_FAIL(ST_ERR_FORMAT, "llama2.c checkpoint '%s': header field %s is %d, expected %s "
                    "(header: " HDR_FMT ")", path, header_field[i], h[i],
                    i == 5 ? "a nonzero vocabulary size (negative = separate classifier)" : "a positive number",
                    HDR_ARGS(h));
    }
    if (h[0] % h[3])
        ST_FAIL(ST_ERR_FORMAT, "llama2.c checkpoint '%s': header field dim %d is not a multiple of n_heads %d",
                path, h[0], h[3]);
    if (h[3] % h[4])
        ST_FAIL(ST_ERR_FORMAT, "llama2.c checkpoint '%s': header field n_heads %d is not a multiple of "
                "n_kv_heads %d", path, h[3], h[4]);
    if ((h[0] / h[3]) % 2)
        ST_FAIL(ST_ERR_FORMAT, "llama2.c checkpoint '%s': head size dim/n_heads = %d/%d = %d is odd; "
                "RoPE needs an even head size", path, h[0], h[3], h[0] / h[3]);

    int ovf = 0;
    int64_t base, wcls;
    expected_bytes(h, &base, &wcls, &ovf);
    const int64_t with_wcls = st_sadd(base, wcls, &ovf);
    const int shared = h[5] > 0;
    const int64_t want = shared ? base : with_wcls;
    if (ovf)
        ST_FAIL(ST_ERR_FORMAT, "llama2.c checkpoint '%s': header sizes overflow 64 bits (" HDR_FMT "); "
                "the header is corrupt", path, HDR_ARGS(h));
    if (file_bytes != want) {
        const char *hint = "the file is truncated, has trailing bytes, or is not a llama2.c version-0 checkpoint";
        if (shared && file_bytes == with_wcls)
            hint = "the file holds a separate classifier (wcls) but vocab_size is positive, which says shared";
        else if (!shared && file_bytes == base)
            hint = "vocab_size is negative, which says a separate classifier (wcls) follows, but the file has none";
        ST_FAIL(ST_ERR_FORMAT, "llama2.c checkpoint '%s' is %lld bytes; its header (" HDR_FMT ") "
                "needs exactly %lld: %s", path, (long long)file_bytes, HDR_ARGS(h), (long long)want, hint);
    }

    memset(cfg, 0, sizeof *cfg);
    cfg->family = ST_FAMILY_LLAMA;
    cfg->d_model = h[0];
    cfg->d_ff = h[1];
    cfg->n_layer = h[2];
    cfg->n_head = h[3];
    cfg->n_kv_head = h[4];
    cfg->vocab_size = shared ? h[5] : -h[5];
    cfg->max_seq = h[6];
    cfg->tied_embeddings = shared;
    cfg->qkv_bias = 0;
    cfg->rope_theta = L2C_THETA;
    cfg->norm_eps = L2C_EPS;
    return ST_OK;
}

/* ------------------------------------------------------------------------- */
/* reading */

/* The open file and where each unit's tensor starts. */
typedef struct {
    int fd;
    char *path;
    int64_t *off;       /* (n_units) byte offset of the unit's tensor */
    uint8_t *rope;      /* (n_units) q, k: rows in Meta's RoPE order on disk */
} l2c_file;

/* n floats at byte off into dst, refusing NaN and Inf (they would silently
 * poison training). */
static st_err read_floats(const l2c_file *f, int64_t off, float *dst, size_t n, const char *what)
{
    ST_TRY(st_pread_all(f->fd, "llama2.c", f->path, &off, dst, n * sizeof *dst, what));
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            ST_FAIL(ST_ERR_FORMAT, "llama2.c checkpoint '%s': %s element %zu is %g; the checkpoint is corrupt",
                    f->path, what, i, (double)dst[i]);
    return ST_OK;
}

static void tensor_name(char *out, size_t cap, int kind, int layer)
{
    if (file_order[kind].per_layer)
        snprintf(out, cap, "model.layers.%d.%s", layer, file_order[kind].name);
    else
        snprintf(out, cap, "%s", file_order[kind].name);
}

static st_err l2c_read_unit(st_model_source *s, int u, float *const out[ST_SRC_MAX_DST])
{
    const l2c_file *f = s->impl;
    const st_tensor *t = s->units[u].dst[0];
    char what[192];
    snprintf(what, sizeof what, "tensor %s", t->name);
    if (!f->rope[u]) return read_floats(f, f->off[u], out[0], t->numel, what);
    float *tmp = malloc(t->numel * sizeof *tmp);
    if (!tmp) ST_FAIL(ST_ERR_MEM, "out of memory reading %s of '%s'", t->name, f->path);
    st_err e = read_floats(f, f->off[u], tmp, t->numel, what);
    if (!e) st_rope_rows_meta_to_hf(out[0], tmp, (int)(t->shape[0] / s->lay.head_dim), s->lay.head_dim, t->shape[1]);
    free(tmp);
    return e;
}

static void l2c_close(st_model_source *s)
{
    l2c_file *f = s->impl;
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    free(f->off);
    free(f->rope);
    free(f);
    s->impl = NULL;
}

/* One unit per tensor in file order, with its offset (the header has been
 * checked against the file size, so every offset is inside the file). */
static st_err l2c_units(st_model_source *s, l2c_file *f)
{
    const st_config *c = &s->cfg;
    int n = 2 + (N_KINDS - 2) * c->n_layer + (c->tied_embeddings ? 0 : 1);
    f->off = malloc((size_t)n * sizeof *f->off);
    f->rope = malloc((size_t)n);
    if (!f->off || !f->rope) ST_FAIL(ST_ERR_MEM, "out of memory for the tensor list of '%s'", f->path);
    int64_t off = L2C_HEADER_INTS * 4;
    char name[128];
    const char *names[1] = {name};
    for (int k = 0; k < N_KINDS; k++) {
        int n_rep = file_order[k].per_layer ? c->n_layer : 1;
        for (int l = 0; l < n_rep; l++) {
            tensor_name(name, sizeof name, k, l);
            ST_TRY(st_model_source_add_unit(s, names, 1));
            f->off[s->n_units - 1] = off;
            f->rope[s->n_units - 1] = (uint8_t)file_order[k].rope;
            off += (int64_t)s->units[s->n_units - 1].dst[0]->numel * (int64_t)sizeof(float);
        }
    }
    /* freq_cis_real and freq_cis_imag: RoPE tables, recomputed from rope_theta when needed */
    off += 2 * (int64_t)c->max_seq * (s->lay.head_dim / 2) * (int64_t)sizeof(float);
    if (!c->tied_embeddings) {
        snprintf(name, sizeof name, "lm_head.weight");
        ST_TRY(st_model_source_add_unit(s, names, 1));
        f->off[s->n_units - 1] = off;
        f->rope[s->n_units - 1] = 0;
    }
    ST_ASSERT(s->n_units == n, "llama2.c reader counted %d tensors, listed %d", n, s->n_units);
    return ST_OK;
}

st_err st_llama2c_open(st_model_source *s, const char *path)
{
    s->format = "llama2c";
    l2c_file *f = calloc(1, sizeof *f);
    if (!f) ST_FAIL(ST_ERR_MEM, "out of memory");
    f->fd = -1;
    s->impl = f;
    s->close_impl = l2c_close;
    s->read = l2c_read_unit;
    f->path = strdup(path);
    if (!f->path) ST_FAIL(ST_ERR_MEM, "out of memory");
    int64_t size;
    ST_TRY(st_open_checkpoint_file("llama2.c", path, L2C_HEADER_INTS * 4, &f->fd, &size));
    int32_t h[L2C_HEADER_INTS];
    int64_t off = 0;
    ST_TRY(st_pread_all(f->fd, "llama2.c", path, &off, h, sizeof h, "the header"));
    ST_TRY(header_to_config(path, h, size, &s->cfg));
    ST_TRY(st_layout_init(&s->lay, &s->cfg, 1, 0));
    ST_TRY(l2c_units(s, f));
    return ST_OK;
}

/* ------------------------------------------------------------------------- */
/* writing */

typedef struct {
    FILE *fp;
    const char *path;   /* the temporary file being written */
} dst_file;

static st_err write_bytes(dst_file *f, const void *src, size_t n, const char *what)
{
    if (fwrite(src, 1, n, f->fp) != n)
        ST_FAIL(ST_ERR_IO, "writing %s to '%s': %s", what, f->path, strerror(errno));
    return ST_OK;
}

/* RoPE tables as llama2.c's model.py computes them (in float32):
 * real[t][i] = cos(t * theta^(-2i/hs)), imag[t][i] = sin(...), t < seq_len, i < hs/2. */
static st_err write_freq_cis(dst_file *f, const st_config *c, float *row)
{
    const int hs = st_config_head_dim(c), half = hs / 2;
    for (int part = 0; part < 2; part++)
        for (int t = 0; t < c->max_seq; t++) {
            for (int i = 0; i < half; i++) {
                float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)hs);
                float angle = (float)t * freq;
                row[i] = part == 0 ? cosf(angle) : sinf(angle);
            }
            ST_TRY(write_bytes(f, row, (size_t)half * sizeof *row, part ? "freq_cis_imag" : "freq_cis_real"));
        }
    return ST_OK;
}

static st_err write_tensors(dst_file *f, const st_layout *lay, const float *params, float *scratch)
{
    const st_config *c = &lay->cfg;
    const int32_t h[L2C_HEADER_INTS] = {c->d_model, c->d_ff, c->n_layer, c->n_head, c->n_kv_head,
                                        c->tied_embeddings ? c->vocab_size : -c->vocab_size, c->max_seq};
    ST_TRY(write_bytes(f, h, sizeof h, "the header"));
    char name[128];
    for (int k = 0; k < N_KINDS; k++) {
        int n_rep = file_order[k].per_layer ? c->n_layer : 1;
        for (int l = 0; l < n_rep; l++) {
            tensor_name(name, sizeof name, k, l);
            const st_tensor *t = st_layout_find(lay, name);
            ST_ASSERT(t, "llama2.c writer: the layout has no tensor %s", name);
            const float *src = params + t->offset;
            if (file_order[k].rope) {
                int heads = (int)(t->shape[0] / lay->head_dim);
                st_rope_rows_hf_to_meta(scratch, src, heads, lay->head_dim, t->shape[1]);
                src = scratch;
            }
            ST_TRY(write_bytes(f, src, t->numel * sizeof *src, name));
        }
    }
    ST_TRY(write_freq_cis(f, c, scratch));
    if (!c->tied_embeddings) {
        const st_tensor *t = st_layout_find(lay, "lm_head.weight");
        ST_ASSERT(t, "llama2.c writer: untied layout has no lm_head.weight");
        ST_TRY(write_bytes(f, params + t->offset, t->numel * sizeof *params, t->name));
    }
    return ST_OK;
}

/* The format holds only what run.c assumes; refuse what it would misread. */
static st_err check_writable(const char *path, const st_config *c)
{
    if (c->family != ST_FAMILY_LLAMA)
        ST_FAIL(ST_ERR_ARG, "cannot write '%s' as a llama2.c checkpoint: family is %s, the format holds "
                "only llama models", path, st_family_name(c->family));
    if (c->qkv_bias)
        ST_FAIL(ST_ERR_ARG, "cannot write '%s' as a llama2.c checkpoint: the model has q/k/v biases, "
                "which the format has no place for", path);
    if (c->rope_theta != L2C_THETA || c->norm_eps != L2C_EPS)
        ST_FAIL(ST_ERR_ARG, "cannot write '%s' as a llama2.c checkpoint: rope_theta %g and norm_eps %g, "
                "but run.c hard-codes rope_theta %g and norm_eps %g (export to safetensors or gguf instead)",
                path, (double)c->rope_theta, (double)c->norm_eps, (double)L2C_THETA, (double)L2C_EPS);
    return ST_OK;
}

st_err st_llama2c_write(const char *path, const st_config *cfg, const float *params)
{
    ST_TRY(check_writable(path, cfg));
    st_layout lay;
    ST_TRY(st_layout_init(&lay, cfg, 1, 0));

    st_err e = ST_OK;
    char *tmp = NULL;
    float *scratch = NULL;
    dst_file f = {NULL, NULL};
    const st_tensor *wq = st_layout_find(&lay, "model.layers.0.self_attn.q_proj.weight");
    size_t n_scratch = wq->numel;
    if (n_scratch < (size_t)lay.head_dim) n_scratch = (size_t)lay.head_dim; /* one freq_cis row */
    scratch = malloc(n_scratch * sizeof *scratch);
    if ((tmp = malloc(strlen(path) + 5))) sprintf(tmp, "%s.tmp", path);
    if (!scratch || !tmp) {
        e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory writing '%s'", path);
        goto done;
    }
    f.path = tmp;
    f.fp = fopen(tmp, "wb");
    if (!f.fp) {
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot create '%s': %s", tmp, strerror(errno));
        goto done;
    }
    ST_TRY_GOTO(e, write_tensors(&f, &lay, params, scratch), done);
    /* a crash before the rename leaves any older file at path untouched */
    if (fflush(f.fp) || fsync(fileno(f.fp))) {
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "flushing '%s': %s", tmp, strerror(errno));
        goto done;
    }
    int rc = fclose(f.fp);
    f.fp = NULL;
    if (rc) {
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "closing '%s': %s", tmp, strerror(errno));
        goto done;
    }
    if (rename(tmp, path)) {
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "renaming '%s' to '%s': %s",
                         tmp, path, strerror(errno));
        goto done;
    }
done:
    if (f.fp) fclose(f.fp);
    if (e && tmp) unlink(tmp);
    free(tmp);
    free(scratch);
    st_layout_free(&lay);
    return e;
}
