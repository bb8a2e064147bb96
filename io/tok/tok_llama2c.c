/* tok_llama2c.c: llama2.c's tokenizer.bin (a sentencepiece vocabulary
 * exported with scores) and run.c's encoding:
 *   file: int32 max_token_length, then per token until the end of the file:
 *         float32 score, int32 len, len bytes (little-endian).
 *   ids 0, 1, 2 are <unk>, <s> (bos), </s> (eos); <0xNN> pieces are bytes.
 *   encode: " " dummy prefix, one token per UTF-8 character (or its bytes as
 *   <0xNN> tokens when absent), then repeatedly merge the adjacent pair whose
 *   concatenation is the highest-scoring vocabulary entry (ties: leftmost).
 * run.c rescans all pairs per merge (quadratic); a priority queue gives the
 * same merges in O(n log n).
 */
#include "io/tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

/* A byte's decode output: decode of <0xNN> points here. */
static const char all_bytes[256] = {
#define B4(n) (char)(n), (char)(n + 1), (char)(n + 2), (char)(n + 3)
#define B16(n) B4(n), B4(n + 4), B4(n + 8), B4(n + 12)
    B16(0), B16(16), B16(32), B16(48), B16(64), B16(80), B16(96), B16(112),
    B16(128), B16(144), B16(160), B16(176), B16(192), B16(208), B16(224), B16(240),
#undef B16
#undef B4
};

