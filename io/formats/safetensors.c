/* safetensors.c: validated reading and streaming writing of safetensors
 * files, and the half-precision conversions. See safetensors.h. */
#include "io/formats/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (the format is little-endian)"
#endif

/* ---- dtypes --------------------------------------------------------------- */

static const struct { const char *name; size_t size; } dtypes[ST_DT_COUNT] = {
    [ST_DT_BOOL] = {"BOOL", 1}, [ST_DT_U8] = {"U8", 1},     [ST_DT_I8] = {"I8", 1},
    [ST_DT_F8_E4M3] = {"F8_E4M3", 1}, [ST_DT_F8_E5M2] = {"F8_E5M2", 1},
    [ST_DT_I16] = {"I16", 2},   [ST_DT_U16] = {"U16", 2},   [ST_DT_F16] = {"F16", 2},
    [ST_DT_BF16] = {"BF16", 2}, [ST_DT_I32] = {"I32", 4},   [ST_DT_U32] = {"U32", 4},
    [ST_DT_F32] = {"F32", 4},   [ST_DT_F64] = {"F64", 8},   [ST_DT_I64] = {"I64", 8},
    [ST_DT_U64] = {"U64", 8},
};

const char *st_dtype_name(st_dtype d) { return d >= 0 && d < ST_DT_COUNT ? dtypes[d].name : "?"; }
size_t st_dtype_size(st_dtype d) { return d >= 0 && d < ST_DT_COUNT ? dtypes[d].size : 0; }

int st_dtype_parse(const char *s)
{
    for (int d = 0; d < ST_DT_COUNT; d++)
        if (!strcmp(s, dtypes[d].name)) return d;
    return -1;
}

/* ---- half precision ------------------------------------------------------- */

static float from_bits(uint32_t x)
{
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static uint32_t to_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    return x;
}

/* binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return from_bits(sign | 0x7f800000u | man << 13);        /* inf, nan */
    if (exp) return from_bits(sign | (exp + 112) << 23 | man << 13);          /* rebias 15 -> 127 */
    if (!man) return from_bits(sign);                                         /* +-0 */
    /* subnormal man * 2^-24: shift the leading 1 up to the implicit bit */
    uint32_t e = 113;
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return from_bits(sign | e << 23 | (man & 0x3ffu) << 13);
}

uint16_t st_f32_to_f16(float f)
{
    uint32_t x = to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t exp = (x >> 23) & 0xffu, man = x & 0x7fffffu;
    if (exp == 0xff) /* inf stays inf; nan keeps its top payload bits and stays quiet */
        return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | man >> 13 : 0));
    int e = (int)exp - 112;                      /* binary16 biased exponent */
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        /* binary16 subnormal k * 2^-24 from the 24-bit significand m * 2^(exp-150) */
        int shift = 126 - (int)exp;
        if (shift > 24) return sign;             /* below half the smallest subnormal */
        uint32_t m = man | 0x800000u;
        uint32_t k = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (k & 1))) k++;   /* may carry into the smallest normal */
        return (uint16_t)(sign | k);
    }
    uint32_t k = man >> 13, rem = man & 0x1fffu;
    uint16_t h = (uint16_t)(sign | (uint32_t)e << 10 | k);
    if (rem > 0x1000u || (rem == 0x1000u && (k & 1))) h++;  /* a carry may reach inf: correct */
    return h;
}

float st_bf16_to_f32(uint16_t b) { return from_bits((uint32_t)b << 16); }

