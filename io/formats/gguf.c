/* gguf.c: GGUF reading (validated), writing (streamed), and the export of a
 * shardtune model with its tokenizer for llama.cpp. See gguf.h. */
#include "io/formats/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/params.h"
#include "io/formats/llama2c.h"
#include "io/formats/safetensors.h"
#include "io/tok/tok_internal.h"   /* token texts, merges, scores: tokenizer.h has no accessors for them */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c assumes a little-endian host (the files it writes are little-endian)"
#endif

/* Bytes of one scalar of a metadata type; 0 for string and array. */
static size_t kv_type_size(uint32_t t)
{
    switch (t) {
    case ST_GGUF_UINT8: case ST_GGUF_INT8: case ST_GGUF_BOOL: return 1;
    case ST_GGUF_UINT16: case ST_GGUF_INT16: return 2;
    case ST_GGUF_UINT32: case ST_GGUF_INT32: case ST_GGUF_FLOAT32: return 4;
    case ST_GGUF_UINT64: case ST_GGUF_INT64: case ST_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Bytes per element of the ggml tensor types handled here; 0 otherwise. */
static size_t ggml_type_size(uint32_t t)
{
    switch (t) {
    case ST_GGML_F32: case ST_GGML_I32: return 4;
    case ST_GGML_F16: case ST_GGML_BF16: case ST_GGML_I16: return 2;
    case ST_GGML_I8: return 1;
    case ST_GGML_I64: case ST_GGML_F64: return 8;
    default: return 0;
    }
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* ==== reading ============================================================== */

typedef struct {
    const uint8_t *p;
    size_t n, pos;
    const char *name;
} cursor;

static st_err need(cursor *c, uint64_t k, const char *what)
{
    if (k > c->n - c->pos)
        ST_FAIL(ST_ERR_FORMAT, "%s: %s at byte %zu needs %llu bytes but only %zu remain (truncated or corrupt)",
                c->name, what, c->pos, (unsigned long long)k, c->n - c->pos);
    return ST_OK;
}

static uint64_t get_le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static st_err rd_u32(cursor *c, uint32_t *v, const char *what)
{
    ST_TRY(need(c, 4, what));
    *v = (uint32_t)get_le(c->p + c->pos, 4);
    c->pos += 4;
    return ST_OK;
}

static st_err rd_u64(cursor *c, uint64_t *v, const char *what)
{
    ST_TRY(need(c, 8, what));
    *v = get_le(c->p + c->pos, 8);
    c->pos += 8;
    return ST_OK;
}

static st_err rd_str(cursor *c, const uint8_t **s, uint64_t *len, const char *what)
{
    ST_TRY(rd_u64(c, len, what));
    ST_TRY(need(c, *len, what));
    *s = c->p + c->pos;
    c->pos += (size_t)*len;
    return ST_OK;
}

static char *copy_str(const uint8_t *s, uint64_t len)
{
    char *out = malloc((size_t)len + 1);
    if (out) {
        memcpy(out, s, (size_t)len);
        out[len] = '\0';
    }
    return out;
}

/* One metadata value of type t at the cursor; kv->val, n, arr_type, str_off set. */
static st_err parse_value(cursor *c, st_gguf_kv *kv, const char *key)
{
    uint32_t t = kv->type;
    kv->n = 1;
    if (t == ST_GGUF_STRING) {
        const uint8_t *s;
        uint64_t len;
        kv->val = c->p + c->pos;
        ST_TRY(rd_str(c, &s, &len, key));
        return ST_OK;
    }
    if (t != ST_GGUF_ARRAY) {
        size_t sz = kv_type_size(t);
        if (!sz) ST_FAIL(ST_ERR_FORMAT, "%s: key \"%s\" has unknown value type %u", c->name, key, t);
        ST_TRY(need(c, sz, key));
        kv->val = c->p + c->pos;
        c->pos += sz;
        return ST_OK;
    }
    ST_TRY(rd_u32(c, &kv->arr_type, key));
    ST_TRY(rd_u64(c, &kv->n, key));
    uint32_t et = kv->arr_type;
    if (et == ST_GGUF_ARRAY) ST_FAIL(ST_ERR_FORMAT, "%s: key \"%s\" is an array of arrays (not supported)", c->name, key);
    if (et != ST_GGUF_STRING && !kv_type_size(et))
        ST_FAIL(ST_ERR_FORMAT, "%s: key \"%s\" is an array of unknown type %u", c->name, key, et);
    size_t esz = et == ST_GGUF_STRING ? 8 : kv_type_size(et);   /* strings: at least their length */
    if (kv->n > (c->n - c->pos) / esz)
        ST_FAIL(ST_ERR_FORMAT, "%s: key \"%s\" claims %llu array elements, more than the %zu bytes left hold",
                c->name, key, (unsigned long long)kv->n, c->n - c->pos);
    kv->val = c->p + c->pos;
    if (et != ST_GGUF_STRING) {
        c->pos += (size_t)kv->n * esz;
        return ST_OK;
    }
    kv->str_off = malloc(((size_t)kv->n + 1) * sizeof *kv->str_off);
    if (!kv->str_off) ST_FAIL(ST_ERR_MEM, "out of memory indexing %llu strings", (unsigned long long)kv->n);
    for (uint64_t i = 0; i < kv->n; i++) {
        const uint8_t *s;
        uint64_t len;
        kv->str_off[i] = (uint64_t)(c->p + c->pos - kv->val);
        ST_TRY(rd_str(c, &s, &len, key));
    }
    return ST_OK;
}

static st_err parse_kv(cursor *c, st_gguf_kv *kv, uint64_t i)
{
    const uint8_t *k;
    uint64_t klen;
    char what[48];
    snprintf(what, sizeof what, "metadata key %llu", (unsigned long long)i);
    ST_TRY(rd_str(c, &k, &klen, what));
    if (klen == 0 || klen > 65535) ST_FAIL(ST_ERR_FORMAT, "%s: %s has length %llu (1..65535)", c->name, what,
                                           (unsigned long long)klen);
    for (uint64_t j = 0; j < klen; j++)
        if (k[j] < 0x20 || k[j] > 0x7e)
            ST_FAIL(ST_ERR_FORMAT, "%s: %s is not printable ASCII (byte %llu is 0x%02x)", c->name, what,
                    (unsigned long long)j, k[j]);
    kv->key = copy_str(k, klen);
    if (!kv->key) ST_FAIL(ST_ERR_MEM, "out of memory copying a key");
    ST_TRY(rd_u32(c, &kv->type, kv->key));
    ST_TRY(parse_value(c, kv, kv->key));
    return ST_OK;
}

static st_err parse_tensor_info(cursor *c, st_gguf_tensor *t, uint64_t i)
{
    const uint8_t *s;
    uint64_t len;
    char what[48];
    snprintf(what, sizeof what, "tensor info %llu", (unsigned long long)i);
    ST_TRY(rd_str(c, &s, &len, what));
    if (len == 0 || len > ST_GGUF_MAX_NAME || memchr(s, 0, (size_t)len))
        ST_FAIL(ST_ERR_FORMAT, "%s: %s: name of %llu bytes (1..%d, no NUL)", c->name, what, (unsigned long long)len,
                ST_GGUF_MAX_NAME);
    t->name = copy_str(s, len);
    if (!t->name) ST_FAIL(ST_ERR_MEM, "out of memory copying a tensor name");
    ST_TRY(rd_u32(c, &t->ndim, t->name));
    if (t->ndim < 1 || t->ndim > ST_GGUF_MAX_DIMS)
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\" has %u dimensions (1..%d)", c->name, t->name, t->ndim,
                ST_GGUF_MAX_DIMS);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < t->ndim; d++) {
        uint64_t v;
        ST_TRY(rd_u64(c, &v, t->name));
        if (v < 1 || v > (uint64_t)INT64_MAX / numel)
            ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": dimension %u is %llu (zero, or the element count "
                    "overflows)", c->name, t->name, d, (unsigned long long)v);
        t->dims[d] = (int64_t)v;
        numel *= v;
    }
    ST_TRY(rd_u32(c, &t->type, t->name));
    size_t tsz = ggml_type_size(t->type);
    if (!tsz)
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\" has ggml type %u, which this reader does not handle "
                "(f32, f16, bf16, f64, i8..i64)", c->name, t->name, t->type);
    if (numel > (uint64_t)INT64_MAX / tsz)
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": byte size overflows", c->name, t->name);
    t->nbytes = numel * tsz;
    ST_TRY(rd_u64(c, &t->offset, t->name));
    return ST_OK;
}

