/* tok_bpe.c: byte-level BPE (GPT-2 and Hugging Face BPE models).
 *
 * Text -> pre-tokenizer regex stages (each splits a piece into its matches and
 * the gaps between, Hugging Face's "Isolated" split) -> words -> bytes ->
 * merges. Vocabulary strings spell each byte as a printable stand-in character
 * (bytes_to_unicode); ids of single bytes start the merge, so encoding never
 * builds those strings except for ignore_merges lookups.
 *
 * Merging is by rank with a priority queue over adjacent pairs (ties: leftmost
 * first), O(n log n) per word, which gives the same result as GPT-2's "merge
 * the lowest-ranked pair everywhere, repeat" for merge lists whose merged
 * tokens only pair at higher ranks, i.e. every trained merge list.
 */
#include "io/tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

const char st_tok_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* GPT-2's byte -> code point map: printable Latin-1 bytes stand for
 * themselves, the other 68 bytes take code points 256.. in byte order. */
void st_tok_bytes_to_unicode(uint32_t cp[256])
{
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        cp[b] = printable ? (uint32_t)b : next++;
    }
}

/* UTF-8 of a code point below 0x800 (all stand-ins are below 324). */
static int utf8_small(uint32_t cp, char out[2])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

st_err st_tok_bpe_add_stage(st_tokenizer *t, const char *pat, size_t len, const char *file)
{
    if (t->n_stages >= ST_TOK_MAX_STAGES)
        ST_FAIL(ST_ERR_FORMAT, "%s: more than %d pre-tokenizer splits", file, ST_TOK_MAX_STAGES);
    char what[300];
    snprintf(what, sizeof(what), "%s: pre-tokenizer pattern %d", file, t->n_stages);
    int k = t->n_stages;
    ST_TRY(st_tok_regex_compile(&t->stage_re[k], pat, len, what));
    t->stage_pat[k] = malloc(len + 1);
    if (!t->stage_pat[k]) ST_FAIL(ST_ERR_MEM, "out of memory copying a %zu-byte pattern", len);
    memcpy(t->stage_pat[k], pat, len);
    t->stage_pat[k][len] = '\0';
    t->n_stages++;
    return ST_OK;
}

/* Merge number t->n_merges: "a b" -> the token a+b (all three in the vocabulary).
 * unit and where locate it in the file for messages ("line", 12). */
st_err st_tok_bpe_add_merge(st_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                            const char *file, const char *unit, size_t where)
{
    int32_t ia = st_tok_strmap_get(&t->vocab, a, alen);
    int32_t ib = st_tok_strmap_get(&t->vocab, b, blen);
    if (ia < 0 || ib < 0) {
        const char *miss = ia < 0 ? a : b;
        size_t mlen = ia < 0 ? alen : blen;
        ST_FAIL(ST_ERR_FORMAT, "%s: %s %zu uses \"%.*s\", which is not in the vocabulary", file, unit, where,
                (int)(mlen > 80 ? 80 : mlen), miss);
    }
    if (alen + blen > 4096)
        ST_FAIL(ST_ERR_FORMAT, "%s: %s %zu makes a token of %zu bytes (limit 4096)", file, unit, where, alen + blen);
    char cat[4096];
    memcpy(cat, a, alen);
    memcpy(cat + alen, b, blen);
    int32_t m = st_tok_strmap_get(&t->vocab, cat, alen + blen);
    if (m < 0)
        ST_FAIL(ST_ERR_FORMAT, "%s: %s %zu makes \"%.*s\", which is not in the vocabulary", file, unit, where,
                (int)(alen + blen > 80 ? 80 : alen + blen), cat);
    if (t->n_merges == INT32_MAX) ST_FAIL(ST_ERR_FORMAT, "%s: too many merges", file);
    ST_TRY(st_tok_bpe_put_merge(t, ia, ib, t->n_merges, m));
    return ST_OK;
}