uint16_t st_f32_to_bf16(float f)
{
    uint32_t x = to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(x >> 16 | 0x40u);  /* nan: no rounding into inf */
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* ---- small helpers -------------------------------------------------------- */

/* Strict UTF-8: no overlong forms, surrogates or code points past U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (!len || len > n - i) return 0;
        uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

/* A printable excerpt of a hostile name: non-ASCII and control bytes as '?'. */
static const char *printable(char *buf, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++) buf[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    buf[i] = '\0';
    return buf;
}

/* A JSON number that is an integer in [0, 2^53] (exact in a double). */
static int json_u53(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

static st_err pread_all(int fd, void *buf, uint64_t n, uint64_t off, const char *path, const char *what)
{
    uint8_t *p = buf;
    while (n) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t r = pread(fd, p, chunk, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) ST_FAIL(ST_ERR_IO, "%s: reading %s: %s", path, what, strerror(errno));
        if (r == 0)
            ST_FAIL(ST_ERR_FORMAT, "%s: the file ended while reading %s (truncated while open?)", path, what);
        p += r;
        n -= (uint64_t)r;
        off += (uint64_t)r;
    }
    return ST_OK;
}

/* ---- parsing -------------------------------------------------------------- */

/* One header entry {"dtype", "shape", "data_offsets"} into e; data_size
 * bounds the offsets. */
static st_err parse_entry(st_safetensors_entry *e, const cJSON *j, const char *path, uint64_t data_size)
{
    char nm[96];
    printable(nm, sizeof nm, e->name);
    if (!cJSON_IsObject(j)) ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": header entry is not a JSON object", path, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(j, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(j, "data_offsets");
    if (!cJSON_IsString(dt)) ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": missing string \"dtype\"", path, nm);
    if (!cJSON_IsArray(sh)) ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": missing array \"shape\"", path, nm);
    if (!cJSON_IsArray(off)) ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": missing array \"data_offsets\"", path, nm);
    int d = st_dtype_parse(dt->valuestring);
    if (d < 0) {
        char dn[40];
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": unknown dtype \"%s\"", path, nm,
                printable(dn, sizeof dn, dt->valuestring));
    }
    e->dtype = (st_dtype)d;
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_SAFETENSORS_MAX_DIMS)
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": %d dimensions (at most %d supported)", path, nm, nd,
                ST_SAFETENSORS_MAX_DIMS);
    e->ndim = nd;
    uint64_t numel = 1;
    int overflow = 0;
    for (int i = 0; i < nd; i++) {
        uint64_t v;
        if (!json_u53(cJSON_GetArrayItem(sh, i), &v))
            ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": shape[%d] is not a non-negative integer", path, nm, i);
        e->shape[i] = (int64_t)v;
        if (v && numel > UINT64_MAX / v) overflow = 1;
        else numel *= v;
    }
    size_t esz = st_dtype_size(e->dtype);
    if (overflow || numel > UINT64_MAX / esz)
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": the byte size of its shape overflows 64 bits", path, nm);
    e->numel = numel;
    uint64_t b, en;
    if (cJSON_GetArraySize(off) != 2 || !json_u53(cJSON_GetArrayItem(off, 0), &b) ||
        !json_u53(cJSON_GetArrayItem(off, 1), &en))
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": data_offsets must be two non-negative integers [begin, end]",
                path, nm);
    if (en < b)
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": data_offsets [%llu, %llu] end before they begin", path, nm,
                (unsigned long long)b, (unsigned long long)en);
    if (en > data_size)
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": data_offsets [%llu, %llu] run past the %llu data bytes of "
                "the file", path, nm, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_size);
    if (en - b != numel * esz)
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\": data_offsets span %llu bytes but shape x %s needs %llu", path,
                nm, (unsigned long long)(en - b), dtypes[e->dtype].name, (unsigned long long)(numel * esz));
    e->begin = b;
    e->end = en;
    return ST_OK;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const st_safetensors_entry *)a)->name, ((const st_safetensors_entry *)b)->name);
}

static int by_offset(const void *a, const void *b, void *base)
{
    const st_safetensors_entry *t = base, *x = &t[*(const int *)a], *y = &t[*(const int *)b];
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Names unique; the tensors tile [0, data_size) exactly (the format's rule). */
static st_err check_layout(const st_safetensors *f, uint64_t data_size)
{
    char a[96], b[96];
    qsort(f->t, (size_t)f->n, sizeof *f->t, by_name);
    for (int i = 1; i < f->n; i++)
        if (!strcmp(f->t[i - 1].name, f->t[i].name))
            ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\" appears twice in the header", f->path,
                    printable(a, sizeof a, f->t[i].name));
    int *ord;
    ST_ALLOC(ord, f->n + 1, "tensor order");
    for (int i = 0; i < f->n; i++) ord[i] = i;
    qsort_r(ord, (size_t)f->n, sizeof *ord, by_offset, f->t);
    uint64_t pos = 0;
    const char *prev = NULL;
    st_err e = ST_OK;
    for (int i = 0; i < f->n && !e; i++) {
        const st_safetensors_entry *t = &f->t[ord[i]];
        if (t->begin < pos)
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s: tensors \"%s\" and \"%s\" overlap (bytes [%llu, %llu) of the data)", f->path,
                             printable(a, sizeof a, prev), printable(b, sizeof b, t->name),
                             (unsigned long long)t->begin, (unsigned long long)pos);
        else if (t->begin > pos)
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s: data bytes [%llu, %llu) before tensor \"%s\" belong to no tensor", f->path,
                             (unsigned long long)pos, (unsigned long long)t->begin, printable(b, sizeof b, t->name));
        pos = t->end;
        prev = t->name;
    }
    free(ord);
    if (e) return e;
    if (pos != data_size)
        ST_FAIL(ST_ERR_FORMAT, "%s: the tensors end at data byte %llu but the file holds %llu data bytes "
                "(truncated or padded file)", f->path, (unsigned long long)pos, (unsigned long long)data_size);
    return ST_OK;
}