static int cmp_kv(const void *a, const void *b, void *base)
{
    const st_gguf_kv *kv = base;
    return strcmp(kv[*(const uint64_t *)a].key, kv[*(const uint64_t *)b].key);
}

static int cmp_tname(const void *a, const void *b, void *base)
{
    const st_gguf_tensor *t = base;
    return strcmp(t[*(const uint64_t *)a].name, t[*(const uint64_t *)b].name);
}

static int cmp_toff(const void *a, const void *b, void *base)
{
    const st_gguf_tensor *t = base, *x = &t[*(const uint64_t *)a], *y = &t[*(const uint64_t *)b];
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Sorted indices 0..n-1 of an array, by cmp. */
static st_err sorted_index(uint64_t **out, uint64_t n, int (*cmp)(const void *, const void *, void *), void *base)
{
    uint64_t *ix = malloc(((size_t)n + 1) * sizeof *ix);
    if (!ix) ST_FAIL(ST_ERR_MEM, "out of memory sorting %llu entries", (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) ix[i] = i;
    qsort_r(ix, (size_t)n, sizeof *ix, cmp, base);
    *out = ix;
    return ST_OK;
}

/* Unique keys; general.alignment a u32 power of two. */
static st_err check_kvs(st_gguf *g, const char *name)
{
    uint64_t *ix;
    ST_TRY(sorted_index(&ix, g->n_kv, cmp_kv, g->kv));
    for (uint64_t i = 1; i < g->n_kv; i++)
        if (!strcmp(g->kv[ix[i]].key, g->kv[ix[i - 1]].key)) {
            const char *dup = g->kv[ix[i]].key;
            free(ix);
            ST_FAIL(ST_ERR_FORMAT, "%s: metadata key \"%s\" appears twice", name, dup);
        }
    free(ix);
    g->alignment = ST_GGUF_DEFAULT_ALIGNMENT;
    const st_gguf_kv *a = st_gguf_find(g, "general.alignment");
    if (a) {
        uint32_t v = a->type == ST_GGUF_UINT32 ? (uint32_t)get_le(a->val, 4) : 0;
        if (!v || (v & (v - 1)))
            ST_FAIL(ST_ERR_FORMAT, "%s: general.alignment must be a u32 power of two", name);
        g->alignment = v;
    }
    return ST_OK;
}

/* Unique names; data aligned, inside the file, not overlapping. */
static st_err check_tensors(st_gguf *g, const char *name)
{
    uint64_t room = g->size - g->data_start, *ix;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        st_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment)
            ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\" data offset %llu is not a multiple of the alignment %u", name,
                    t->name, (unsigned long long)t->offset, g->alignment);
        if (t->offset > room || t->nbytes > room - t->offset)
            ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\" data [%llu, +%llu) runs past the %llu data bytes of the file",
                    name, t->name, (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                    (unsigned long long)room);
        t->data = g->buf + g->data_start + t->offset;
    }
    ST_TRY(sorted_index(&ix, g->n_tensors, cmp_tname, g->tensors));
    st_err e = ST_OK;
    for (uint64_t i = 1; i < g->n_tensors && !e; i++)
        if (!strcmp(g->tensors[ix[i]].name, g->tensors[ix[i - 1]].name))
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s: tensor \"%s\" appears twice", name,
                             g->tensors[ix[i]].name);
    free(ix);
    if (e) return e;
    ST_TRY(sorted_index(&ix, g->n_tensors, cmp_toff, g->tensors));
    for (uint64_t i = 1; i < g->n_tensors && !e; i++) {
        const st_gguf_tensor *a = &g->tensors[ix[i - 1]], *b = &g->tensors[ix[i]];
        if (a->offset + a->nbytes > b->offset)
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s: tensors \"%s\" and \"%s\" overlap",
                             name, a->name, b->name);
    }
    free(ix);
    return e;
}

static st_err parse_all(st_gguf *g, cursor *c)
{
    uint32_t magic;
    uint64_t nt, nkv;
    ST_TRY(rd_u32(c, &magic, "the magic"));
    if (magic != ST_GGUF_MAGIC) ST_FAIL(ST_ERR_FORMAT, "%s does not start with \"GGUF\" (not a GGUF file)", c->name);
    ST_TRY(rd_u32(c, &g->version, "the version"));
    if (g->version != 2 && g->version != 3)
        ST_FAIL(ST_ERR_FORMAT, "%s: GGUF version %u (this reader knows 2 and 3)", c->name, g->version);
    ST_TRY(rd_u64(c, &nt, "the tensor count"));
    ST_TRY(rd_u64(c, &nkv, "the metadata count"));
    /* each entry needs at least 14 (kv) or 33 (tensor info) bytes: bound allocations by the file */
    if (nkv > (c->n - c->pos) / 14 || nt > (c->n - c->pos) / 33)
        ST_FAIL(ST_ERR_FORMAT, "%s: %llu metadata entries and %llu tensors cannot fit in %zu bytes", c->name,
                (unsigned long long)nkv, (unsigned long long)nt, c->n);
    g->kv = calloc((size_t)nkv + 1, sizeof *g->kv);
    g->tensors = calloc((size_t)nt + 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) ST_FAIL(ST_ERR_MEM, "out of memory for the GGUF index");
    for (uint64_t i = 0; i < nkv; i++) {
        g->n_kv = i + 1;          /* counted first, so close frees a half-parsed entry */
        ST_TRY(parse_kv(c, &g->kv[i], i));
    }
    ST_TRY(check_kvs(g, c->name));
    for (uint64_t i = 0; i < nt; i++) {
        g->n_tensors = i + 1;
        ST_TRY(parse_tensor_info(c, &g->tensors[i], i));
    }
    g->data_start = align_up(c->pos, g->alignment);
    if (g->data_start > c->n) {
        if (nt) ST_FAIL(ST_ERR_FORMAT, "%s: the data section would start at byte %llu, past the end (%zu bytes)",
                        c->name, (unsigned long long)g->data_start, c->n);
        g->data_start = c->n;
    }
    ST_TRY(check_tensors(g, c->name));
    return ST_OK;
}