st_err st_tok_bpe_put_merge(st_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    if (t->n_merges == INT32_MAX) ST_FAIL(ST_ERR_FORMAT, "too many merges");
    ST_TRY(st_tok_pairmap_put(&t->merges, a, b, rank, merged));
    if (t->n_merges % 4096 == 0) {
        int32_t *p = realloc(t->merge_pair, ((size_t)t->n_merges + 4096) * 2 * sizeof(int32_t));
        if (!p) ST_FAIL(ST_ERR_MEM, "out of memory storing merges");
        t->merge_pair = p;
    }
    t->merge_pair[2 * t->n_merges] = a;
    t->merge_pair[2 * t->n_merges + 1] = b;
    t->n_merges++;
    return ST_OK;
}

/* Decode bytes of a vocabulary string: every character maps back to a byte,
 * or (as Hugging Face does) the string stands for itself. */
static st_err set_decoded(st_tokenizer *t, int32_t id, const int16_t inv[324])
{
    const uint8_t *s = (const uint8_t *)t->text[id];
    uint32_t n = t->text_len[id];
    char *out = malloc(n + 1);   /* decoded is never longer than the text */
    if (!out) ST_FAIL(ST_ERR_MEM, "out of memory decoding token %d", id);
    uint32_t m = 0;
    for (uint32_t i = 0; i < n;) {
        uint32_t cp;
        if (s[i] < 0x80) cp = s[i], i += 1;
        else if ((s[i] & 0xE0) == 0xC0 && i + 1 < n && (s[i + 1] & 0xC0) == 0x80)
            cp = ((uint32_t)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F), i += 2;
        else cp = 0xFFFF;   /* anything longer is outside the stand-in range */
        if (cp >= 324 || inv[cp] < 0) {
            free(out);      /* not byte-level text: keep the token's own bytes */
            return ST_OK;
        }
        out[m++] = (char)inv[cp];
    }
    out[m] = '\0';
    t->dec[id] = out;
    t->dec_len[id] = m;
    return ST_OK;
}

void st_tok_bpe_byte_chars(st_tokenizer *t)
{
    uint32_t cp[256];
    st_tok_bytes_to_unicode(cp);
    for (int b = 0; b < 256; b++) t->byte_chr_len[b] = (uint8_t)utf8_small(cp[b], t->byte_chr[b]);
}

/* Sentencepiece-style: "<0xNN>" decodes to its byte (and gives byte_id),
 * every other piece to its text with the Metaspace replacement as ' '. */
static st_err char_bpe_finish(st_tokenizer *t)
{
    const char *r = t->meta_repl_len ? t->meta_repl : "\xe2\x96\x81";
    size_t rl = strlen(r);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text[id];
        uint32_t n = t->text_len[id];
        if (!s || t->is_added[id]) continue;
        char *out = malloc(n + 1);
        if (!out) ST_FAIL(ST_ERR_MEM, "out of memory decoding token %d", id);
        uint32_t m = 0;
        unsigned hi, lo;
        if (n == 6 && sscanf(s, "<0x%1X%1X>", &hi, &lo) == 2 && s[5] == '>') {
            out[m++] = (char)(hi * 16 + lo);
            if (t->byte_id[hi * 16 + lo] < 0) t->byte_id[hi * 16 + lo] = id;
        } else {
            for (uint32_t i = 0; i < n;)
                if (n - i >= rl && !memcmp(s + i, r, rl)) out[m++] = ' ', i += (uint32_t)rl;
                else out[m++] = s[i++];
        }
        out[m] = '\0';
        t->dec[id] = out;
        t->dec_len[id] = m;
    }
    return ST_OK;
}

/* After vocabulary, merges and added tokens: byte ids and decoded bytes. */
st_err st_tok_bpe_finish(st_tokenizer *t, const char *file)
{
    (void)file;
    if (t->char_bpe) {
        st_tok_bpe_byte_chars(t);
        ST_TRY(char_bpe_finish(t));
        return ST_OK;
    }
    uint32_t cp[256];
    int16_t inv[324];
    st_tok_bytes_to_unicode(cp);
    st_tok_bpe_byte_chars(t);
    for (int i = 0; i < 324; i++) inv[i] = -1;
    for (int b = 0; b < 256; b++) {
        inv[cp[b]] = (int16_t)b;
        t->byte_id[b] = st_tok_strmap_get(&t->vocab, t->byte_chr[b], t->byte_chr_len[b]);
    }
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->text[id] && !t->is_added[id]) ST_TRY(set_decoded(t, id, inv));
    return ST_OK;
}