static st_err parse_header(st_safetensors *f, const char *hdr, size_t len)
{
    if (len == 0 || hdr[0] != '{')
        ST_FAIL(ST_ERR_FORMAT, "%s: the header does not start with '{' (not a safetensors file?)", f->path);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, len, &end, 0);
    if (!root)
        ST_FAIL(ST_ERR_FORMAT, "%s: the header is not valid JSON (parsing stopped at header byte %zu of %zu)",
                f->path, end ? (size_t)(end - hdr) : (size_t)0, len);
    st_err e = ST_OK;
    for (const char *p = end; p && p < hdr + len && !e; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s: bytes after the header's JSON object (header byte %zu) are not padding",
                             f->path, (size_t)(p - hdr));
    if (!e && !cJSON_IsObject(root))
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s: the header is not a JSON object",
                         f->path);
    int n = 0;
    const cJSON *it;
    if (!e) cJSON_ArrayForEach(it, root) n++;
    if (!e && n > 0) {
        f->t = calloc((size_t)n, sizeof *f->t);
        if (!f->t) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for %d tensors", n);
    }
    uint64_t data_size = f->file_size - f->data_start;
    int metas = 0;
    if (!e) cJSON_ArrayForEach(it, root) {
        const char *name = it->string ? it->string : "";
        if (!utf8_valid((const unsigned char *)name, strlen(name))) {
            char nm[96];
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s: tensor name \"%s\" is not valid UTF-8", f->path, printable(nm, sizeof nm, name));
            break;
        }
        if (!strcmp(name, "__metadata__")) {
            if (metas++ || !cJSON_IsObject(it)) {
                e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                 "%s: \"__metadata__\" must appear once, as an object of strings", f->path);
                break;
            }
            continue;
        }
        st_safetensors_entry *t = &f->t[f->n];
        t->name = strdup(name);
        if (!t->name) {
            e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory copying a tensor name");
            break;
        }
        f->n++;
        if ((e = parse_entry(t, it, f->path, data_size))) {
            st_error_trace(__FILE__, __LINE__, __func__);
            break;
        }
    }
    cJSON_Delete(root);
    if (!e) e = check_layout(f, data_size);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

st_err st_safetensors_parse(st_safetensors *f, const char *path, const uint8_t *head, size_t head_n,
                            uint64_t file_size)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->path = strdup(path ? path : "?");
    if (!f->path) ST_FAIL(ST_ERR_MEM, "out of memory copying a path");
    f->file_size = file_size;
    st_err e = ST_OK;
    uint64_t len = 0;
    if (file_size < 8 || head_n < 8)
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                         "%s is %llu bytes, shorter than the 8-byte header length of a safetensors file", f->path,
                         (unsigned long long)file_size);
    if (!e) {
        for (int i = 7; i >= 0; i--) len = len << 8 | head[i];
        if (len > ST_SAFETENSORS_MAX_HEADER)
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s: header length %llu is over the %llu-byte limit (corrupt or not safetensors)",
                             f->path, (unsigned long long)len, (unsigned long long)ST_SAFETENSORS_MAX_HEADER);
        else if (len > file_size - 8)
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s: header length %llu runs past the end of the %llu-byte file (truncated?)",
                             f->path, (unsigned long long)len, (unsigned long long)file_size);
        else if (head_n - 8 < len)
            e = st_error_set(ST_ERR_INTERNAL, __FILE__, __LINE__, __func__,
                             "%s: %zu header bytes given, %llu needed", f->path, head_n, (unsigned long long)len + 8);
    }
    if (!e) {
        f->data_start = 8 + len;
        e = parse_header(f, (const char *)head + 8, (size_t)len);
    }
    if (e) {
        st_error_trace(__FILE__, __LINE__, __func__);
        st_safetensors_close(f);
    }
    return e;
}