st_err st_gguf_parse(st_gguf *g, const uint8_t *buf, size_t size, const char *name)
{
    memset(g, 0, sizeof *g);
    g->buf = buf;
    g->size = size;
    cursor c = {buf, size, 0, name ? name : "gguf"};
    st_err e = parse_all(g, &c);
    if (e) {
        st_error_trace(__FILE__, __LINE__, __func__);
        st_gguf_close(g);
    }
    return e;
}

st_err st_gguf_open(st_gguf *g, const char *path)
{
    memset(g, 0, sizeof *g);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) ST_FAIL(ST_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size <= 0) {
        close(fd);
        ST_FAIL(ST_ERR_FORMAT, "%s is empty or cannot be read", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) ST_FAIL(ST_ERR_IO, "cannot map %s: %s", path, strerror(errno));
    st_err e = st_gguf_parse(g, map, size, path);
    if (e) {
        munmap(map, size);
        st_error_trace(__FILE__, __LINE__, __func__);
        return e;
    }
    g->map = map;
    return ST_OK;
}

void st_gguf_close(st_gguf *g)
{
    for (uint64_t i = 0; g->kv && i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].str_off);
    }
    for (uint64_t i = 0; g->tensors && i < g->n_tensors; i++) free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    if (g->map) munmap(g->map, g->size);
    memset(g, 0, sizeof *g);
}

