/* tok_util.c: the tokenizer's small tools: hash maps, a priority queue for
 * merges, UTF-8 validation, file reading and the PCRE2 wrappers. */
#include "io/tok/tok_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

uint64_t st_tok_fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* ---- string -> id ---- */

static st_err strmap_grow(st_tok_strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    st_tok_strmap n = {0};
    ST_ALLOC(n.key, cap, "tokenizer vocabulary map");
    n.klen = calloc(cap, sizeof(*n.klen));
    n.val = calloc(cap, sizeof(*n.val));
    if (!n.klen || !n.val) {
        free(n.key), free(n.klen), free(n.val);
        ST_FAIL(ST_ERR_MEM, "out of memory growing the tokenizer vocabulary map to %zu slots", cap);
    }
    n.cap = cap;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->key[i]) continue;
        size_t j = st_tok_fnv(0xcbf29ce484222325ULL, m->key[i], m->klen[i]) & (cap - 1);
        while (n.key[j]) j = (j + 1) & (cap - 1);
        n.key[j] = m->key[i], n.klen[j] = m->klen[i], n.val[j] = m->val[i];
    }
    n.count = m->count;
    st_tok_strmap_free(m);
    *m = n;
    return ST_OK;
}

/* replace != 0: an existing key takes the new value; otherwise the first wins. */
st_err st_tok_strmap_put(st_tok_strmap *m, const char *key, uint32_t klen, int32_t val, int replace)
{
    if (2 * (m->count + 1) > m->cap) ST_TRY(strmap_grow(m));
    size_t j = st_tok_fnv(0xcbf29ce484222325ULL, key, klen) & (m->cap - 1);
    while (m->key[j]) {
        if (m->klen[j] == klen && memcmp(m->key[j], key, klen) == 0) {
            if (replace) m->key[j] = key, m->val[j] = val;
            return ST_OK;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->key[j] = key, m->klen[j] = klen, m->val[j] = val;
    m->count++;
    return ST_OK;
}

int32_t st_tok_strmap_get(const st_tok_strmap *m, const char *key, size_t klen)
{
    if (!m->cap || klen > UINT32_MAX) return -1;
    size_t j = st_tok_fnv(0xcbf29ce484222325ULL, key, klen) & (m->cap - 1);
    while (m->key[j]) {
        if (m->klen[j] == klen && memcmp(m->key[j], key, klen) == 0) return m->val[j];
        j = (j + 1) & (m->cap - 1);
    }
    return -1;
}

void st_tok_strmap_free(st_tok_strmap *m)
{
    free(m->key), free(m->klen), free(m->val);
    memset(m, 0, sizeof(*m));
}

/* ---- (a, b) -> (rank, merged) ---- */

static st_err pairmap_grow(st_tok_pairmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : 1024;
    st_tok_pairslot *slot;
    ST_ALLOC(slot, cap, "tokenizer merge map");
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slot[i].key) continue;
        size_t j = mix64(m->slot[i].key) & (cap - 1);
        while (slot[j].key) j = (j + 1) & (cap - 1);
        slot[j] = m->slot[i];
    }
    free(m->slot);
    m->slot = slot;
    m->cap = cap;
    return ST_OK;
}

/* The first (lowest-rank) entry for a pair wins; later duplicates are ignored. */
st_err st_tok_pairmap_put(st_tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    if (2 * (m->count + 1) > m->cap) ST_TRY(pairmap_grow(m));
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t j = mix64(k) & (m->cap - 1);
    while (m->slot[j].key) {
        if (m->slot[j].key == k) return ST_OK;
        j = (j + 1) & (m->cap - 1);
    }
    m->slot[j] = (st_tok_pairslot){k, rank, merged};
    m->count++;
    return ST_OK;
}