static int32_t get_i32(const uint8_t *p)
{
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "<0xNN>" -> NN, else -1. */
static int byte_piece(const char *s, uint32_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* Walk the records; with t->text allocated, also store them. */
static st_err walk(st_tokenizer *t, const uint8_t *d, size_t n, const char *name, int32_t *count)
{
    size_t pos = 4;
    int32_t i = 0;
    while (pos < n) {
        if (n - pos < 8)
            ST_FAIL(ST_ERR_FORMAT, "%s: token %d at byte %zu is truncated (%zu bytes left, need 8 for score and "
                    "length)", name, i, pos, n - pos);
        int32_t len = get_i32(d + pos + 4);
        if (len < 0) ST_FAIL(ST_ERR_FORMAT, "%s: token %d at byte %zu has negative length %d", name, i, pos, len);
        if ((size_t)len > n - pos - 8)
            ST_FAIL(ST_ERR_FORMAT, "%s: token %d at byte %zu has length %d, past the end of the file (%zu bytes "
                    "left)", name, i, pos, len, n - pos - 8);
        if (i == ST_TOK_MAX_VOCAB) ST_FAIL(ST_ERR_FORMAT, "%s: more than %d tokens", name, ST_TOK_MAX_VOCAB);
        if (t->text) {
            memcpy(&t->score[i], d + pos, 4);
            ST_TRY(st_tok_set_text(t, i, (const char *)d + pos + 8, (size_t)len, name));
            ST_TRY(st_tok_strmap_put(&t->vocab, t->text[i], (uint32_t)len, i, 0));
            if ((uint32_t)len > t->max_text_len) t->max_text_len = (uint32_t)len;
        }
        pos += 8 + (size_t)len;
        i++;
    }
    *count = i;
    return ST_OK;
}

st_err st_tok_llama2c_build(st_tokenizer *t, const char *name)
{
    const uint8_t *d = t->file[0];
    size_t n = t->file_len[0];
    t->is_spm = st_tok_spm_is_model(d, n);
    t->spm_dummy_prefix = 1;   /* run.c's rule; a .model says its own */
    if (!t->is_spm && n < 4) ST_FAIL(ST_ERR_FORMAT, "%s is %zu bytes, shorter than its 4-byte header", name, n);
    int32_t max_len = t->is_spm ? 1 : get_i32(d);
    if (max_len <= 0 || max_len > (1 << 20))
        ST_FAIL(ST_ERR_FORMAT, "%s: max_token_length %d is outside 1..%d; not a llama2.c tokenizer.bin (nor a "
                "sentencepiece .model)", name, max_len, 1 << 20);
    int32_t count;
    ST_TRY(t->is_spm ? st_tok_spm_walk(t, d, n, name, &count) : walk(t, d, n, name, &count));
    if (count < 3)
        ST_FAIL(ST_ERR_FORMAT, "%s holds %d tokens; at least <unk>, <s>, </s> (ids 0..2) are needed", name, count);
    ST_TRY(st_tok_alloc_vocab(t, count));
    ST_ALLOC(t->score, count, "token scores");
    ST_TRY(t->is_spm ? st_tok_spm_walk(t, d, n, name, &count) : walk(t, d, n, name, &count));

    for (int32_t i = 0; i < count; i++) {
        int b = byte_piece(t->text[i], t->text_len[i]);
        if (b >= 0) {
            t->dec[i] = (char *)&all_bytes[b];
            t->dec_len[i] = 1;
            if (t->byte_id[b] < 0) t->byte_id[b] = i;
        }
    }
    static const char *const names[3] = {"<unk>", "<s>", "</s>"};
    st_tok_added sp[3];
    for (int i = 0; i < 3; i++) sp[i] = (st_tok_added){.content = names[i], .len = strlen(names[i]), .id = i, .special = 1};
    ST_TRY(st_tok_build_added_re(t, sp, 3, name));
    for (int i = 1; i < 3; i++) {   /* run.c's export writes "\n<s>\n"; decode shows the plain name */
        t->dec[i] = (char *)names[i];
        t->dec_len[i] = (uint32_t)strlen(names[i]);
    }
    t->bos = 1;
    t->eos = 2;
    t->add_bos = 1;   /* sentencepiece's (and run.c's) rule: bos starts every sequence */
    t->strip_lead_space = 1;
    t->space_id = st_tok_strmap_get(&t->vocab, " ", 1);
    return ST_OK;
}

/* ---- encoding ---- */

/* Scores as heap keys: a higher score must pop first. */
static uint32_t score_key(float s)
{
    if (s == 0.0f) s = 0.0f;   /* -0 ties with +0, as run.c's > comparison does */
    uint32_t u;
    memcpy(&u, &s, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);   /* ascending with the float */
    return ~u;
}

static st_err queue_pair(st_tok_enc *e, int32_t a, int32_t b)
{
    const st_tokenizer *t = e->t;
    int32_t x = e->sym[a], y = e->sym[b];
    size_t lx = t->text_len[x], ly = t->text_len[y];
    void *p = e->buf;
    ST_TRY(st_tok_reserve(&p, &e->buf_cap, lx + ly, 1, "the merge buffer"));
    e->buf = p;
    memcpy(e->buf, t->text[x], lx);
    memcpy(e->buf + lx, t->text[y], ly);
    int32_t id = st_tok_strmap_get(&t->vocab, e->buf, lx + ly);
    if (id < 0 || !(t->score[id] > -1e10f)) return ST_OK;   /* run.c's floor for a usable merge */
    st_tok_heap_ent ent = {((uint64_t)score_key(t->score[id]) << 32) | (uint32_t)a, b, y, id};
    ST_TRY(st_tok_heap_push(e, ent));
    return ST_OK;
}

static st_err add_symbol(st_tok_enc *e, size_t *n, int32_t id)
{
    ST_TRY(st_tok_reserve_syms(e, *n + 1));
    e->sym[*n] = id;
    (*n)++;
    return ST_OK;
}

/* A character's token, or its bytes' fallback tokens. */
static st_err add_char(st_tok_enc *e, size_t *n, const char *c, size_t clen)
{
    const st_tokenizer *t = e->t;
    int32_t id = st_tok_strmap_get(&t->vocab, c, clen);
    if (id >= 0) return add_symbol(e, n, id);
    for (size_t i = 0; i < clen; i++) {
        uint8_t b = (uint8_t)c[i];
        if (t->byte_id[b] < 0)
            ST_FAIL(ST_ERR_FORMAT, "the llama2c tokenizer has neither the character \"%.*s\" nor the byte "
                    "fallback token <0x%02X>", (int)clen, c, b);
        ST_TRY(add_symbol(e, n, t->byte_id[b]));
    }
    return ST_OK;
}

/* sentencepiece's remove_extra_whitespaces: ' ' only; a run counts once
 * (its later spaces go); outside [a, b), the text without its leading and
 * trailing spaces, every space goes. */
static int extra_space(const st_tokenizer *t, const char *s, size_t i, size_t a, size_t b)
{
    if (!t->spm_strip_spaces || s[i] != ' ') return 0;
    return i < a || i >= b || (i > 0 && s[i - 1] == ' ');
}

st_err st_tok_llama2c_encode(st_tok_enc *e, const char *s, size_t len, int at_start)
{
    const st_tokenizer *t = e->t;
    if (len > INT32_MAX / 4) ST_FAIL(ST_ERR_ARG, "a text segment of %zu bytes is too long to encode", len);
    size_t n = 0, kept = 0, a = 0, b = len;
    if (at_start && t->spm_strip_spaces) {   /* the ends only where the text starts: a continuation keeps them */
        while (a < b && s[a] == ' ') a++;
        while (b > a && s[b - 1] == ' ') b--;
    }
    for (size_t i = 0; i < len; i++) kept += !extra_space(t, s, i, a, b);
    if (at_start && kept > 0 && t->spm_dummy_prefix) ST_TRY(add_char(e, &n, " ", 1));   /* the dummy prefix */
    for (size_t i = 0; i < len;) {   /* text is valid UTF-8: the lead byte gives the length */
        uint8_t c = (uint8_t)s[i];
        size_t clen = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (!extra_space(t, s, i, a, b)) ST_TRY(add_char(e, &n, s + i, clen));
        i += clen;
    }
    int32_t m = (int32_t)n;
    for (int32_t i = 0; i < m; i++) {
        e->prev[i] = i - 1;
        e->next[i] = i + 1 < m ? i + 1 : -1;
    }
    e->heap_len = 0;
    for (int32_t i = 0; i + 1 < m; i++) ST_TRY(queue_pair(e, i, i + 1));
    while (e->heap_len) {
        st_tok_heap_ent h = st_tok_heap_pop(e);
        int32_t a = (int32_t)(uint32_t)h.prio, b = h.right;
        if (e->sym[a] < 0 || e->next[a] != b || e->sym[b] != h.rid) continue;   /* stale */
        e->sym[a] = h.merged;
        e->sym[b] = -1;
        e->next[a] = e->next[b];
        if (e->next[a] >= 0) e->prev[e->next[a]] = a;
        if (e->prev[a] >= 0) ST_TRY(queue_pair(e, e->prev[a], a));
        if (e->next[a] >= 0) ST_TRY(queue_pair(e, a, e->next[a]));
    }
    for (int32_t i = 0; m > 0 && i >= 0; i = e->next[i]) ST_TRY(st_tok_push_id(e, e->sym[i]));
    return ST_OK;
}