const st_gguf_kv *st_gguf_find(const st_gguf *g, const char *key)
{
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && !strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const st_gguf_tensor *st_gguf_find_tensor(const st_gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name && !strcmp(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

static st_err typed(const st_gguf *g, const char *key, uint32_t type, const st_gguf_kv **kv)
{
    *kv = st_gguf_find(g, key);
    if (!*kv) ST_FAIL(ST_ERR_FORMAT, "GGUF metadata key \"%s\" is missing", key);
    if ((*kv)->type != type)
        ST_FAIL(ST_ERR_FORMAT, "GGUF metadata key \"%s\" has type %u, expected %u", key, (*kv)->type, type);
    return ST_OK;
}

st_err st_gguf_get_u32(const st_gguf *g, const char *key, uint32_t *v)
{
    const st_gguf_kv *kv;
    ST_TRY(typed(g, key, ST_GGUF_UINT32, &kv));
    *v = (uint32_t)get_le(kv->val, 4);
    return ST_OK;
}

st_err st_gguf_get_f32(const st_gguf *g, const char *key, float *v)
{
    const st_gguf_kv *kv;
    ST_TRY(typed(g, key, ST_GGUF_FLOAT32, &kv));
    memcpy(v, kv->val, 4);
    return ST_OK;
}

st_err st_gguf_get_str(const st_gguf *g, const char *key, const char **s, uint64_t *len)
{
    const st_gguf_kv *kv;
    ST_TRY(typed(g, key, ST_GGUF_STRING, &kv));
    *len = get_le(kv->val, 8);
    *s = (const char *)kv->val + 8;
    return ST_OK;
}

static st_err element(const st_gguf_kv *kv, uint64_t i, uint32_t type, const uint8_t **p)
{
    if (kv->type != ST_GGUF_ARRAY || kv->arr_type != type)
        ST_FAIL(ST_ERR_FORMAT, "GGUF key \"%s\" is not an array of type %u", kv->key, type);
    if (i >= kv->n)
        ST_FAIL(ST_ERR_ARG, "GGUF key \"%s\": element %llu of %llu", kv->key, (unsigned long long)i,
                (unsigned long long)kv->n);
    *p = type == ST_GGUF_STRING ? kv->val + kv->str_off[i] : kv->val + i * kv_type_size(type);
    return ST_OK;
}

st_err st_gguf_arr_str(const st_gguf_kv *kv, uint64_t i, const char **s, uint64_t *len)
{
    const uint8_t *p = NULL;
    ST_TRY(element(kv, i, ST_GGUF_STRING, &p));
    *len = get_le(p, 8);
    *s = (const char *)p + 8;
    return ST_OK;
}

st_err st_gguf_arr_i32(const st_gguf_kv *kv, uint64_t i, int32_t *v)
{
    const uint8_t *p = NULL;
    ST_TRY(element(kv, i, ST_GGUF_INT32, &p));
    *v = (int32_t)(uint32_t)get_le(p, 4);
    return ST_OK;
}

st_err st_gguf_arr_f32(const st_gguf_kv *kv, uint64_t i, float *v)
{
    const uint8_t *p = NULL;
    ST_TRY(element(kv, i, ST_GGUF_FLOAT32, &p));
    memcpy(v, p, 4);
    return ST_OK;
}

/* ==== writing ============================================================== */

typedef struct {
    char name[ST_GGUF_MAX_NAME + 1];
    uint32_t type;
    int ndim;
    int64_t shape[ST_GGUF_MAX_DIMS];    /* row-major */
    uint64_t numel, offset;
} wtensor;

struct st_gguf_writer {
    uint8_t *kv;                        /* serialised metadata */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    wtensor *t;
    int n_t, cap_t, next;
    uint32_t alignment;
    char *path;
    FILE *fp;
    uint64_t pos;                       /* bytes written so far */
};

st_err st_gguf_writer_new(st_gguf_writer **w)
{
    *w = calloc(1, sizeof **w);
    if (!*w) ST_FAIL(ST_ERR_MEM, "out of memory for a GGUF writer");
    (*w)->alignment = ST_GGUF_DEFAULT_ALIGNMENT;
    return ST_OK;
}

void st_gguf_writer_free(st_gguf_writer *w)
{
    if (!w) return;
    if (w->fp) {
        fclose(w->fp);
        unlink(w->path);
    }
    free(w->kv);
    free(w->t);
    free(w->path);
    free(w);
}

static st_err put(st_gguf_writer *w, const void *p, size_t n)
{
    if (n > w->kv_cap - w->kv_len) {
        size_t cap = w->kv_cap ? w->kv_cap : 4096;
        while (cap - w->kv_len < n) cap *= 2;
        uint8_t *b = realloc(w->kv, cap);
        if (!b) ST_FAIL(ST_ERR_MEM, "out of memory growing GGUF metadata to %zu bytes", cap);
        w->kv = b;
        w->kv_cap = cap;
    }
    memcpy(w->kv + w->kv_len, p, n);
    w->kv_len += n;
    return ST_OK;
}

static st_err put_le(st_gguf_writer *w, uint64_t v, int bytes)
{
    uint8_t b[8];
    for (int i = 0; i < bytes; i++) b[i] = (uint8_t)(v >> (8 * i));
    return put(w, b, (size_t)bytes);
}

static st_err put_str(st_gguf_writer *w, const char *s, size_t len)
{
    ST_TRY(put_le(w, len, 8));
    return put(w, s, len);
}

static st_err put_key(st_gguf_writer *w, const char *key, uint32_t type)
{
    ST_TRY(put_str(w, key, strlen(key)));
    ST_TRY(put_le(w, type, 4));
    w->n_kv++;
    return ST_OK;
}

st_err st_gguf_set_u32(st_gguf_writer *w, const char *key, uint32_t v)
{
    if (!strcmp(key, "general.alignment")) {
        if (!v || (v & (v - 1))) ST_FAIL(ST_ERR_ARG, "general.alignment %u is not a power of two", v);
        w->alignment = v;
    }
    ST_TRY(put_key(w, key, ST_GGUF_UINT32));
    return put_le(w, v, 4);
}

st_err st_gguf_set_f32(st_gguf_writer *w, const char *key, float v)
{
    ST_TRY(put_key(w, key, ST_GGUF_FLOAT32));
    return put(w, &v, 4);
}

st_err st_gguf_set_bool(st_gguf_writer *w, const char *key, int v)
{
    ST_TRY(put_key(w, key, ST_GGUF_BOOL));
    return put_le(w, v ? 1 : 0, 1);
}

st_err st_gguf_set_str(st_gguf_writer *w, const char *key, const char *s)
{
    ST_TRY(put_key(w, key, ST_GGUF_STRING));
    return put_str(w, s, strlen(s));
}

static st_err put_arr_head(st_gguf_writer *w, const char *key, uint32_t type, uint64_t n)
{
    ST_TRY(put_key(w, key, ST_GGUF_ARRAY));
    ST_TRY(put_le(w, type, 4));
    return put_le(w, n, 8);
}

st_err st_gguf_set_arr_str(st_gguf_writer *w, const char *key, const char *const *s, const size_t *len,
                           uint64_t n)
{
    ST_TRY(put_arr_head(w, key, ST_GGUF_STRING, n));
    for (uint64_t i = 0; i < n; i++) ST_TRY(put_str(w, s[i], len ? len[i] : strlen(s[i])));
    return ST_OK;
}

st_err st_gguf_set_arr_i32(st_gguf_writer *w, const char *key, const int32_t *v, uint64_t n)
{
    ST_TRY(put_arr_head(w, key, ST_GGUF_INT32, n));
    return put(w, v, (size_t)n * 4);
}

st_err st_gguf_set_arr_f32(st_gguf_writer *w, const char *key, const float *v, uint64_t n)
{
    ST_TRY(put_arr_head(w, key, ST_GGUF_FLOAT32, n));
    return put(w, v, (size_t)n * 4);
}

st_err st_gguf_add_tensor(st_gguf_writer *w, const char *name, uint32_t ggml_type, int ndim,
                          const int64_t *shape)
{
    if (strlen(name) > ST_GGUF_MAX_NAME) ST_FAIL(ST_ERR_ARG, "GGUF tensor name \"%s\" is over %d bytes", name,
                                                 ST_GGUF_MAX_NAME);
    if (ndim < 1 || ndim > ST_GGUF_MAX_DIMS) ST_FAIL(ST_ERR_ARG, "GGUF tensor \"%s\": %d dims", name, ndim);
    if (ggml_type != ST_GGML_F32 && ggml_type != ST_GGML_F16 && ggml_type != ST_GGML_BF16)
        ST_FAIL(ST_ERR_ARG, "GGUF tensor \"%s\": the writer takes f32, f16 or bf16, not type %u", name, ggml_type);
    if (w->n_t == w->cap_t) {
        int cap = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) ST_FAIL(ST_ERR_MEM, "out of memory for GGUF tensor infos");
        w->t = t;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = ggml_type;
    t->ndim = ndim;
    t->numel = 1;
    for (int d = 0; d < ndim; d++) {
        t->shape[d] = shape[d];
        t->numel *= (uint64_t)shape[d];
    }
    return ST_OK;
}

static st_err fwrite_all(st_gguf_writer *w, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, w->fp) != n) ST_FAIL(ST_ERR_IO, "writing %s: %s", w->path, strerror(errno));
    w->pos += n;
    return ST_OK;
}

static st_err pad(st_gguf_writer *w)
{
    static const uint8_t zeros[256];
    uint64_t n = align_up(w->pos, w->alignment) - w->pos;
    while (n) {
        size_t k = n > sizeof zeros ? sizeof zeros : (size_t)n;
        ST_TRY(fwrite_all(w, zeros, k));
        n -= k;
    }
    return ST_OK;
}

/* Header, metadata and tensor infos (dims reversed: fastest first), padded. */
st_err st_gguf_write_begin(st_gguf_writer *w, const char *path)
{
    if (w->fp) ST_FAIL(ST_ERR_INTERNAL, "GGUF writer already started");
    w->path = strdup(path);
    if (!w->path) ST_FAIL(ST_ERR_MEM, "out of memory");
    size_t kv_len = w->kv_len;        /* tensor infos are appended to the same buffer */
    uint64_t off = 0;
    for (int i = 0; i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        t->offset = off;
        ST_TRY(put_str(w, t->name, strlen(t->name)));
        ST_TRY(put_le(w, (uint64_t)t->ndim, 4));
        for (int d = t->ndim - 1; d >= 0; d--) ST_TRY(put_le(w, (uint64_t)t->shape[d], 8));
        ST_TRY(put_le(w, t->type, 4));
        ST_TRY(put_le(w, off, 8));
        off = align_up(off + t->numel * ggml_type_size(t->type), w->alignment);
    }
    w->fp = fopen(path, "wb");
    if (!w->fp) {
        w->kv_len = kv_len;
        ST_FAIL(ST_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    }
    uint8_t head[24];
    uint64_t fields[4] = {ST_GGUF_MAGIC, ST_GGUF_VERSION, (uint64_t)w->n_t, w->n_kv};
    int sizes[4] = {4, 4, 8, 8}, at = 0;
    for (int f = 0; f < 4; f++)
        for (int b = 0; b < sizes[f]; b++) head[at++] = (uint8_t)(fields[f] >> (8 * b));
    ST_TRY(fwrite_all(w, head, sizeof head));
    ST_TRY(fwrite_all(w, w->kv, w->kv_len));
    w->kv_len = kv_len;
    ST_TRY(pad(w));
    w->pos = 0;                       /* from here on: offsets within the data section */
    return ST_OK;
}

st_err st_gguf_write_tensor(st_gguf_writer *w, const float *x)
{
    if (!w->fp || w->next >= w->n_t) ST_FAIL(ST_ERR_INTERNAL, "GGUF writer: no tensor left to write");
    const wtensor *t = &w->t[w->next];
    if (w->pos != t->offset) ST_FAIL(ST_ERR_INTERNAL, "GGUF writer: tensor \"%s\" lands at %llu, not %llu",
                                     t->name, (unsigned long long)w->pos, (unsigned long long)t->offset);
    if (t->type == ST_GGML_F32) {
        ST_TRY(fwrite_all(w, x, (size_t)t->numel * 4));
    } else {
        uint16_t buf[8192];
        for (uint64_t i = 0; i < t->numel;) {
            size_t k = t->numel - i < 8192 ? (size_t)(t->numel - i) : 8192;
            for (size_t j = 0; j < k; j++)
                buf[j] = t->type == ST_GGML_F16 ? st_f32_to_f16(x[i + j]) : st_f32_to_bf16(x[i + j]);
            ST_TRY(fwrite_all(w, buf, 2 * k));
            i += k;
        }
    }
    ST_TRY(pad(w));
    w->next++;
    return ST_OK;
}

st_err st_gguf_write_end(st_gguf_writer *w)
{
    if (!w->fp || w->next != w->n_t)
        ST_FAIL(ST_ERR_INTERNAL, "GGUF writer: %d of %d tensors written", w->next, w->n_t);
    if (fflush(w->fp) != 0 || fsync(fileno(w->fp)) != 0)
        ST_FAIL(ST_ERR_IO, "flushing %s: %s", w->path, strerror(errno));
    FILE *fp = w->fp;
    w->fp = NULL;
    if (fclose(fp) != 0) {
        unlink(w->path);
        ST_FAIL(ST_ERR_IO, "closing %s: %s", w->path, strerror(errno));
    }
    return ST_OK;
}

/* ==== the tokenizer as llama.cpp reads it ================================== */

typedef struct {
    char **s;          /* n_vocab malloc'd strings */
    size_t *len;
    int32_t *type;
    float *score;      /* llama2c only */
    int n;
    char **merge;      /* "a b" */
    size_t *merge_len;
    int n_merges;
} gguf_vocab;

static void vocab_free(gguf_vocab *v)
{
    for (int i = 0; v->s && i < v->n; i++) free(v->s[i]);
    for (int i = 0; v->merge && i < v->n_merges; i++) free(v->merge[i]);
    free(v->s), free(v->len), free(v->type), free(v->score), free(v->merge), free(v->merge_len);
    memset(v, 0, sizeof *v);
}

static st_err set_token(gguf_vocab *v, int i, const char *s, size_t len, int32_t type)
{
    v->s[i] = malloc(len + 1);
    if (!v->s[i]) ST_FAIL(ST_ERR_MEM, "out of memory copying token %d", i);
    memcpy(v->s[i], s, len);
    v->s[i][len] = '\0';
    v->len[i] = len;
    v->type[i] = type;
    return ST_OK;
}

/* llama2.c pieces keep sentencepiece's spaces as ' '; GGUF's "llama" model
 * wants the original U+2581 (3 bytes). */
static st_err set_sp_piece(gguf_vocab *v, int i, const char *s, size_t len, int32_t type)
{
    size_t spaces = 0;
    for (size_t k = 0; k < len; k++) spaces += s[k] == ' ';
    char *o = malloc(len + 2 * spaces + 1);
    if (!o) ST_FAIL(ST_ERR_MEM, "out of memory copying token %d", i);
    size_t m = 0;
    for (size_t k = 0; k < len; k++) {
        if (s[k] == ' ') o[m++] = (char)0xe2, o[m++] = (char)0x96, o[m++] = (char)0x81;
        else o[m++] = s[k];
    }
    o[m] = '\0';
    v->s[i] = o;
    v->len[i] = m;
    v->type[i] = type;
    return ST_OK;
}

static int is_byte_piece(const char *s, size_t len)
{
    return len == 6 && !memcmp(s, "<0x", 3) && s[5] == '>';
}

/* Token i of the tokenizer (i < t->n_vocab) in GGUF form. */
static st_err fill_token(gguf_vocab *v, const st_tokenizer *t, int i, const char bytechr[256][3])
{
    if (t->kind == ST_TOK_BYTE) {
        if (i < 256) return set_token(v, i, bytechr[i], strlen(bytechr[i]), ST_GGUF_TOK_NORMAL);
        return set_token(v, i, t->text[i], t->text_len[i], ST_GGUF_TOK_CONTROL);
    }
    if (t->kind == ST_TOK_LLAMA2C) {
        static const char *const special[3] = {"<unk>", "<s>", "</s>"};
        if (i < 3) return set_token(v, i, special[i], strlen(special[i]),
                                    i == 0 ? ST_GGUF_TOK_UNKNOWN : ST_GGUF_TOK_CONTROL);
        int byte = is_byte_piece(t->text[i], t->text_len[i]);
        return set_sp_piece(v, i, t->text[i], t->text_len[i], byte ? ST_GGUF_TOK_BYTE : ST_GGUF_TOK_NORMAL);
    }
    if (!t->text[i]) {       /* a hole in a sparse vocabulary */
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%d]", i);
        return set_token(v, i, pad, strlen(pad), ST_GGUF_TOK_UNUSED);
    }
    int32_t type = t->is_added[i] == 1 || i == t->bos || i == t->eos ? ST_GGUF_TOK_CONTROL
                 : t->is_added[i] == 2 ? ST_GGUF_TOK_USER_DEFINED : ST_GGUF_TOK_NORMAL;
    return set_token(v, i, t->text[i], t->text_len[i], type);
}

/* Every id 0..n-1 (n = the model's vocabulary; ids past the tokenizer's are
 * padding, as convert_hf_to_gguf.py writes them), and the merges. */
static st_err build_vocab(gguf_vocab *v, const st_tokenizer *t, int n)
{
    memset(v, 0, sizeof *v);
    if (t->n_vocab > n)
        ST_FAIL(ST_ERR_ARG, "the tokenizer has %d tokens but the model only %d embedding rows", t->n_vocab, n);
    ST_ALLOC(v->s, n, "GGUF tokens");
    ST_ALLOC(v->len, n, "GGUF token lengths");
    ST_ALLOC(v->type, n, "GGUF token types");
    v->n = n;
    if (t->kind == ST_TOK_LLAMA2C) ST_ALLOC(v->score, n, "GGUF token scores");
    uint32_t cp[256];
    char bytechr[256][3];
    st_tok_bytes_to_unicode(cp);
    for (int b = 0; b < 256; b++) {   /* stand-ins are below U+0800: one or two UTF-8 bytes */
        if (cp[b] < 0x80) bytechr[b][0] = (char)cp[b], bytechr[b][1] = 0;
        else bytechr[b][0] = (char)(0xc0 | cp[b] >> 6), bytechr[b][1] = (char)(0x80 | (cp[b] & 0x3f)), bytechr[b][2] = 0;
    }
    for (int i = 0; i < n; i++) {
        if (i < t->n_vocab) ST_TRY(fill_token(v, t, i, bytechr));
        else {
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%d]", i);
            ST_TRY(set_token(v, i, pad, strlen(pad), ST_GGUF_TOK_UNUSED));
        }
        if (v->score) v->score[i] = i < t->n_vocab ? t->score[i] : -1000.0f;
    }
    if (t->kind != ST_TOK_GPT2 && t->kind != ST_TOK_HF) return ST_OK;
    ST_ALLOC(v->merge, t->n_merges + 1, "GGUF merges");
    ST_ALLOC(v->merge_len, t->n_merges + 1, "GGUF merge lengths");
    for (int k = 0; k < t->n_merges; k++) {
        int32_t a = t->merge_pair[2 * k], b = t->merge_pair[2 * k + 1];
        size_t la = t->text_len[a], lb = t->text_len[b];
        char *m = malloc(la + lb + 2);
        if (!m) ST_FAIL(ST_ERR_MEM, "out of memory building merge %d", k);
        memcpy(m, t->text[a], la);
        m[la] = ' ';
        memcpy(m + la + 1, t->text[b], lb);
        m[la + 1 + lb] = '\0';
        v->merge[k] = m;
        v->merge_len[k] = la + 1 + lb;
        v->n_merges = k + 1;
    }
    return ST_OK;
}

