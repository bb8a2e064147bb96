/* llmc.c: llm.c GPT-2 checkpoints in (the format is in llmc.h).
 *
 * As in llama2c.c, the header is never trusted: sizes are overflow-checked
 * and the file size must be exactly what the header implies before anything
 * is allocated. Tensors stream with pread straight into the flat buffer (bf16
 * through a small bounce buffer).
 */
#include "io/formats/llmc.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/params.h"
#include "io/binfile.h"
#include "io/formats/model_source.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "llm.c files are little-endian and this code reads them in place"
#endif

enum {
    LLMC_HEADER_INTS = 256,
    LLMC_MAGIC = 20240326,
    LLMC_FP32 = 3,
    LLMC_BF16 = 5,
    BF16_CHUNK = 1 << 16,   /* bf16 values converted per pread */
};

/* The per-layer kinds after wte and wpe, in file order, each stored for every
 * layer before the next starts; a fused kind fills its parts one after another
 * (qkvw rows: q then k then v). Then lnfw and lnfb. */
static const struct {
    const char *llmc;       /* llm.c's name, for messages */
    const char *part[3];    /* HF names after "model.layers.<l>." */
} layer_order[] = {
    {"ln1w", {"input_layernorm.weight"}},                                        /* (L, C) */
    {"ln1b", {"input_layernorm.bias"}},                                          /* (L, C) */
    {"qkvw", {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"}}, /* (L, 3C, C) */
    {"qkvb", {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}},       /* (L, 3C) */
    {"attprojw", {"self_attn.o_proj.weight"}},                                   /* (L, C, C) */
    {"attprojb", {"self_attn.o_proj.bias"}},                                     /* (L, C) */
    {"ln2w", {"post_attention_layernorm.weight"}},                               /* (L, C) */
    {"ln2b", {"post_attention_layernorm.bias"}},                                 /* (L, C) */
    {"fcw", {"mlp.up_proj.weight"}},                                             /* (L, 4C, C) */
    {"fcb", {"mlp.up_proj.bias"}},                                               /* (L, 4C) */
    {"fcprojw", {"mlp.down_proj.weight"}},                                       /* (L, C, 4C) */
    {"fcprojb", {"mlp.down_proj.bias"}},                                         /* (L, C) */
};
enum { N_LAYER_KINDS = sizeof layer_order / sizeof layer_order[0] };

/* ------------------------------------------------------------------------- */
/* header */


#define HDR_FMT "maxT %d, V %d, L %d, NH %d, C %d, Vp %d"
#define HDR_ARGS(h) h[2], h[3], h[4], h[5], h[6], h[7]

/* Elements (of either width) a file with this header holds after the header. */
static int64_t expected_elements(const int32_t *h, int *ovf)
{
    const int64_t maxT = h[2], L = h[4], C = h[6], Vp = h[7];
    const int64_t CC = st_smul(C, C, ovf);
    int64_t layer = st_smul(6, C, ovf);                           /* ln1w ln1b attprojb ln2w ln2b fcprojb */
    layer = st_sadd(layer, st_smul(3, C, ovf), ovf);                 /* qkvb */
    layer = st_sadd(layer, st_smul(4, C, ovf), ovf);                 /* fcb */
    layer = st_sadd(layer, st_smul(3, CC, ovf), ovf);                /* qkvw */
    layer = st_sadd(layer, CC, ovf);                              /* attprojw */
    layer = st_sadd(layer, st_smul(8, CC, ovf), ovf);                /* fcw, fcprojw */
    int64_t n = st_smul(st_sadd(Vp, maxT, ovf), C, ovf);             /* wte, wpe */
    n = st_sadd(n, st_smul(L, layer, ovf), ovf);
    return st_sadd(n, st_smul(2, C, ovf), ovf);                      /* lnfw, lnfb */
}

/* Check the header of a file of file_bytes bytes; gives the config and the element width. */
static st_err header_to_config(const char *path, const int32_t *h, int64_t file_bytes, st_config *cfg,
                               int *elem_bytes)
{
    if (h[0] != LLMC_MAGIC)
        ST_FAIL(ST_ERR_FORMAT, "'%s' is not an llm.c GPT-2 checkpoint: magic is %d, expected %d",
                path, h[0], LLMC_MAGIC);
    if (h[1] != LLMC_FP32 && h[1] != LLMC_BF16)
        ST_FAIL(ST_ERR_FORMAT, "llm.c checkpoint '%s': version %d, expected %d (fp32) or %d (bf16); "
                "re-export it with a current llm.c train_gpt2.py", path, h[1], LLMC_FP32, LLMC_BF16);
    static const char *const field[8] = {"magic", "version", "maxT", "V", "L", "NH", "C", "Vp"};
    for (int i = 2; i < 8; i++)
        if (h[i] <= 0)
            ST_FAIL(ST_ERR_FORMAT, "llm.c checkpoint '%s': header field %s (header[%d]) is %d, expected a "
                    "positive number (header: " HDR_FMT ")", path, field[i], i, h[i], HDR_ARGS(h));
    if (h[7] < h[3])
        ST_FAIL(ST_ERR_FORMAT, "llm.c checkpoint '%s': padded vocabulary Vp %d is smaller than V %d",
                path, h[7], h[3]);
    if (h[6] % h[5])
        ST_FAIL(ST_ERR_FORMAT, "llm.c checkpoint '%s': header field C %d is not a multiple of NH %d",
                path, h[6], h[5]);
    if (h[6] > INT32_MAX / 4)
        ST_FAIL(ST_ERR_FORMAT, "llm.c checkpoint '%s': header field C %d is too large (the MLP width 4C "
                "must fit in 32 bits)", path, h[6]);

    int ovf = 0;
    const int esize = h[1] == LLMC_FP32 ? 4 : 2;
    const int64_t want = st_sadd(LLMC_HEADER_INTS * 4, st_smul(expected_elements(h, &ovf), esize, &ovf), &ovf);
    if (ovf)
        ST_FAIL(ST_ERR_FORMAT, "llm.c checkpoint '%s': header sizes overflow 64 bits (" HDR_FMT "); "
                "the header is corrupt", path, HDR_ARGS(h));
    if (file_bytes != want)
        ST_FAIL(ST_ERR_FORMAT, "llm.c checkpoint '%s' is %lld bytes; its header (version %d, " HDR_FMT ") "
                "needs exactly %lld: the file is truncated, has trailing bytes, or is corrupt",
                path, (long long)file_bytes, h[1], HDR_ARGS(h), (long long)want);

    memset(cfg, 0, sizeof *cfg);
    cfg->family = ST_FAMILY_GPT2;
    cfg->max_seq = h[2];
    cfg->vocab_size = h[3];
    cfg->n_layer = h[4];
    cfg->n_head = h[5];
    cfg->n_kv_head = h[5];
    cfg->d_model = h[6];
    cfg->d_ff = 4 * h[6];
    cfg->norm_eps = 1e-5f;
    cfg->rope_theta = 0.0f;  /* learned positions, no RoPE */
    cfg->tied_embeddings = 1;
    cfg->qkv_bias = 0;       /* llama-only flag; gpt2 always has biases */
    *elem_bytes = esize;
    return ST_OK;
}

/* ------------------------------------------------------------------------- */
/* reading */

/* The open file and where each unit's tensor starts. */
typedef struct {
    int fd;
    char *path;
    int elem_bytes;     /* 4 (fp32) or 2 (bf16) */
    int64_t *off;       /* (n_units) byte offset of the unit's tensor */
    int n_cap;
} llmc_file;

/* bf16 is the top half of an fp32, so widening is exact. */
static float bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* n values of the file's width at byte off into dst as fp32, refusing NaN and Inf. */
static st_err read_values(const llmc_file *f, int64_t off, float *dst, size_t n, const char *what)
{
    if (f->elem_bytes == 4) {
        ST_TRY(st_pread_all(f->fd, "llm.c", f->path, &off, dst, n * sizeof *dst, what));
    } else {
        uint16_t *bounce = malloc(BF16_CHUNK * sizeof *bounce);
        if (!bounce) ST_FAIL(ST_ERR_MEM, "out of memory");
        st_err e = ST_OK;
        for (size_t done = 0; done < n && !e;) {
            size_t m = n - done < BF16_CHUNK ? n - done : BF16_CHUNK;
            e = st_pread_all(f->fd, "llm.c", f->path, &off, bounce, m * sizeof *bounce, what);
            for (size_t i = 0; !e && i < m; i++) dst[done + i] = bf16_to_f32(bounce[i]);
            done += m;
        }
        free(bounce);
        ST_TRY(e);
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            ST_FAIL(ST_ERR_FORMAT, "llm.c checkpoint '%s': %s element %zu is %g; the checkpoint is corrupt",
                    f->path, what, i, (double)dst[i]);
    return ST_OK;
}

static st_err llmc_read_unit(st_model_source *s, int u, float *const out[ST_SRC_MAX_DST])
{
    const llmc_file *f = s->impl;
    const st_tensor *t = s->units[u].dst[0];
    char what[160];
    snprintf(what, sizeof what, "tensor %s", t->name);
    return read_values(f, f->off[u], out[0], t->numel, what);
}

static void llmc_close(st_model_source *s)
{
    llmc_file *f = s->impl;
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    free(f->off);
    free(f);
    s->impl = NULL;
}

/* The tensor called name as the next unit, at byte *off; advances *off. */
static st_err add(st_model_source *s, llmc_file *f, const char *name, int64_t *off)
{
    if (s->n_units == f->n_cap) {
        int cap = f->n_cap ? 2 * f->n_cap : 64;
        int64_t *o = realloc(f->off, (size_t)cap * sizeof *o);
        if (!o) ST_FAIL(ST_ERR_MEM, "out of memory for the tensor list of '%s'", f->path);
        f->off = o;
        f->n_cap = cap;
    }
    const char *names[1] = {name};
    ST_TRY(st_model_source_add_unit(s, names, 1));
    f->off[s->n_units - 1] = *off;
    *off += (int64_t)s->units[s->n_units - 1].dst[0]->numel * f->elem_bytes;
    return ST_OK;
}

/* One unit per tensor in file order (the header has been checked against the
 * file size, so every offset is inside the file). */
static st_err llmc_units(st_model_source *s, llmc_file *f, int padded_vocab)
{
    const st_config *c = &s->cfg;
    int64_t off = LLMC_HEADER_INTS * 4;
    ST_TRY(add(s, f, "model.embed_tokens.weight", &off));
    /* rows V..Vp-1 of wte are GPU padding, never used as tokens */
    off += (int64_t)(padded_vocab - c->vocab_size) * c->d_model * f->elem_bytes;
    ST_TRY(add(s, f, "model.embed_positions.weight", &off));
    char name[128];
    for (int k = 0; k < N_LAYER_KINDS; k++)
        for (int l = 0; l < c->n_layer; l++)
            for (int p = 0; p < 3 && layer_order[k].part[p]; p++) {
                snprintf(name, sizeof name, "model.layers.%d.%s", l, layer_order[k].part[p]);
                ST_TRY(add(s, f, name, &off));
            }
    ST_TRY(add(s, f, "model.norm.weight", &off));
    ST_TRY(add(s, f, "model.norm.bias", &off));
    return ST_OK;
}

st_err st_llmc_open(st_model_source *s, const char *path)
{
    s->format = "llmc";
    llmc_file *f = calloc(1, sizeof *f);
    if (!f) ST_FAIL(ST_ERR_MEM, "out of memory");
    f->fd = -1;
    s->impl = f;
    s->close_impl = llmc_close;
    s->read = llmc_read_unit;
    f->path = strdup(path);
    if (!f->path) ST_FAIL(ST_ERR_MEM, "out of memory");
    int64_t size;
    ST_TRY(st_open_checkpoint_file("llm.c", path, LLMC_HEADER_INTS * 4, &f->fd, &size));
    int32_t h[LLMC_HEADER_INTS];
    int64_t off = 0;
    ST_TRY(st_pread_all(f->fd, "llm.c", path, &off, h, sizeof h, "the header"));
    ST_TRY(header_to_config(path, h, size, &s->cfg, &f->elem_bytes));
    ST_TRY(st_layout_init(&s->lay, &s->cfg, 1, 0));
    ST_TRY(llmc_units(s, f, h[7]));
    return ST_OK;
}