/* ---- encoding ---- */

/* Queue the pair (a, next) if the merge list knows it. */
static st_err queue_pair(st_tok_enc *e, int32_t a, int32_t b)
{
    int32_t rank, merged;
    if (!st_tok_pairmap_get(&e->t->merges, e->sym[a], e->sym[b], &rank, &merged)) return ST_OK;
    st_tok_heap_ent ent = {((uint64_t)(uint32_t)rank << 32) | (uint32_t)a, b, e->sym[b], merged};
    ST_TRY(st_tok_heap_push(e, ent));
    return ST_OK;
}

/* A sentencepiece-style word's first symbols, as Hugging Face's BPE makes
 * them: each character's token; else, with byte_fallback, its bytes' <0xNN>
 * tokens when all exist; else unk (one for a run of them with fuse_unk). */
static st_err char_symbols(st_tok_enc *e, const char *s, size_t len, int32_t *count)
{
    const st_tokenizer *t = e->t;
    int32_t n = 0, prev_unk = 0;
    for (size_t i = 0; i < len;) {   /* valid UTF-8: the lead byte gives the length */
        uint8_t c = (uint8_t)s[i];
        size_t cl = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        int32_t id = st_tok_strmap_get(&t->vocab, s + i, cl);
        int bytes = id < 0 && t->byte_fallback;
        for (size_t k = 0; bytes && k < cl; k++) bytes = t->byte_id[(uint8_t)s[i + k]] >= 0;
        if (id >= 0 || bytes) {
            for (size_t k = 0; k < (id >= 0 ? 1 : cl); k++)
                e->sym[n++] = id >= 0 ? id : t->byte_id[(uint8_t)s[i + k]];
            prev_unk = 0;
        } else {
            if (t->unk_id < 0)
                ST_FAIL(ST_ERR_FORMAT, "the tokenizer has no token for the character \"%.*s\" and no unk token",
                        (int)cl, s + i);
            if (!(prev_unk && t->fuse_unk)) e->sym[n++] = t->unk_id;
            prev_unk = 1;
        }
        i += cl;
    }
    *count = n;
    return ST_OK;
}