/* llama.cpp names each pre-tokenizer by a label and holds the regexes
 * itself; these are the Hugging Face forms of those it knows, with what else
 * its tokenizer does for that label (Llama 3: a whole word found in the
 * vocabulary is one token). */
static const struct {
    const char *label, *pattern;
    int ignore_merges;
} known_pre[] = {
    {"llama-bpe", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                  "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", 1},
    {"qwen2", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
              "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", 0},
    {"gpt-2", st_tok_gpt2_pattern, 0},
};

/* The label llama.cpp expects for t's pre-tokenizer, or NULL when llama.cpp
 * knows none that splits text as t does. *why says what differs. */
static const char *pre_tokenizer(const st_tokenizer *t, const char **why)
{
    *why = "";
    if (t->kind == ST_TOK_GPT2 || t->kind == ST_TOK_BYTE || t->kind == ST_TOK_LLMC) return "gpt-2";
    if (t->char_bpe) {
        *why = "a sentencepiece-style tokenizer.json: llama.cpp's sentencepiece vocabulary needs the scores of "
               "the original tokenizer.model";
        return NULL;
    }
    for (int k = 0; k < t->n_norm; k++)
        if (t->norm[k].kind != ST_NORM_NFC) {
            *why = "its normalizers, which llama.cpp does not apply";
            return NULL;
        }
    int plain = t->n_stages == 1 && !t->stage_prefix_space[0] && !t->stage_prefix_space[1] &&
                !t->stage_merge_prev[0] && !t->meta_repl_len && t->byte_level_at >= 1;
    for (size_t i = 0; plain && i < sizeof known_pre / sizeof known_pre[0]; i++)
        if (!strcmp(t->stage_pat[0], known_pre[i].pattern) && t->ignore_merges == known_pre[i].ignore_merges)
            return known_pre[i].label;
    *why = "its pre-tokenizer, which is none of llama.cpp's gpt-2, llama-bpe (Llama 3) or qwen2 (Qwen2/3)";
    return NULL;
}