st_err st_safetensors_open(st_safetensors *f, const char *path)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) ST_FAIL(ST_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    uint8_t *head = NULL;
    st_err e = ST_OK;
    if (fstat(fd, &sb) != 0)
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot stat %s: %s", path, strerror(errno));
    uint64_t size = e ? 0 : (uint64_t)sb.st_size, need = size < 8 ? size : 8;
    uint8_t len8[8] = {0};
    if (!e) e = pread_all(fd, len8, need, 0, path, "the header length");
    if (!e) {
        uint64_t len = 0;
        for (int i = 7; i >= 0; i--) len = len << 8 | len8[i];
        /* read the header only when its length is plausible; parse reports the rest */
        if (size >= 8 && len <= ST_SAFETENSORS_MAX_HEADER && len <= size - 8) need = 8 + len;
        head = malloc(need ? need : 1);
        if (!head) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__,
                                    "out of memory for the %llu-byte header of %s", (unsigned long long)need, path);
    }
    if (!e) e = pread_all(fd, head, need, 0, path, "the header");
    if (!e) e = st_safetensors_parse(f, path, head, (size_t)need, size);
    free(head);
    if (e) {
        close(fd);
        st_error_trace(__FILE__, __LINE__, __func__);
        return e;
    }
    f->fd = fd;
    return ST_OK;
}

void st_safetensors_close(st_safetensors *f)
{
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    free(f->path);
    if (f->fd >= 0) close(f->fd);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

const st_safetensors_entry *st_safetensors_find(const st_safetensors *f, const char *name)
{
    st_safetensors_entry key = {.name = (char *)name};
    if (!f->n) return NULL;
    return bsearch(&key, f->t, (size_t)f->n, sizeof *f->t, by_name);
}

st_err st_safetensors_read(const st_safetensors *f, const st_safetensors_entry *e, float *dst)
{
    if (e->dtype != ST_DT_F32 && e->dtype != ST_DT_F16 && e->dtype != ST_DT_BF16)
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\" has dtype %s; model weights must be F32, F16 or BF16", f->path,
                e->name, st_dtype_name(e->dtype));
    if (f->fd < 0) ST_FAIL(ST_ERR_ARG, "%s: not opened from a file", f->path);
    ST_TRY(pread_all(f->fd, dst, e->end - e->begin, f->data_start + e->begin, f->path, e->name));
    if (e->dtype == ST_DT_F32) return ST_OK;
    /* widen in place from the back: element i's 4 bytes only cover 2-byte
     * elements 2i and 2i+1, which were consumed already */
    const uint16_t *h = (const uint16_t *)(void *)dst;
    for (uint64_t i = e->numel; i-- > 0;) {
        uint16_t v = h[i];
        dst[i] = e->dtype == ST_DT_F16 ? st_f16_to_f32(v) : st_bf16_to_f32(v);
    }
    return ST_OK;
}

/* ---- writing -------------------------------------------------------------- */

static uint64_t spec_numel(const st_safetensors_spec *s)
{
    uint64_t n = 1;
    for (int i = 0; i < s->ndim; i++) n *= (uint64_t)s->shape[i];
    return n;
}

static cJSON *raw_u64(uint64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    return cJSON_CreateRaw(buf);   /* exact integers: cJSON prints doubles */
}

/* The header JSON for spec[0..n), padded with spaces so the data starts at a
 * multiple of 8 bytes. */
static st_err build_header(char **out, size_t *len, const st_safetensors_spec *spec, int n,
                           const char *const *metadata)
{
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    if (ok && metadata) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        ok = m != NULL;
        for (int i = 0; ok && metadata[i] && metadata[i + 1]; i += 2)
            ok = cJSON_AddStringToObject(m, metadata[i], metadata[i + 1]) != NULL;
    }
    uint64_t off = 0;
    for (int i = 0; ok && i < n; i++) {
        cJSON *t = cJSON_AddObjectToObject(root, spec[i].name);
        cJSON *shape = t ? cJSON_AddArrayToObject(t, "shape") : NULL;
        cJSON *offs = t ? cJSON_AddArrayToObject(t, "data_offsets") : NULL;
        ok = t && cJSON_AddStringToObject(t, "dtype", st_dtype_name(spec[i].dtype)) && shape && offs;
        for (int d = 0; ok && d < spec[i].ndim; d++) ok = cJSON_AddItemToArray(shape, raw_u64((uint64_t)spec[i].shape[d]));
        uint64_t end = off + spec_numel(&spec[i]) * st_dtype_size(spec[i].dtype);
        ok = ok && cJSON_AddItemToArray(offs, raw_u64(off)) && cJSON_AddItemToArray(offs, raw_u64(end));
        off = end;
    }
    char *s = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!s) ST_FAIL(ST_ERR_MEM, "out of memory building a safetensors header");
    size_t l = strlen(s), padded = (l + 8 + 7) / 8 * 8 - 8;
    char *p = realloc(s, padded + 1);
    if (!p) {
        free(s);
        ST_FAIL(ST_ERR_MEM, "out of memory padding a safetensors header");
    }
    memset(p + l, ' ', padded - l);
    p[padded] = '\0';
    *out = p;
    *len = padded;
    return ST_OK;
}