/* One word (bytes s[0..len)) -> ids by merges. */
static st_err bpe_word(st_tok_enc *e, const char *s, size_t len)
{
    const st_tokenizer *t = e->t;
    if (len > INT32_MAX / 4)
        ST_FAIL(ST_ERR_ARG, "a single pre-token of %zu bytes is too long to encode", len);
    if (t->ignore_merges && t->char_bpe) {
        int32_t id = st_tok_strmap_get(&t->vocab, s, len);
        if (id >= 0) return st_tok_push_id(e, id);
    } else if (t->ignore_merges) {   /* Llama 3: a word already in the vocabulary is one token */
        void *p = e->buf;
        ST_TRY(st_tok_reserve(&p, &e->buf_cap, 2 * len, 1, "the word buffer"));
        e->buf = p;
        size_t m = 0;
        for (size_t i = 0; i < len; i++) {
            uint8_t b = (uint8_t)s[i];
            memcpy(e->buf + m, t->byte_chr[b], t->byte_chr_len[b]);
            m += t->byte_chr_len[b];
        }
        int32_t id = st_tok_strmap_get(&t->vocab, e->buf, m);
        if (id >= 0) return st_tok_push_id(e, id);
    }
    ST_TRY(st_tok_reserve_syms(e, len));
    int32_t n = 0;
    if (t->char_bpe) ST_TRY(char_symbols(e, s, len, &n));
    else
        for (; n < (int32_t)len; n++) {
            uint8_t b = (uint8_t)s[n];
            if (t->byte_id[b] < 0)
                ST_FAIL(ST_ERR_FORMAT, "the tokenizer has no token for byte 0x%02X (\"%.*s\"), so this text "
                        "cannot be encoded", b, (int)t->byte_chr_len[b], t->byte_chr[b]);
            e->sym[n] = t->byte_id[b];
        }
    for (int32_t i = 0; i < n; i++) {
        e->prev[i] = i - 1;
        e->next[i] = i + 1 < n ? i + 1 : -1;
    }
    e->heap_len = 0;
    for (int32_t i = 0; i + 1 < n; i++) ST_TRY(queue_pair(e, i, i + 1));
    while (e->heap_len) {
        st_tok_heap_ent m = st_tok_heap_pop(e);
        int32_t a = (int32_t)(uint32_t)m.prio, b = m.right;
        /* stale: a was absorbed, a's neighbour changed, or b changed since queued */
        if (e->sym[a] < 0 || e->next[a] != b || e->sym[b] != m.rid) continue;
        e->sym[a] = m.merged;
        e->sym[b] = -1;
        e->next[a] = e->next[b];
        if (e->next[a] >= 0) e->prev[e->next[a]] = a;
        if (e->prev[a] >= 0) ST_TRY(queue_pair(e, e->prev[a], a));
        if (e->next[a] >= 0) ST_TRY(queue_pair(e, a, e->next[a]));
    }
    for (int32_t i = 0; i >= 0; i = e->next[i]) ST_TRY(st_tok_push_id(e, e->sym[i]));
    return ST_OK;
}

static st_err run_stage(st_tok_enc *e, int k, const char *s, size_t len);

/* Stages after a ByteLevel that is not the last step (Falcon's Digits and
 * Split) see its stand-in characters, as in Hugging Face. */
static int maps_bytes(const st_tokenizer *t) { return t->byte_level_at >= 0 && t->byte_level_at < t->n_stages; }

/* Bytes -> stand-in characters (to_chars) or back, into a malloc'd *out. */
static st_err map_bytes(const st_tokenizer *t, const char *s, size_t len, int to_chars, char **out, size_t *olen)
{
    char *o = malloc(2 * len + 1);
    if (!o) ST_FAIL(ST_ERR_MEM, "out of memory mapping %zu bytes", len);
    size_t m = 0;
    for (size_t i = 0; i < len;) {
        if (to_chars) {
            uint8_t b = (uint8_t)s[i++];
            memcpy(o + m, t->byte_chr[b], t->byte_chr_len[b]);
            m += t->byte_chr_len[b];
            continue;
        }
        int b = 0;   /* the stand-in starting at s + i (stand-ins are 1 or 2 bytes, distinct) */
        while (b < 256 && (i + t->byte_chr_len[b] > len || memcmp(s + i, t->byte_chr[b], t->byte_chr_len[b]))) b++;
        if (b == 256) {
            free(o);
            ST_FAIL(ST_ERR_INTERNAL, "byte-level text holds a character that stands for no byte");
        }
        o[m++] = (char)b;
        i += t->byte_chr_len[b];
    }
    *out = o, *olen = m;
    return ST_OK;
}

/* The end of the stages: the word to BPE (back to bytes if it was mapped). */
static st_err end_stages(st_tok_enc *e, const char *s, size_t len)
{
    if (!maps_bytes(e->t)) return bpe_word(e, s, len);
    char *raw = NULL;
    size_t n = 0;
    ST_TRY(map_bytes(e->t, s, len, 0, &raw, &n));
    st_err err = bpe_word(e, raw, n);
    free(raw);
    if (err) st_error_trace(__FILE__, __LINE__, __func__);
    return err;
}

/* Split s by stage k's regex into matches and the gaps between; each piece
 * goes on to stage k+1 (after the last stage: BPE). Hugging Face's Isolated
 * behaviour, or MergedWithPrevious: a match joins the gap before it. */