/* Refuse a tokenizer llama.cpp would split differently, unless forced. */
static st_err pre_label(const st_tokenizer *t, int force, const char **label)
{
    const char *why;
    *label = t->kind == ST_TOK_LLAMA2C ? "default" : pre_tokenizer(t, &why);
    if (t->kind == ST_TOK_LLAMA2C && t->spm_strip_spaces) {
        *label = NULL;
        why = "sentencepiece's remove_extra_whitespaces, which llama.cpp does not apply";
    }
    if (*label && t->n_norm)   /* only NFC gets here: llama.cpp's own converter exports Qwen so too */
        fprintf(stderr, "shardtune: warning: llama.cpp does not apply the tokenizer's NFC normalizer: text that "
                "is not in NFC (e.g. \"e\" + U+0301) will tokenize differently there\n");
    if (*label) return ST_OK;
    if (!force)
        ST_FAIL(ST_ERR_ARG, "llama.cpp would tokenize text differently from this tokenizer (%s); export it anyway "
                "with --force (the GGUF then says tokenizer.ggml.pre = \"default\")", why);
    fprintf(stderr, "shardtune: warning: --force: llama.cpp will tokenize text differently from this tokenizer "
            "(%s); the GGUF says tokenizer.ggml.pre = \"default\"\n", why);
    *label = "default";
    return ST_OK;
}