int st_tok_pairmap_get(const st_tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged)
{
    if (!m->cap) return 0;
    uint64_t k = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t j = mix64(k) & (m->cap - 1);
    while (m->slot[j].key) {
        if (m->slot[j].key == k) {
            *rank = m->slot[j].rank, *merged = m->slot[j].merged;
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

void st_tok_pairmap_free(st_tok_pairmap *m)
{
    free(m->slot);
    memset(m, 0, sizeof(*m));
}

/* ---- growable arrays and the merge queue ---- */

st_err st_tok_reserve(void **p, size_t *cap, size_t need, size_t elem, const char *what)
{
    if (need <= *cap) return ST_OK;
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > SIZE_MAX / 2) c = need;
        else c *= 2;
    }
    if (c > SIZE_MAX / elem) ST_FAIL(ST_ERR_MEM, "%s: %zu elements overflow size_t", what, c);
    void *q = realloc(*p, c * elem);
    if (!q) ST_FAIL(ST_ERR_MEM, "out of memory growing %s to %zu x %zu bytes", what, c, elem);
    *p = q;
    *cap = c;
    return ST_OK;
}

st_err st_tok_push_id(st_tok_enc *e, int32_t id)
{
    if (*e->n >= *e->cap) {
        void *p = *e->ids;
        ST_TRY(st_tok_reserve(&p, e->cap, *e->n + 1, sizeof(int32_t), "the token id array"));
        *e->ids = p;
    }
    (*e->ids)[(*e->n)++] = id;
    return ST_OK;
}

st_err st_tok_reserve_syms(st_tok_enc *e, size_t n)
{
    if (n <= e->sym_cap) return ST_OK;
    size_t cap = e->sym_cap;
    void *p = e->sym;
    ST_TRY(st_tok_reserve(&p, &cap, n, sizeof(int32_t), "the merge symbols"));
    e->sym = p;
    int32_t *q = realloc(e->prev, cap * sizeof(int32_t)), *r = q ? realloc(e->next, cap * sizeof(int32_t)) : NULL;
    if (q) e->prev = q;
    if (r) e->next = r;
    if (!q || !r) ST_FAIL(ST_ERR_MEM, "out of memory for %zu merge symbols", cap);
    e->sym_cap = cap;
    return ST_OK;
}

st_err st_tok_heap_push(st_tok_enc *e, st_tok_heap_ent ent)
{
    void *p = e->heap;
    ST_TRY(st_tok_reserve(&p, &e->heap_cap, e->heap_len + 1, sizeof(*e->heap), "the merge queue"));
    e->heap = p;
    size_t i = e->heap_len++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (e->heap[up].prio <= ent.prio) break;
        e->heap[i] = e->heap[up];
        i = up;
    }
    e->heap[i] = ent;
    return ST_OK;
}

/* Caller ensures heap_len > 0. */
st_tok_heap_ent st_tok_heap_pop(st_tok_enc *e)
{
    st_tok_heap_ent top = e->heap[0];
    st_tok_heap_ent last = e->heap[--e->heap_len];
    size_t n = e->heap_len, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && e->heap[c + 1].prio < e->heap[c].prio) c++;
        if (last.prio <= e->heap[c].prio) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

/* ---- UTF-8 ---- */

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
size_t st_tok_utf8_check(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;   /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) need = 2, lo = 0xA0;
        else if (c == 0xED) need = 2, hi = 0x9F;
        else if (c >= 0xE1 && c <= 0xEF) need = 2;
        else if (c == 0xF0) need = 3, lo = 0x90;
        else if (c == 0xF4) need = 3, hi = 0x8F;
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else return i;
        if (len - i <= need) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += need + 1;
    }
    return len;
}

/* ---- files ---- */

st_err st_tok_read_file(const char *path, uint8_t **data, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) ST_FAIL(ST_ERR_IO, "cannot open tokenizer file %s: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        void *p = buf;
        st_err e = st_tok_reserve(&p, &cap, len + 65536, 1, "a tokenizer file buffer");
        if (e) {
            free(buf);
            fclose(f);
            st_error_trace(__FILE__, __LINE__, __func__);
            return e;
        }
        buf = p;
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        ST_FAIL(ST_ERR_IO, "error reading tokenizer file %s", path);
    }
    buf[len] = 0;   /* spare capacity is always left: parsers may rely on a terminator */
    *data = buf;
    *n = len;
    return ST_OK;
}

/* ---- PCRE2 ---- */

st_err st_tok_regex_compile(pcre2_code **out, const char *pat, size_t len, const char *what)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof(msg));
        ST_FAIL(ST_ERR_FORMAT, "%s: regex does not compile at offset %zu: %s", what, (size_t)off,
                (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* the interpreter runs when JIT is unavailable */
    *out = re;
    return ST_OK;
}

/* Append s as a regex literal: ASCII punctuation gets a backslash, control
 * bytes become \x{..}; letters, digits and non-ASCII stay as they are. */
st_err st_tok_regex_escape(char **p, size_t *len, size_t *cap, const char *s, size_t n)
{
    void *q = *p;
    ST_TRY(st_tok_reserve(&q, cap, *len + 6 * n + 1, 1, "a regex pattern"));
    *p = q;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char *o = *p + *len;
        if (c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
            o[0] = (char)c, *len += 1;
        else if (c > 0x20 && c < 0x7F)
            o[0] = '\\', o[1] = (char)c, *len += 2;
        else
            *len += (size_t)snprintf(o, 7, "\\x{%02x}", c);
    }
    (*p)[*len] = '\0';
    return ST_OK;
}

int st_tok_regex_match(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t len,
                       size_t off, const char *what)
{
    /* The text was validated once up front: without NO_UTF_CHECK PCRE2 would
     * re-validate the whole subject on every call (quadratic on long text). */
    int rc = pcre2_match(re, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(re, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc == 0) return 1;   /* matched; only the capture vector was too small */
    if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                     "%s: regex matching failed at text offset %zu: %s", what, off, (const char *)msg);
        return -1;
    }
    return rc;
}