static st_err split_stage(st_tok_enc *e, int k, const char *s, size_t len)
{
    const st_tokenizer *t = e->t;
    if (k == t->n_stages) return end_stages(e, s, len);
    size_t off = 0, gap = 0;
    while (off < len) {
        int rc = st_tok_regex_match(t->stage_re[k], e->md, s, len, off, t->stage_pat[k]);
        if (rc < 0) {
            st_error_trace(__FILE__, __LINE__, __func__);
            return ST_ERR_FORMAT;
        }
        if (rc == 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];   /* copy: the next stage reuses the match data */
        if (me <= ms) {                  /* empty match: step over one character */
            off = ms + 1;
            while (off < len && ((uint8_t)s[off] & 0xC0) == 0x80) off++;
            continue;
        }
        if (t->stage_merge_prev[k] && ms > gap) {
            ST_TRY(run_stage(e, k + 1, s + gap, me - gap));
        } else {
            if (ms > gap) ST_TRY(run_stage(e, k + 1, s + gap, ms - gap));
            ST_TRY(run_stage(e, k + 1, s + ms, me - ms));
        }
        gap = off = me;
    }
    if (gap < len) ST_TRY(run_stage(e, k + 1, s + gap, len - gap));
    return ST_OK;
}

/* A piece entering stage k: ByteLevel's add_prefix_space prepends ' ', and
 * where ByteLevel is not last its bytes become stand-in characters. */
static st_err run_stage(st_tok_enc *e, int k, const char *s, size_t len)
{
    const st_tokenizer *t = e->t;
    if (len == 0) return ST_OK;
    int prefix = t->stage_prefix_space[k] && s[0] != ' ', map = maps_bytes(t) && k == t->byte_level_at;
    if (!prefix && !map) return split_stage(e, k, s, len);
    char *tmp = malloc(len + 1), *mapped = NULL;
    if (!tmp) ST_FAIL(ST_ERR_MEM, "out of memory prefixing a space to %zu bytes", len);
    tmp[0] = ' ';
    memcpy(tmp + prefix, s, len);
    size_t n = len + (size_t)prefix;
    st_err err = map ? map_bytes(t, tmp, n, 1, &mapped, &n) : ST_OK;
    if (!err) err = split_stage(e, k, mapped ? mapped : tmp, n);
    free(tmp);
    free(mapped);
    if (err) st_error_trace(__FILE__, __LINE__, __func__);
    return err;
}

/* Metaspace: every ' ' becomes the replacement, which also starts the
 * piece by the prepend scheme (unless it starts with it already). */
static st_err metaspace(const st_tokenizer *t, const char *s, size_t len, int word_start, int fresh, char **out,
                        size_t *olen)
{
    size_t r = t->meta_repl_len, spaces = 0;
    for (size_t i = 0; i < len; i++) spaces += s[i] == ' ';
    int pre = (t->meta_prepend == 2 && fresh) || (t->meta_prepend == 1 && word_start);
    if (pre && (s[0] == ' ' || (len >= r && !memcmp(s, t->meta_repl, r)))) pre = 0;
    char *o = malloc(len + (spaces + 1) * r + 1);
    if (!o) ST_FAIL(ST_ERR_MEM, "out of memory for %zu bytes", len);
    size_t m = 0;
    if (pre) memcpy(o, t->meta_repl, r), m = r;
    for (size_t i = 0; i < len; i++)
        if (s[i] == ' ') memcpy(o + m, t->meta_repl, r), m += r;
        else o[m++] = s[i];
    *out = o, *olen = m;
    return ST_OK;
}

st_err st_tok_bpe_encode(st_tok_enc *e, const char *s, size_t len, int word_start, int fresh)
{
    if (!e->t->meta_repl_len || len == 0) {
        ST_TRY(run_stage(e, 0, s, len));
        return ST_OK;
    }
    char *m = NULL;
    size_t n = 0;
    ST_TRY(metaspace(e->t, s, len, word_start, fresh, &m, &n));
    st_err err = run_stage(e, 0, m, n);
    free(m);
    if (err) st_error_trace(__FILE__, __LINE__, __func__);
    return err;
}