static st_err put_tokenizer_kv(st_gguf_writer *w, const st_tokenizer *t, const gguf_vocab *v, int force)
{
    int spm = t->kind == ST_TOK_LLAMA2C;
    const char *label;
    ST_TRY(pre_label(t, force, &label));
    ST_TRY(st_gguf_set_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2"));
    ST_TRY(st_gguf_set_str(w, "tokenizer.ggml.pre", label));
    ST_TRY(st_gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->s, v->len, (uint64_t)v->n));
    if (spm) ST_TRY(st_gguf_set_arr_f32(w, "tokenizer.ggml.scores", v->score, (uint64_t)v->n));
    ST_TRY(st_gguf_set_arr_i32(w, "tokenizer.ggml.token_type", v->type, (uint64_t)v->n));
    if (!spm)
        ST_TRY(st_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merge, v->merge_len,
                                   (uint64_t)v->n_merges));
    if (t->bos >= 0) ST_TRY(st_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)t->bos));
    if (t->eos >= 0) ST_TRY(st_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)t->eos));
    if (spm) ST_TRY(st_gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0));
    /* the tokenizer's own rule, so llama.cpp frames prompts as shardtune trained and generates */
    ST_TRY(st_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", st_tokenizer_adds_bos(t)));
    ST_TRY(st_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", st_tokenizer_adds_eos(t)));
    if (t->chat_template) ST_TRY(st_gguf_set_str(w, "tokenizer.chat_template", t->chat_template));
    return ST_OK;
}

/* ==== the model ============================================================ */

/* How a GGUF tensor is made from ours. */
typedef enum { SRC_PLAIN, SRC_ROPE_Q, SRC_ROPE_K, SRC_CONCAT3 } src_kind;

typedef struct {
    st_gguf_writer *w;
    const st_config *cfg;
    uint32_t wtype;          /* F32 or F16 for 2-D weights */
    int pass;                /* 0: describe, 1: write data */
    float *tmp;              /* one tensor's worth, for permuted or fused tensors */
} exporter;

/* One tensor: rows x cols (cols = 0 for 1-D), from src per kind (CONCAT3:
 * rows/3 rows from each of a, b, c). keep_f32: never narrowed. */
static st_err emit(exporter *x, const char *name, int64_t rows, int64_t cols, int keep_f32, src_kind kind,
                   const float *a, const float *b, const float *c)
{
    int ndim = cols ? 2 : 1;
    if (x->pass == 0) {
        int64_t shape[2] = {rows, cols};
        uint32_t type = ndim == 2 && !keep_f32 ? x->wtype : ST_GGML_F32;
        return st_gguf_add_tensor(x->w, name, type, ndim, shape);
    }
    int64_t width = cols ? cols : 1, hd = x->cfg->d_model / x->cfg->n_head;
    const float *data = a;
    switch (kind) {
    case SRC_PLAIN: break;
    case SRC_ROPE_Q: st_rope_rows_hf_to_meta(x->tmp, a, x->cfg->n_head, (int)hd, width); data = x->tmp; break;
    case SRC_ROPE_K: st_rope_rows_hf_to_meta(x->tmp, a, x->cfg->n_kv_head, (int)hd, width); data = x->tmp; break;
    case SRC_CONCAT3: {
        size_t part = (size_t)(rows / 3 * width);
        memcpy(x->tmp, a, part * sizeof *a);
        memcpy(x->tmp + part, b, part * sizeof *b);
        memcpy(x->tmp + 2 * part, c, part * sizeof *c);
        data = x->tmp;
        break;
    }
    }
    return st_gguf_write_tensor(x->w, data);
}

static st_err emit_llama(exporter *x, const st_ptrs *p)
{
    const st_config *c = x->cfg;
    const int64_t C = c->d_model, hd = C / c->n_head, Q = c->n_head * hd, KV = c->n_kv_head * hd, F = c->d_ff;
    char n[64];
#define BLK(suffix) (snprintf(n, sizeof n, "blk.%d.%s", l, suffix), n)
    ST_TRY(emit(x, "token_embd.weight", c->vocab_size, C, 0, SRC_PLAIN, p->wte, NULL, NULL));
    for (int l = 0; l < c->n_layer; l++) {
        const st_layer_ptrs *L = &p->layer[l];
        ST_TRY(emit(x, BLK("attn_norm.weight"), C, 0, 1, SRC_PLAIN, L->ln1_w, NULL, NULL));
        ST_TRY(emit(x, BLK("attn_q.weight"), Q, C, 0, SRC_ROPE_Q, L->wq, NULL, NULL));
        if (L->bq) ST_TRY(emit(x, BLK("attn_q.bias"), Q, 0, 1, SRC_ROPE_Q, L->bq, NULL, NULL));
        ST_TRY(emit(x, BLK("attn_k.weight"), KV, C, 0, SRC_ROPE_K, L->wk, NULL, NULL));
        if (L->bk) ST_TRY(emit(x, BLK("attn_k.bias"), KV, 0, 1, SRC_ROPE_K, L->bk, NULL, NULL));
        ST_TRY(emit(x, BLK("attn_v.weight"), KV, C, 0, SRC_PLAIN, L->wv, NULL, NULL));
        if (L->bv) ST_TRY(emit(x, BLK("attn_v.bias"), KV, 0, 1, SRC_PLAIN, L->bv, NULL, NULL));
        ST_TRY(emit(x, BLK("attn_output.weight"), C, Q, 0, SRC_PLAIN, L->wo, NULL, NULL));
        ST_TRY(emit(x, BLK("ffn_norm.weight"), C, 0, 1, SRC_PLAIN, L->ln2_w, NULL, NULL));
        ST_TRY(emit(x, BLK("ffn_gate.weight"), F, C, 0, SRC_PLAIN, L->wgate, NULL, NULL));
        ST_TRY(emit(x, BLK("ffn_up.weight"), F, C, 0, SRC_PLAIN, L->wup, NULL, NULL));
        ST_TRY(emit(x, BLK("ffn_down.weight"), C, F, 0, SRC_PLAIN, L->wdown, NULL, NULL));
    }
#undef BLK
    ST_TRY(emit(x, "output_norm.weight", C, 0, 1, SRC_PLAIN, p->lnf_w, NULL, NULL));
    if (!c->tied_embeddings) ST_TRY(emit(x, "output.weight", c->vocab_size, C, 0, SRC_PLAIN, p->lm_head, NULL, NULL));
    return ST_OK;
}

/* GPT-2 as llama.cpp's gpt2 graph wants it: q, k, v fused into attn_qkv
 * (rows q then k then v), and output.weight written even when tied, as
 * convert_hf_to_gguf.py does. */
static st_err emit_gpt2(exporter *x, const st_ptrs *p)
{
    const st_config *c = x->cfg;
    const int64_t C = c->d_model, F = c->d_ff;
    char n[64];
#define BLK(suffix) (snprintf(n, sizeof n, "blk.%d.%s", l, suffix), n)
    ST_TRY(emit(x, "token_embd.weight", c->vocab_size, C, 0, SRC_PLAIN, p->wte, NULL, NULL));
    ST_TRY(emit(x, "position_embd.weight", c->max_seq, C, 1, SRC_PLAIN, p->wpe, NULL, NULL));
    for (int l = 0; l < c->n_layer; l++) {
        const st_layer_ptrs *L = &p->layer[l];
        ST_TRY(emit(x, BLK("attn_norm.weight"), C, 0, 1, SRC_PLAIN, L->ln1_w, NULL, NULL));
        ST_TRY(emit(x, BLK("attn_norm.bias"), C, 0, 1, SRC_PLAIN, L->ln1_b, NULL, NULL));
        ST_TRY(emit(x, BLK("attn_qkv.weight"), 3 * C, C, 0, SRC_CONCAT3, L->wq, L->wk, L->wv));
        ST_TRY(emit(x, BLK("attn_qkv.bias"), 3 * C, 0, 1, SRC_CONCAT3, L->bq, L->bk, L->bv));
        ST_TRY(emit(x, BLK("attn_output.weight"), C, C, 0, SRC_PLAIN, L->wo, NULL, NULL));
        ST_TRY(emit(x, BLK("attn_output.bias"), C, 0, 1, SRC_PLAIN, L->bo, NULL, NULL));
        ST_TRY(emit(x, BLK("ffn_norm.weight"), C, 0, 1, SRC_PLAIN, L->ln2_w, NULL, NULL));
        ST_TRY(emit(x, BLK("ffn_norm.bias"), C, 0, 1, SRC_PLAIN, L->ln2_b, NULL, NULL));
        ST_TRY(emit(x, BLK("ffn_up.weight"), F, C, 0, SRC_PLAIN, L->wup, NULL, NULL));
        ST_TRY(emit(x, BLK("ffn_up.bias"), F, 0, 1, SRC_PLAIN, L->bup, NULL, NULL));
        ST_TRY(emit(x, BLK("ffn_down.weight"), C, F, 0, SRC_PLAIN, L->wdown, NULL, NULL));
        ST_TRY(emit(x, BLK("ffn_down.bias"), C, 0, 1, SRC_PLAIN, L->bdown, NULL, NULL));
    }
#undef BLK
    ST_TRY(emit(x, "output_norm.weight", C, 0, 1, SRC_PLAIN, p->lnf_w, NULL, NULL));
    ST_TRY(emit(x, "output_norm.bias", C, 0, 1, SRC_PLAIN, p->lnf_b, NULL, NULL));
    ST_TRY(emit(x, "output.weight", c->vocab_size, C, 0, SRC_PLAIN, p->lm_head, NULL, NULL));
    return ST_OK;
}

/* The hyperparameters llama.cpp reads for the architecture. */
static st_err put_model_kv(st_gguf_writer *w, const st_config *c, uint32_t wtype, const char *name)
{
    int llama = c->family == ST_FAMILY_LLAMA;
    const char *arch = llama ? "llama" : "gpt2";
    char k[96];
#define KEY(suffix) (snprintf(k, sizeof k, "%s.%s", arch, suffix), k)
    ST_TRY(st_gguf_set_str(w, "general.architecture", arch));
    ST_TRY(st_gguf_set_str(w, "general.name", name));
    ST_TRY(st_gguf_set_u32(w, "general.file_type", wtype == ST_GGML_F16 ? 1u : 0u));  /* ALL_F32 / MOSTLY_F16 */
    ST_TRY(st_gguf_set_u32(w, "general.alignment", ST_GGUF_DEFAULT_ALIGNMENT));
    ST_TRY(st_gguf_set_u32(w, KEY("context_length"), (uint32_t)c->max_seq));
    ST_TRY(st_gguf_set_u32(w, KEY("embedding_length"), (uint32_t)c->d_model));
    ST_TRY(st_gguf_set_u32(w, KEY("block_count"), (uint32_t)c->n_layer));
    ST_TRY(st_gguf_set_u32(w, KEY("feed_forward_length"), (uint32_t)c->d_ff));
    ST_TRY(st_gguf_set_u32(w, KEY("attention.head_count"), (uint32_t)c->n_head));
    ST_TRY(st_gguf_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_kv_head));
    if (llama) {
        ST_TRY(st_gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->norm_eps));
        ST_TRY(st_gguf_set_f32(w, KEY("rope.freq_base"), c->rope_theta));
        ST_TRY(st_gguf_set_u32(w, KEY("rope.dimension_count"), (uint32_t)(c->d_model / c->n_head)));
        ST_TRY(st_gguf_set_u32(w, KEY("vocab_size"), (uint32_t)c->vocab_size));
    } else {
        ST_TRY(st_gguf_set_f32(w, KEY("attention.layer_norm_epsilon"), c->norm_eps));
    }