st_err st_safetensors_writer_begin(st_safetensors_writer *w, const char *path,
                                   const st_safetensors_spec *spec, int n,
                                   const char *const *metadata)
{
    memset(w, 0, sizeof *w);
    for (int i = 0; i < n; i++)
        if (spec[i].dtype != ST_DT_F32 && spec[i].dtype != ST_DT_F16 && spec[i].dtype != ST_DT_BF16)
            ST_FAIL(ST_ERR_ARG, "safetensors writer: tensor \"%s\" dtype %s (F32, F16 or BF16 only)", spec[i].name,
                    st_dtype_name(spec[i].dtype));
    w->path = strdup(path);
    w->spec = calloc((size_t)n + 1, sizeof *w->spec);
    if (!w->path || !w->spec) {
        st_safetensors_writer_abort(w);
        ST_FAIL(ST_ERR_MEM, "out of memory starting %s", path);
    }
    w->n = n;
    for (int i = 0; i < n; i++) {
        w->spec[i] = spec[i];
        w->spec[i].name = strdup(spec[i].name);
        if (!w->spec[i].name) {
            w->n = i;
            st_safetensors_writer_abort(w);
            ST_FAIL(ST_ERR_MEM, "out of memory copying tensor names");
        }
    }
    char *hdr = NULL;
    size_t len = 0;
    st_err e = build_header(&hdr, &len, spec, n, metadata);
    FILE *fp = NULL;
    if (!e && !(fp = fopen(path, "wb")))
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s: %s", path, strerror(errno));
    if (!e) {
        w->fp = fp;
        uint8_t len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)len >> (8 * i));
        if (fwrite(len8, 1, 8, fp) != 8 || fwrite(hdr, 1, len, fp) != len)
            e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "writing the header of %s: %s", path,
                             strerror(errno));
    }
    free(hdr);
    if (e) {
        st_error_trace(__FILE__, __LINE__, __func__);
        st_safetensors_writer_abort(w);
    }
    return e;
}

st_err st_safetensors_writer_put(st_safetensors_writer *w, const float *x)
{
    if (w->next >= w->n) ST_FAIL(ST_ERR_INTERNAL, "%s: more tensors put than the %d declared", w->path, w->n);
    const st_safetensors_spec *s = &w->spec[w->next];
    uint64_t n = spec_numel(s);
    FILE *fp = w->fp;
    if (s->dtype == ST_DT_F32) {
        if (n && fwrite(x, 4, (size_t)n, fp) != n)
            ST_FAIL(ST_ERR_IO, "%s: writing tensor \"%s\": %s", w->path, s->name, strerror(errno));
    } else {
        uint16_t buf[8192];
        for (uint64_t i = 0; i < n;) {
            size_t k = n - i < 8192 ? (size_t)(n - i) : 8192;
            for (size_t j = 0; j < k; j++)
                buf[j] = s->dtype == ST_DT_F16 ? st_f32_to_f16(x[i + j]) : st_f32_to_bf16(x[i + j]);
            if (fwrite(buf, 2, k, fp) != k)
                ST_FAIL(ST_ERR_IO, "%s: writing tensor \"%s\": %s", w->path, s->name, strerror(errno));
            i += k;
        }
    }
    w->next++;
    return ST_OK;
}

st_err st_safetensors_writer_end(st_safetensors_writer *w)
{
    st_err e = ST_OK;
    if (w->next != w->n)
        e = st_error_set(ST_ERR_INTERNAL, __FILE__, __LINE__, __func__, "%s: %d of %d tensors written", w->path,
                         w->next, w->n);
    FILE *fp = w->fp;
    if (!e && (fflush(fp) != 0 || fsync(fileno(fp)) != 0))
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "flushing %s: %s", w->path, strerror(errno));
    if (!e) {
        w->fp = NULL;
        if (fclose(fp) != 0)
            e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "closing %s: %s", w->path, strerror(errno));
    }
    if (e) {
        st_error_trace(__FILE__, __LINE__, __func__);
        st_safetensors_writer_abort(w);
        return e;
    }
    for (int i = 0; i < w->n; i++) free((char *)w->spec[i].name);
    free(w->spec);
    free(w->path);
    memset(w, 0, sizeof *w);
    return ST_OK;
}

void st_safetensors_writer_abort(st_safetensors_writer *w)
{
    if (w->fp) {
        fclose(w->fp);
        if (w->path) unlink(w->path);
    }
    for (int i = 0; i < w->n; i++) free((char *)w->spec[i].name);
    free(w->spec);
    free(w->path);
    memset(w, 0, sizeof *w);
}