#undef KEY
    return ST_OK;
}

/* Describe (pass 0) or write (pass 1) every tensor. */
static st_err emit_all(exporter *x, const st_ptrs *p)
{
    return x->cfg->family == ST_FAMILY_LLAMA ? emit_llama(x, p) : emit_gpt2(x, p);
}

static st_err write_model(st_gguf_writer *w, const char *tmp, const st_config *cfg, const float *params,
                          const st_tokenizer *tok, uint32_t wtype, const char *name, int force)
{
    st_layout lay;
    ST_TRY(st_layout_init(&lay, cfg, 1, 0));
    st_ptrs p;
    st_err e = st_ptrs_init(&p, &lay, (float *)params);
    gguf_vocab v = {0};
    int64_t widest = 3 * (int64_t)cfg->d_model * cfg->d_model;   /* gpt2's fused qkv: the largest temporary */
    exporter x = {w, cfg, wtype, 0, NULL};
    if (!e) {
        x.tmp = malloc((size_t)widest * sizeof *x.tmp);
        if (!x.tmp) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory (%lld floats)",
                                     (long long)widest);
    }
    if (!e) e = put_model_kv(w, cfg, wtype, name);
    if (!e && tok) e = build_vocab(&v, tok, cfg->vocab_size);
    if (!e && tok) e = put_tokenizer_kv(w, tok, &v, force);
    if (!e && !tok)
        fprintf(stderr, "shardtune: warning: the checkpoint carries no tokenizer, so the GGUF has none; "
                "llama.cpp needs one to run the model\n");
    vocab_free(&v);
    if (!e) e = emit_all(&x, &p);
    if (!e) e = st_gguf_write_begin(w, tmp);
    x.pass = 1;
    if (!e) e = emit_all(&x, &p);
    if (!e) e = st_gguf_write_end(w);
    free(x.tmp);
    st_ptrs_free(&p);
    st_layout_free(&lay);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

st_err st_gguf_export(const char *path, const st_config *cfg, const float *params,
                      const st_tokenizer *tok, uint32_t ggml_type, const char *model_name, int force)
{
    if (ggml_type != ST_GGML_F32 && ggml_type != ST_GGML_F16)
        ST_FAIL(ST_ERR_ARG, "GGUF export writes f32 or f16 weights, not ggml type %u", ggml_type);
    size_t n = strlen(path) + 5;
    char *tmp = malloc(n);
    if (!tmp) ST_FAIL(ST_ERR_MEM, "out of memory");
    snprintf(tmp, n, "%s.tmp", path);
    st_gguf_writer *w = NULL;
    st_err e = st_gguf_writer_new(&w);
    if (!e) e = write_model(w, tmp, cfg, params, tok, ggml_type, model_name ? model_name : "shardtune", force);
    st_gguf_writer_free(w);       /* removes tmp when unfinished */
    if (!e && rename(tmp, path) != 0)
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot rename %s to %s: %s", tmp, path,
                         strerror(errno));
    if (!e) {   /* make the rename durable: fsync the directory */
        char *slash = strrchr(tmp, '/');
        if (slash) *slash = '\0';
        int fd = open(slash ? (slash == tmp ? "/" : tmp) : ".", O_RDONLY | O_DIRECTORY);
        if (fd >= 0) {
            fsync(fd);
            close(fd);
        }
    }
    if (e) {
        unlink(tmp);
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    free(tmp);
    return e;
}
